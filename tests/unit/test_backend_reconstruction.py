"""GDM and CFG reconstruction through the backends, on 2 tiny images per stand-in.

Each method run through a prepared backend must equal the same run on the model built directly
by the converter from the original file; the reconstruction job (``reconstruct_shard``) must
resize inputs to the model's sample size and back (as the released 224 -> 256 -> 224) and write
finite per-image scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from standins import write_adm, write_diffnb, write_ldm

from diffguard import cfg, gdm, io
from diffguard.backends import load_backend, resize_images
from diffguard.classifiers import SmallCNN
from diffguard.convert.adm import load_adm_unet, use_released_attention
from diffguard.convert.diffnb import load_diffnb_unet
from diffguard.convert.ldm import ldm_decode, ldm_encode, ldm_eps, load_ldm
from diffguard.preparation import prepare_classifier_stage, prepare_diffusion_model

GDM_SETTINGS = gdm.GdmSettings(
    respacing="ddim10",
    early_stop_steps=4,
    early_stop_metrics=("psnr",),
    early_stop_thresholds=(54.0,),
    forback_skip_diff=3,
    # Large: a random 8-wide classifier has small gradients, and guidance must show.
    classifier_scale=100.0,
    cutouts_num=2,
    cutouts_size=24,
    cutouts_seed=0,
    uncond_aux=True,
)
CFG_SETTINGS = cfg.CfgSettings(ddim_steps=4, guidance_scale=5.0, use_cam=True, uncond_aux=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path]]:
    root = tmp_path_factory.mktemp("recon")
    out = {}
    for source, writer in (("adm", write_adm), ("diffnb", write_diffnb), ("ldm", write_ldm)):
        standin = writer(root / f"{source}_ckpt")
        prepare_diffusion_model(source, standin["paths"], standin["options"], root / source)
        out[source] = (standin, root / source)
    return out


def _classifier(num_classes: int) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=num_classes, in_channels=3, width=8).eval()


def _images(size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Smooth images (upsampled noise): closer to photos than white noise.
    small = torch.rand(2, 3, 8, 8, generator=gen)
    return torch.nn.functional.interpolate(small, size=size, mode="bilinear") * 2 - 1


def _check(recon: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert recon.shape == shape
    assert torch.isfinite(recon).all()
    assert recon.abs().max() <= 1.0 + 1e-6 or recon.abs().max() < 50


def test_gdm_with_adm_backend_equals_direct_converter(
    models: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    standin, model_dir = models["adm"]
    backend = load_backend(model_dir, "cpu")
    config = {k: v for k, v in standin["options"].items() if k != "use_released_attention"}
    direct = use_released_attention(load_adm_unet(standin["path"], config))
    classifier = _classifier(10)
    x = _images(32)
    labels = torch.tensor([3, 7])

    def eps_direct(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return direct(v, t).sample[:, :3]

    with torch.no_grad():
        got = gdm.reconstruct(backend.eps, classifier, x, labels, GDM_SETTINGS)
        want = gdm.reconstruct(eps_direct, classifier, x, labels, GDM_SETTINGS)
    _check(got.recon, (2, 3, 32, 32))
    assert got.recon_uncond is not None and want.recon_uncond is not None
    assert torch.equal(got.rev_t, want.rev_t)
    torch.testing.assert_close(got.x_t, want.x_t, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.recon, want.recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.recon_uncond, want.recon_uncond, atol=1e-5, rtol=0)
    # Guidance acts: the guided and the unguided twin differ.
    assert (got.recon - got.recon_uncond).abs().mean() > 1e-4


def test_cfg_with_diffnb_backend_equals_direct_converter(
    models: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    from diffguard.preparation import _read_yaml, diffnb_config_from_yaml

    standin, model_dir = models["diffnb"]
    backend = load_backend(model_dir, "cpu")
    direct = load_diffnb_unet(
        standin["path"], diffnb_config_from_yaml(_read_yaml(standin["paths"]["config"]))
    )
    x = _images(32, seed=1)
    labels = torch.tensor([2, 9])
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1

    def eps_direct(v: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return direct(v, t, class_labels=y).sample

    got = cfg.reconstruct(backend.eps, x, labels, backend.null_label, CFG_SETTINGS, mask)
    want = cfg.reconstruct(eps_direct, x, labels, 10, CFG_SETTINGS, mask)
    _check(got.recon, (2, 3, 32, 32))
    torch.testing.assert_close(got.recon, want.recon, atol=1e-5, rtol=0)
    assert got.recon_uncond is not None and want.recon_uncond is not None
    torch.testing.assert_close(got.recon_uncond, want.recon_uncond, atol=1e-5, rtol=0)
    # Outside the mask guided and unguided regeneration agree (eps_u there); inside they differ.
    diff = (got.recon - got.recon_uncond).abs()
    assert diff[:, :, 8:24, 8:24].mean() > 10 * diff[:, :, :4, :4].mean()


def test_cfg_with_ldm_backend_equals_direct_converter(
    models: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    from diffguard.preparation import _read_yaml, ldm_config_from_yaml

    standin, model_dir = models["ldm"]
    backend = load_backend(model_dir, "cpu")
    c = ldm_config_from_yaml(_read_yaml(standin["paths"]["config"]))
    parts = load_ldm(standin["path"], c["unet_config"], c["ddconfig"], c["n_embed"], c["embed_dim"])
    settings = cfg.CfgSettings(ddim_steps=3, use_cam=True, uncond_aux=False)
    x = _images(32, seed=2)
    labels = torch.tensor([1, 999])
    mask = torch.ones(2, 1, 32, 32)

    def enc(b: Any) -> Any:
        return lambda v: b(v, quantize=settings.encode_quantize)

    got = cfg.reconstruct(
        backend.eps,
        x,
        labels,
        backend.null_label,
        settings,
        mask,
        encode=enc(backend.encode),
        decode=lambda z: backend.decode(z, quantize=settings.decode_quantize),
    )
    want = cfg.reconstruct(
        lambda z, t, y: ldm_eps(parts, z, t, y),
        x,
        labels,
        1000,
        settings,
        mask,
        encode=lambda v: ldm_encode(parts, v, quantize=settings.encode_quantize),
        decode=lambda z: ldm_decode(parts, z, quantize=settings.decode_quantize),
    )
    _check(got.recon, (2, 3, 32, 32))
    assert got.z_t.shape == (2, 3, 8, 8)  # f=4 latent
    assert got.recon_uncond is None
    torch.testing.assert_close(got.z_t, want.z_t, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.recon, want.recon, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the job


def _mini_benchmark(root: Path, size: int) -> tuple[Path, Path, Path]:
    """Two PNGs (larger than the input, so resize + centre crop run), list, json, predictions."""
    gen = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i, label in enumerate((4, -1)):
        pixels = (gen.random((size + 12, size + 20, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size + 20, size + 12)).save(root / "img" / f"im{i}.png")
        lines.append(f"img/im{i}.png {label}")
    imglist = root / "list.txt"
    imglist.write_text("\n".join(lines) + "\n")
    bench = root / "benchmark.json"
    bench.write_text(json.dumps({"image_root": "."}))
    preds = root / "preds.npz"
    io.write_npz(preds, image_ids=np.array(["img/im0", "img/im1"]), preds=np.array([4, 7]))
    return imglist, bench, preds


JOBS = [
    ("adm", "gdm", 28, {"respacing": "ddim10", "early_stop_steps": 4, "cutouts_num": 2,
                        "cutouts_size": 24, "early_stop_metrics": ["psnr"],
                        "early_stop_thresholds": [54.0]}),
    ("ldm", "cfg", 24, {"ddim_steps": 3, "cam_cut": 0.3}),
    ("diffnb", "cfg", 32, {"ddim_steps": 3, "uncond_aux": True, "beta_schedule": "linear",
                           "beta_start": 0.0001, "beta_end": 0.02}),
]  # fmt: skip


def _run_job(
    model_dir: Path,
    tmp_path: Path,
    source: str,
    method: str,
    input_size: int,
    method_cfg: dict[str, Any],
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[dict[str, np.ndarray], dict[str, Any], tuple[Path, Path]]:
    from diffguard.reconstruction import reconstruct_shard

    num_classes = 1000 if source != "diffnb" else 10
    imglist, bench, preds = _mini_benchmark(tmp_path, input_size)
    spec = {"arch": "small_cnn", "num_classes": num_classes, "in_channels": 3, "width": 8}
    prepare_classifier_stage({**spec, "input_size": input_size}, None, tmp_path / "clf")
    experiment = {"name": f"{source}_test", "method": method, method: method_cfg}
    out = tmp_path / "shard.npz"
    reconstruct_shard(
        imglist=imglist,
        benchmark_json=bench,
        predictions=preds,
        classifier_weights=tmp_path / "clf" / "weights" / "model.safetensors",
        model_dir=model_dir,
        experiment=experiment,
        benchmark={"image_size": 16, "resize_size": input_size, "channels": 3,
                   "num_classes": num_classes},
        seed=0,
        shard=0,
        shard_size=2,
        batch_size=2,
        distances=["l2", "ssim", "logits"],
        save_images=2,
        device_name=device,
        out=out,
        dtype=dtype,
    )  # fmt: skip
    return io.read_npz(out), experiment, (imglist, tmp_path / "clf")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("source", "method", "input_size", "method_cfg"), JOBS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reconstruct_shard_on_cuda_in_half_precision(
    models: dict[str, tuple[dict[str, Any], Path]],
    tmp_path: Path,
    source: str,
    method: str,
    input_size: int,
    method_cfg: dict[str, Any],
    dtype: str,
) -> None:
    arrays, _, _ = _run_job(
        models[source][1], tmp_path, source, method, input_size, method_cfg, "cuda", dtype
    )
    assert arrays["recon"].shape == (2, 3, input_size, input_size)
    assert np.isfinite(arrays["recon"].astype(np.float32)).all()
    for key in ("score_l2", "score_ssim", "score_logits"):
        assert np.isfinite(arrays[key]).all()


@pytest.mark.parametrize(("source", "method", "input_size", "method_cfg"), JOBS)
def test_reconstruct_shard_resizes_to_the_model_and_back(
    models: dict[str, tuple[dict[str, Any], Path]],
    tmp_path: Path,
    source: str,
    method: str,
    input_size: int,
    method_cfg: dict[str, Any],
) -> None:
    _, model_dir = models[source]
    # dtype float16 on CPU runs float32 (logged), so the check below is exact.
    arrays, experiment, (imglist, clf_dir) = _run_job(
        model_dir, tmp_path, source, method, input_size, method_cfg, "cpu", "float16"
    )
    # The classifier spec's input_size wins over benchmark.image_size (16).
    assert arrays["x0"].shape == (2, 3, input_size, input_size)
    assert arrays["recon"].shape == (2, 3, input_size, input_size)
    assert arrays["guide_labels"].tolist() == [4, 7]
    for key in ("score_l2", "score_ssim", "score_logits"):
        assert arrays[key].shape == (2,) and np.isfinite(arrays[key]).all()
    assert float(arrays["nfe_per_image"]) > 0
    if source == "adm":
        # The job = resize 28 -> 32, GDM on the backend, resize back to 56.
        backend = load_backend(model_dir, "cpu")
        from diffguard.config import method_settings
        from diffguard.runtime import load_trained_classifier

        classifier = load_trained_classifier(
            clf_dir / "weights" / "model.safetensors", torch.device("cpu")
        )
        from diffguard.data import read_imglist
        from diffguard.runtime import load_records_images

        records = read_imglist(imglist)
        x = load_records_images(records, tmp_path, input_size, 3, input_size) * 2 - 1
        torch.testing.assert_close(
            torch.from_numpy(arrays["x0"].astype(np.float32)), x, atol=1e-3, rtol=0
        )
        settings = method_settings({**experiment, "name": "x"}, 0)
        res = gdm.reconstruct(
            backend.eps, classifier, resize_images(x, 32), torch.tensor([4, 7]), settings
        )
        want = resize_images(res.recon, input_size)
        got = torch.from_numpy(arrays["recon"].astype(np.float32))
        # The job stores reconstructions as float16.
        assert (got - want).abs().max() < 2e-3
        assert arrays["recon_uncond"].shape == (2, 3, input_size, input_size)


def test_reconstruct_shard_refuses_a_schedule_the_model_was_not_trained_with(
    models: dict[str, tuple[dict[str, Any], Path]], tmp_path: Path
) -> None:
    from diffguard.backends import BackendError
    from diffguard.reconstruction import reconstruct_shard

    imglist, bench, preds = _mini_benchmark(tmp_path, 32)
    spec = {"arch": "small_cnn", "num_classes": 10, "in_channels": 3, "width": 8}
    prepare_classifier_stage(spec, None, tmp_path / "clf")
    # CfgSettings defaults are the LDM's schedule; DiffNB was trained on DDPM's linear one.
    experiment = {"name": "nb", "method": "cfg", "cfg": {"ddim_steps": 2}}
    with pytest.raises(BackendError, match=r"experiments\.nb\.cfg\.beta_schedule"):
        reconstruct_shard(
            imglist=imglist,
            benchmark_json=bench,
            predictions=preds,
            classifier_weights=tmp_path / "clf" / "weights" / "model.safetensors",
            model_dir=models["diffnb"][1],
            experiment=experiment,
            benchmark={"image_size": 32, "channels": 3, "num_classes": 10},
            seed=0,
            shard=0,
            shard_size=2,
            batch_size=2,
            distances=["l2"],
            save_images=0,
            device_name="cpu",
            out=tmp_path / "out.npz",
        )
    assert not (tmp_path / "out.npz").exists()


def test_speed_benchmark_runs_converted_models_through_their_backends(
    models: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    """GDM on the ADM stand-in and CFG on the LDM one: port and ours agree, at 24 -> 32 px."""
    from diffguard.speed import run_speed_benchmark

    adm = load_backend(models["adm"][1], "cpu")
    ldm = load_backend(models["ldm"][1], "cpu")
    gdm_settings = gdm.GdmSettings(
        respacing="ddim5",
        early_stop_steps=2,
        early_stop_metrics=("psnr",),
        early_stop_thresholds=(54.0,),
        cutouts_num=-1,
    )
    cfg_settings = cfg.CfgSettings(ddim_steps=3)
    images = (_images(24, seed=3) + 1) / 2
    frame = run_speed_benchmark(
        images,
        _classifier(1000),
        {"GDM": (adm, gdm_settings), "CFG": (ldm, cfg_settings)},
        1000,
        batch_sizes=[2],
        device="cpu",
        dtypes="float32",
        distances=["l2"],
        warmup=False,
    )
    assert set(frame["method"]) == {"GDM", "CFG"}
    assert set(frame["implementation"]) == {"released_port", "ours"}
    assert (frame["images_per_s"] > 0).all()
    assert (frame["nfe_per_image"] > 0).all()
    ours = frame[frame["implementation"] == "ours"]
    # The released execution and ours compute the same reconstructions (to float rounding).
    assert (ours["max_abs_score_diff"] < 1e-2).all(), ours


def test_inversion_trace_job_writes_full_per_image_traces(
    models: dict[str, tuple[dict[str, Any], Path]], tmp_path: Path
) -> None:
    """Fig. 4's job: images loaded as the reconstruct jobs, resized to the model, inverted over
    every step (early stop ignored); one row per image and step, traceable by image id."""
    import pandas as pd

    from diffguard.config import method_settings
    from diffguard.data import read_imglist
    from diffguard.reconstruction import TRACE_COLUMNS, inversion_trace_job
    from diffguard.runtime import load_records_images

    imglist, bench, _ = _mini_benchmark(tmp_path, 28)
    prepare_classifier_stage(
        {"arch": "small_cnn", "num_classes": 1000, "in_channels": 3, "width": 8, "input_size": 28},
        None,
        tmp_path / "clf",
    )
    experiment = {"name": "trace", "method": "gdm", "inversion_trace_only": True, "gdm": JOBS[0][3]}
    benchmark = {"image_size": 16, "resize_size": 30, "channels": 3, "num_classes": 1000}
    out = tmp_path / "trace.csv"
    kwargs: dict[str, Any] = {
        "imglists": {"id": imglist, "again": imglist},
        "benchmark_json": bench,
        "classifier_spec": tmp_path / "clf" / "weights" / "spec.json",
        "model_dir": models["adm"][1],
        "benchmark": benchmark,
        "images": 5,  # more than the list holds: all of it
        "batch_size": 1,
        "device_name": "cpu",
        "outs": {"id": out, "again": tmp_path / "again.csv"},
    }
    frame = inversion_trace_job(experiment=experiment, **kwargs)["id"]
    written = pd.read_csv(out)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), written)
    assert list(written.columns) == list(TRACE_COLUMNS)
    assert len(written) == len(frame) == 2 * 10  # 2 images x all 10 steps of ddim10
    assert written["image_id"].unique().tolist() == ["img/im0", "img/im1"]
    assert written["label"].tolist() == [4] * 10 + [-1] * 10
    assert written["step"].tolist() == list(range(1, 11)) * 2
    assert written["timestep"].iloc[-1] == 1000 and (written["psnr_peak"] == 255.0).all()
    # the same as gdm.inversion_trace on the 28 px crops (pre-resized to 30) resized to 32
    x = load_records_images(read_imglist(imglist), tmp_path, 28, 3, 30) * 2 - 1
    backend = load_backend(models["adm"][1], "cpu")
    settings = method_settings(experiment)
    want = gdm.inversion_trace(backend.eps, resize_images(x, 32), settings)
    got = written["psnr_db"].to_numpy().reshape(2, 10)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="method gdm"):
        inversion_trace_job(experiment={"name": "c", "method": "cfg", "cfg": {}}, **kwargs)
    with pytest.raises(ValueError, match="pixel-space"):
        inversion_trace_job(experiment=experiment, **{**kwargs, "model_dir": models["ldm"][1]})
    with pytest.raises(ValueError, match="outputs"):
        inversion_trace_job(experiment=experiment, **{**kwargs, "outs": {"id": out}})
