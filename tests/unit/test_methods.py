"""The method registry: a new method is one module plus a registry entry.

A toy method, registered here and defined by this module's ``check_model``/``prepare``/
``run_batch``, runs through ``reconstruct_shard`` exactly as GDM and CFG do: its settings come
from the experiment through the registry, its batch entry point gets the job's images and
returns reconstructions whose score reference the job uses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from diffusers import UNet2DModel
from PIL import Image

from diffguard import io, method_api
from diffguard.classifiers import build_classifier
from diffguard.config import method_settings, resolve_experiment
from diffguard.gdm import CallCounter
from diffguard.method_api import MethodBatch, MethodJob, MethodOutput
from diffguard.methods import METHODS, Method, get_method, method_names, register
from diffguard.model_io import save_model
from diffguard.training import small_unet_kwargs

SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"
NUM_CLASSES = 4


# ------------------------------------------------------------------------ the toy method module
@dataclass(frozen=True)
class ToySettings:
    """One denoising step from the input: ``x - step * eps(x, t)``, clamped."""

    step: float = 0.5
    timestep: int = 300
    twin: bool = True  # also a half-contrast input, as its "unguided twin"
    # what check_schedule compares with the model's recorded schedule
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_steps: int = 1000


def check_model(model: Any, where: str) -> None:
    if model.latent:
        raise ValueError(f"{where}: method toy needs a pixel-space model")


def prepare(settings: ToySettings, torch_hub_dir: str | None, device: Any) -> dict[str, Any]:
    return {"prepared": True}


def run_batch(
    job: MethodJob, batch: MethodBatch, counter: CallCounter | None = None
) -> MethodOutput:
    assert job.extras == {"prepared": True}
    s = job.settings
    x = method_api.to_model_size(job, batch.x)
    t = torch.full((x.shape[0],), s.timestep, dtype=torch.long, device=x.device)
    with torch.no_grad():
        recon = (x - s.step * method_api.unconditional_eps(job.model)(x, t)).clamp(-1, 1).cpu()
    if counter is not None:
        counter.add_unet(x.shape[0])
    twin = (x / 2).cpu() if s.twin else None
    n = x.shape[0]
    rev_t = torch.zeros(n, dtype=torch.long)
    return method_api.finish(job, batch, recon, twin, rev_t, rev_t.clone(), torch.zeros((n, 0)))


@pytest.fixture
def toy() -> Iterator[Method]:
    method = register(
        Method("toy", ToySettings, "Toy", conditional=False, load=lambda: sys.modules[__name__])
    )
    try:
        yield method
    finally:
        METHODS.pop("toy")


# ------------------------------------------------------------------------------------- tests
def test_schema_method_enum_is_the_registry() -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    experiment = schema["properties"]["experiments"]["additionalProperties"]
    assert experiment["properties"]["method"]["enum"] == method_names() == ["gdm", "cfg"]


def test_registry_refuses_duplicates_and_names_the_known_methods(toy: Method) -> None:
    assert get_method("toy") is toy and "toy" in method_names()
    with pytest.raises(ValueError, match="already registered"):
        register(toy)
    with pytest.raises(ValueError, match=r"experiments\.x\.method: unknown method 'nope'"):
        get_method("nope", "experiments.x.method")


def test_config_resolves_a_registered_method(toy: Method) -> None:
    experiments = {"base": {"method": "toy", "toy": {"step": 0.25}}, "child": {"extends": "base"}}
    resolved = resolve_experiment(experiments, "child")
    assert method_settings(resolved, 0) == ToySettings(step=0.25)
    with pytest.raises(ValueError, match="unknown key"):
        resolve_experiment({"bad": {"method": "toy", "toy": {"stride": 1}}}, "bad")


def _tiny_run(root: Path) -> dict[str, Path]:
    """A trained-format 16 px UNet and classifier, three 12 px images, list and predictions."""
    torch.manual_seed(0)
    save_model(UNet2DModel(**small_unet_kwargs(1, 16, False, NUM_CLASSES)), root / "unet/weights")
    clf = build_classifier(
        {"arch": "small_cnn", "num_classes": NUM_CLASSES, "in_channels": 1, "width": 8}
    )
    clf.spec = {"arch": "small_cnn", "num_classes": NUM_CLASSES, "in_channels": 1, "width": 8}
    save_model(clf, root / "clf/weights")
    (root / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 12, 12), dtype=np.uint8)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(root / f"images/im{i}.png")
    (root / "list.txt").write_text("".join(f"im{i}.png {i}\n" for i in range(3)))
    (root / "benchmark.json").write_text(json.dumps({"image_root": "images"}))
    io.write_npz(
        root / "preds.npz", image_ids=np.array(["im0", "im1", "im2"]), preds=np.array([1, 2, 3])
    )
    return {"unet": root / "unet", "clf": root / "clf/weights/model.safetensors"}


@pytest.mark.parametrize("twin", [True, False])
def test_a_registered_method_runs_through_the_reconstruction_job(
    toy: Method, tmp_path: Path, twin: bool
) -> None:
    from diffguard.backends import load_backend
    from diffguard.distances import SimilarityScorer
    from diffguard.reconstruction import reconstruct_shard
    from diffguard.runtime import load_records_images, load_trained_classifier

    paths = _tiny_run(tmp_path)
    experiment = {"name": "toy_main", "method": "toy", "toy": {"step": 0.3, "twin": twin}}
    benchmark = {"image_size": 12, "channels": 1, "num_classes": NUM_CLASSES}
    files = {"imglist": "list.txt", "benchmark_json": "benchmark.json", "predictions": "preds.npz"}
    job: dict[str, Any] = {key: tmp_path / name for key, name in files.items()}
    job.update(classifier_weights=paths["clf"], model_dir=paths["unet"], device_name="cpu")
    job.update(shard=0, shard_size=3, batch_size=2, seed=0, save_images=3, distances=["l2"])
    reconstruct_shard(experiment=experiment, benchmark=benchmark, out=tmp_path / "shard.npz", **job)
    got = io.read_npz(tmp_path / "shard.npz")
    assert got["image_ids"].tolist() == ["im0", "im1", "im2"]
    assert got["guide_labels"].tolist() == [1, 2, 3]
    assert float(got["nfe_per_image"]) == 1.0  # one UNet row per image, counted by the job
    # the same step by hand, at the model's 16 px and back: the job handed the method its
    # images, settings and model, and scored against the reference the method chose
    from diffguard.backends import resize_images
    from diffguard.data import read_imglist

    x = load_records_images(read_imglist(tmp_path / "list.txt"), tmp_path / "images", 12, 1) * 2 - 1
    x16 = resize_images(x, 16)
    backend = load_backend(paths["unet"], "cpu")
    t = torch.full((3,), 300, dtype=torch.long)
    with torch.no_grad():
        want = resize_images((x16 - 0.3 * backend.eps(x16, t)).clamp(-1, 1), 12)
    np.testing.assert_allclose(got["recon"].astype(np.float32), want.numpy(), atol=2e-3)
    reference = resize_images(x16 / 2, 12) if twin else x
    scorer = SimilarityScorer(["l2"], load_trained_classifier(paths["clf"], torch.device("cpu")))
    want_l2 = scorer(reference, want)["l2"].numpy()
    np.testing.assert_allclose(got["score_l2"], want_l2, rtol=1e-5, atol=1e-6)
    assert got["recon_uncond"].shape == ((3, 1, 12, 12) if twin else (0,))
