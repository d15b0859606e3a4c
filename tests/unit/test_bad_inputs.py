"""Bad inputs fed to the workflow stages: each fails naming its culprit and writes no output.

The stage functions (``diffguard.pipeline`` / ``diffguard.reconstruction``) are called directly
on a small made-up benchmark: six 16 x 16 images, an image list, a freshly initialised
classifier and diffusion UNet. Every failing call is paired with a passing one on the same
inputs minus the fault, so a failure can only come from the injected fault.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffguard import io
from diffguard.classifiers import build_classifier
from diffguard.config import resolve_experiment
from diffguard.data import ImageListError, ImageLoadError, load_image
from diffguard.list_stages import select_images_stage
from diffguard.model_io import WEIGHTS_FILE, save_model
from diffguard.predictions import cache_predictions_stage
from diffguard.reconstruction import reconstruct_shard
from diffguard.training import small_unet_kwargs

SIZE = 16
NUM_CLASSES = 6
BENCHMARK = {"image_size": SIZE, "channels": 1, "num_classes": NUM_CLASSES}
N_IMAGES = 6


@dataclass(frozen=True)
class Bench:
    """A made-up benchmark on disk."""

    root: Path
    benchmark_json: Path
    imglist: Path
    images: list[Path]
    classifier: Path

    def out(self, name: str) -> Path:
        return self.root / "out" / name


def _gray_png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), mode="L").save(path)


def _write_list(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _files_under(folder: Path) -> list[Path]:
    """Every file (hidden temp files included) under ``folder``."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    root = tmp_path / "bench"
    images_dir = root / "images" / "ds"
    images_dir.mkdir(parents=True)
    images = []
    for i in range(N_IMAGES):
        _gray_png(images_dir / f"img_{i}.png", seed=i)
        images.append(images_dir / f"img_{i}.png")
    benchmark_json = root / "benchmark.json"
    benchmark_json.write_text(json.dumps({"image_root": "images"}))
    imglist = _write_list(root / "lists" / "ds.txt", [f"ds/img_{i}.png {i}" for i in range(6)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier(
            {"arch": "small_cnn", "num_classes": NUM_CLASSES, "in_channels": 1, "width": 4}
        )
    save_model(model, root / "classifier")
    return Bench(root, benchmark_json, imglist, images, root / "classifier" / WEIGHTS_FILE)


STRICT = {**BENCHMARK, "load_truncated_images": False}


def _cache(bench: Bench, imglist: Path, out: Path, benchmark: dict | None = None) -> None:
    cache_predictions_stage(
        imglist, bench.benchmark_json, bench.classifier, benchmark or BENCHMARK, out
    )


# ------------------------------------------------------------------------- truncated image
def test_truncated_image_fails_cache_predictions_naming_it(bench: Bench) -> None:
    good = bench.out("good.npz")
    _cache(bench, bench.imglist, good)
    assert io.read_npz(good)["logits"].shape == (N_IMAGES, NUM_CLASSES)

    _truncate(bench.images[3])
    bad = bench.out("bad.npz")
    with pytest.raises(ImageLoadError, match=r"img_3\.png") as info:
        _cache(bench, bench.imglist, bad, STRICT)
    assert str(bench.images[3]) in str(info.value)
    assert _files_under(bad.parent) == [good], "the failed job left an output or temp file"


@pytest.fixture
def recon_inputs(bench: Bench) -> dict[str, Any]:
    """Everything reconstruct_shard needs besides shard, shard_size and out."""
    predictions = bench.out("predictions.npz")
    _cache(bench, bench.imglist, predictions)
    model_dir = bench.root / "unet"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from diffusers import UNet2DModel

        unet = UNet2DModel(**small_unet_kwargs(1, SIZE, True, NUM_CLASSES))
    save_model(unet, model_dir / "weights")
    experiment = resolve_experiment(
        {
            "e": {
                "method": "cfg",
                "model": "m",
                "cfg": {"ddim_steps": 2, "use_cam": False, "beta_schedule": "linear"},
            }
        },
        "e",
    )
    return {
        "imglist": bench.imglist,
        "benchmark_json": bench.benchmark_json,
        "predictions": predictions,
        "classifier_weights": bench.classifier,
        "model_dir": model_dir,
        "experiment": experiment,
        "benchmark": BENCHMARK,
        "seed": 0,
        "batch_size": 2,
        "distances": ["l2", "ssim"],
        "save_images": 1,
        "device_name": "cpu",
    }


def test_truncated_image_fails_only_its_reconstruction_shard(
    bench: Bench, recon_inputs: dict[str, Any]
) -> None:
    _truncate(bench.images[1])  # shard 0 of shards of 3 holds images 0-2
    recon_dir = bench.root / "recon"
    ok = recon_dir / "shard-001.npz"
    reconstruct_shard(**recon_inputs, shard=1, shard_size=3, out=ok)
    shard = io.read_npz(ok)
    assert shard["image_ids"].tolist() == ["ds/img_3", "ds/img_4", "ds/img_5"]
    assert np.isfinite(shard["score_l2"]).all()

    strict = {**recon_inputs, "benchmark": STRICT}
    with pytest.raises(ImageLoadError, match=r"img_1\.png"):
        reconstruct_shard(**strict, shard=0, shard_size=3, out=recon_dir / "shard-000.npz")
    assert _files_under(recon_dir) == [ok], "the failed shard left an output or temp file"


def test_truncated_image_decoded_and_recorded_by_default(
    bench: Bench, recon_inputs: dict[str, Any]
) -> None:
    """Released loaders decode truncated files: both outputs list them, other shards none."""
    _truncate(bench.images[1])
    cache = bench.out("cut.npz")
    _cache(bench, bench.imglist, cache)
    assert io.read_npz(cache)["truncated_paths"].tolist() == ["ds/img_1.png"]
    recon_dir = bench.root / "recon"
    reconstruct_shard(**recon_inputs, shard=0, shard_size=3, out=recon_dir / "s0.npz")
    reconstruct_shard(**recon_inputs, shard=1, shard_size=3, out=recon_dir / "s1.npz")
    assert io.read_npz(recon_dir / "s0.npz")["truncated_paths"].tolist() == ["ds/img_1.png"]
    assert io.read_npz(recon_dir / "s1.npz")["truncated_paths"].tolist() == []


# ------------------------------------------------------------------------------ image modes
def _image_in_mode(mode: str, value: int) -> Image.Image:
    """A uniform image whose luminance is ``value`` (0-255), stored in ``mode``."""
    if mode == "1":
        return Image.new("1", (SIZE, SIZE), 1 if value else 0)
    if mode in ("L", "RGB"):
        return Image.new("L", (SIZE, SIZE), value).convert(mode)
    if mode == "RGBA":
        return Image.new("RGBA", (SIZE, SIZE), (value, value, value, 255))
    if mode == "LA":
        return Image.new("LA", (SIZE, SIZE), (value, 255))
    if mode == "P":
        image = Image.new("P", (SIZE, SIZE), 0)
        image.putpalette([value, value, value])
        return image
    if mode == "CMYK":
        return Image.new("CMYK", (SIZE, SIZE), (0, 0, 0, 255 - value))
    if mode == "I;16":
        return Image.fromarray(np.full((SIZE, SIZE), value * 257, dtype=np.uint16))
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_image_mode_is_converted_not_rejected(
    tmp_path: Path, mode: str, channels: int
) -> None:
    value = 255 if mode == "1" else 77
    path = tmp_path / ("img.tiff" if mode == "CMYK" else "img.png")
    _image_in_mode(mode, value).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode  # the file really is in that mode
    tensor = load_image(path, SIZE, channels)
    assert tensor.shape == (channels, SIZE, SIZE) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.full_like(tensor, value / 255), atol=1.5 / 255), (
        f"{mode} -> {tensor.unique()}"
    )


def test_mixed_modes_in_one_list_are_all_scored(bench: Bench) -> None:
    folder = bench.root / "images" / "modes"
    folder.mkdir()
    lines = []
    for i, mode in enumerate(MODES):
        name = f"m{i}.tiff" if mode == "CMYK" else f"m{i}.png"
        _image_in_mode(mode, 40 + 20 * i).save(folder / name)
        lines.append(f"modes/{name} -1")
    imglist = _write_list(bench.root / "lists" / "modes.txt", lines)
    out = bench.out("modes.npz")
    _cache(bench, imglist, out)
    logits = io.read_npz(out)["logits"]
    assert logits.shape == (len(MODES), NUM_CLASSES) and np.isfinite(logits).all()


# ------------------------------------------------------------------ empty list, bad labels
def test_empty_image_list_fails_every_stage_naming_it(bench: Bench) -> None:
    empty = _write_list(bench.root / "lists" / "empty.txt", ["# no images", ""])
    with pytest.raises(ImageListError, match=r"empty\.txt.*empty"):
        _cache(bench, empty, bench.out("empty.npz"))
    with pytest.raises(ImageListError, match=r"empty\.txt.*empty"):
        select_images_stage(empty, bench.out("empty.txt"), {"role": "id"}, 0, NUM_CLASSES)
    assert _files_under(bench.root / "out") == []


@pytest.mark.parametrize("role", ["id", "train"])
def test_label_out_of_range_fails_select_images_naming_line(bench: Bench, role: str) -> None:
    lines = [f"ds/img_{i}.png {i % NUM_CLASSES}" for i in range(N_IMAGES)]
    good = _write_list(bench.root / "lists" / "good.txt", lines)
    select_images_stage(good, bench.out("good.txt"), {"role": role}, 0, NUM_CLASSES)
    lines[4] = f"ds/img_4.png {NUM_CLASSES}"
    bad = _write_list(bench.root / "lists" / "bad.txt", lines)
    with pytest.raises(ImageListError) as info:
        select_images_stage(bad, bench.out("bad.txt"), {"role": role}, 0, NUM_CLASSES)
    message = str(info.value)
    assert "bad.txt" in message and "line 5" in message and "img_4.png" in message
    assert f"[0, {NUM_CLASSES})" in message
    assert _files_under(bench.root / "out") == [bench.out("good.txt")]


def test_ood_list_keeps_ood_label_but_rejects_invalid_label(bench: Bench) -> None:
    ood = _write_list(bench.root / "lists" / "ood.txt", [f"ds/img_{i}.png -1" for i in range(3)])
    select_images_stage(ood, bench.out("ood.txt"), {"role": "near"}, 0, NUM_CLASSES)
    bad = _write_list(bench.root / "lists" / "bad.txt", ["ds/img_0.png -1", "ds/img_1.png -7"])
    with pytest.raises(ImageListError, match=r"bad\.txt:2: label -7"):
        select_images_stage(bad, bench.out("bad.txt"), {"role": "near"}, 0, NUM_CLASSES)
    assert _files_under(bench.root / "out") == [bench.out("ood.txt")]


# --------------------------------------------------------------------------- config typos
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REPO_ROOT = Path(__file__).resolve().parents[2]


def _workflow_copy(dest: Path) -> Path:
    """Snakefile, rules, schemas, package and configs: enough to parse the workflow."""
    for rel in ("Snakefile", "workflow", "config", "envs"):
        src = REPO_ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


TYPOS: dict[str, tuple[tuple[str, ...], list[str], str]] = {
    # (path of the key to misspell in the YAML, extra snakemake arguments, misspelt key)
    "top_level_override": ((), ["--config", "shard_sise=7"], "shard_sise"),
    "nested_classifier": (("classifier", "train", "epochs"), [], "epocs"),
    "experiment_setting": (("experiments", "gdm_main", "gdm", "cutouts_num"), [], "cutouts_nun"),
}


@pytest.mark.parametrize("case", sorted(TYPOS))
def test_config_typo_stops_snakemake_naming_the_key(tmp_path: Path, case: str) -> None:
    path, extra, typo = TYPOS[case]
    work = _workflow_copy(tmp_path / "repo")
    config = yaml.safe_load((work / "config" / "tiny.yaml").read_text())
    if path:
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        parent[typo] = parent.pop(path[-1])
    (work / "config" / "typo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "1", *extra, "--configfile", "config/typo.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert typo in output, output[-3000:]
    assert not (work / "data").exists(), "a job ran despite the invalid config"


# ------------------------------------------------------------------------------- downloads
def test_download_checksum_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"published bytes" * 1000)
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    pinned = hashlib.sha256(b"what the paper's authors uploaded").hexdigest()
    dest = tmp_path / "weights" / "model.pt"
    with pytest.raises(io.ChecksumError) as info:
        io.download(source.as_uri(), dest, sha256=pinned)
    message = str(info.value)
    assert str(dest.name) in message and pinned in message and actual in message
    assert _files_under(dest.parent) == [], "a rejected download left a file"
    assert io.download(source.as_uri(), dest, sha256=actual) == actual
    assert dest.read_bytes() == source.read_bytes()


def test_download_discards_a_stale_partial_file(tmp_path: Path) -> None:
    """A ``.part`` left by an interrupted download of other bytes never ends up in the file."""
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 64)
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "dl" / "file.bin"
    dest.parent.mkdir()
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(b"\xff" * 100)
    assert io.download(source.as_uri(), dest, sha256=actual) == actual
    assert dest.read_bytes() == source.read_bytes()
    assert _files_under(dest.parent) == [dest]


def test_download_does_not_replace_a_good_file_with_bad_bytes(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"good")
    source = tmp_path / "tampered.bin"
    source.write_bytes(b"tampered")
    with pytest.raises(io.ChecksumError):
        io.download(source.as_uri(), dest, sha256=hashlib.sha256(b"good").hexdigest())
    assert dest.read_bytes() == b"good"
