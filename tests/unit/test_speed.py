"""The released-execution port against ours: equal results, NFE by formula, benchmark outputs.

Performance itself is not asserted here (timings on a shared CPU are noise); what is asserted is
that the fast path computes the same thing as the released execution and that the counts the
speed table reports follow from the algorithm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from diffguard import cfg, gdm, speed
from diffguard import released_port as rp
from diffguard.classifiers import build_classifier
from diffguard.distances import SimilarityScorer
from diffguard.model_io import save_model
from diffguard.speed_tables import speed_markdown
from diffguard.training import small_unet_kwargs

NUM_CLASSES = 6
N_IMAGES = 6


def tiny_unet(conditional: bool, dtype: torch.dtype = torch.float32) -> UNet2DModel:
    torch.manual_seed(0)
    kwargs = small_unet_kwargs(1, 16, conditional, NUM_CLASSES)
    model = UNet2DModel(**kwargs).eval()
    # diffusers warns on any .to(dtype=...), float32 included
    return model if dtype == torch.float32 else model.to(dtype)


def tiny_classifier(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(1)
    spec = {"arch": "small_cnn", "num_classes": NUM_CLASSES, "in_channels": 1, "width": 8}
    return build_classifier(spec).eval().to(dtype)


def tiny_images(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images in [-1, 1] of growing contrast, so that they lose PSNR at different rates."""
    g = torch.Generator().manual_seed(1)
    amplitude = torch.linspace(0.3, 1.0, N_IMAGES).view(-1, 1, 1, 1)
    return ((torch.rand(N_IMAGES, 1, 16, 16, generator=g) * 2 - 1) * amplitude).to(dtype)


def gdm_settings(threshold: float, cutouts: int, **extra: object) -> gdm.GdmSettings:
    values: dict = {
        "respacing": "ddim10",
        "early_stop_steps": 2,
        "early_stop_metrics": ("psnr",),
        "early_stop_thresholds": (threshold,),
        "forback_skip_diff": 3,
        # a random classifier's log-probabilities are flat: a large scale makes guidance move
        # the reconstruction by ~1e-2, so that a wrong guidance step cannot pass for rounding
        "classifier_scale": 300.0,
        "cutouts_num": cutouts,
        "cutouts_size": 12,
        "uncond_aux": True,
    }
    values.update(extra)
    return gdm.GdmSettings(**values)


def mixed_stop_threshold(eps: gdm.EpsModel, x: torch.Tensor) -> float:
    """A code-unit PSNR threshold that the images cross at different inversion steps."""
    _, _, trace = gdm.invert(eps, x, gdm_settings(0.0, 0), None)
    code_units = trace + 20 * math.log10(127.5)
    return float(code_units[:, 3].median())


class Recorder:
    """UNet wrapper that records (rows, grad enabled) of every call."""

    def __init__(self, unet: UNet2DModel) -> None:
        self.unet = unet
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.unet(x, t).sample


def run_pair(dtype: torch.dtype, cutouts: int, aes: bool = True) -> dict:
    unet, clf, x = tiny_unet(False, dtype), tiny_classifier(dtype), tiny_images(dtype)
    labels = torch.arange(N_IMAGES) % NUM_CLASSES
    threshold = mixed_stop_threshold(lambda a, t: unet(a, t).sample, x)
    settings = gdm_settings(threshold, cutouts)
    sims = {} if aes else None
    out: dict = {"settings": settings, "x": x, "clf": clf}
    for name, fn in (("ours", gdm.reconstruct), ("port", rp.gdm_reconstruct_released)):
        recorder, counter = Recorder(unet), gdm.CallCounter()
        out[name] = fn(recorder, clf, x, labels, settings, sims, counter)
        out[name + "_counter"], out[name + "_calls"] = counter, recorder.calls
    return out


@pytest.fixture(scope="module", params=[0, 2], ids=["no_crops", "crops"])
def float64_pair(request: pytest.FixtureRequest) -> dict:
    return run_pair(torch.float64, request.param)


@pytest.fixture(scope="module")
def float32_pair() -> dict:
    return run_pair(torch.float32, 2)


# Port-vs-ours score difference of a float32 run. tests/tools/measure_tolerances.py over
# ATEN_CPU_CAPABILITY=default|avx2|avx512 x 1|2 threads (2026-12-05): float32 pair 2.0e-6,
# repeats 9.1e-6, speed stage 4.0e-6 (CFG 0), channels_last 1.1e-5; issue 12 saw 2e-5 in the speed
# stage on another AVX-512 machine. Bound 1e-4 = 5x the worst. A wrong procedure (no guidance)
# moves the scores by more than 100x the bound (checked in test_gdm_port_matches_ours_in_float32).
SCORE_DIFF_TOL = 1e-4


def scores(result: gdm.GdmResult, clf: torch.nn.Module) -> dict[str, torch.Tensor]:
    scorer = SimilarityScorer(["ssim", "l2", "logits"], clf.float())
    assert result.recon_uncond is not None
    return scorer(result.recon_uncond.float(), result.recon.float())


# ------------------------------------------------------------------------------------ GDM maths
def test_gdm_port_equals_ours_in_float64(float64_pair: dict) -> None:
    ours, port = float64_pair["ours"], float64_pair["port"]
    assert len(ours.rev_t.unique()) >= 2, "the test needs images that stop at different steps"
    assert torch.equal(ours.rev_t, port.rev_t)
    assert torch.equal(ours.start_index, port.start_index)
    assert (ours.x_t - port.x_t).abs().max() <= 1e-9
    assert (ours.recon - port.recon).abs().max() <= 1e-9
    assert (ours.recon_uncond - port.recon_uncond).abs().max() <= 1e-9
    # guidance matters at this scale, so agreement is not the twins agreeing with themselves
    assert (ours.recon - ours.recon_uncond).abs().max() > 1e-2
    a, b = scores(ours, float64_pair["clf"]), scores(port, float64_pair["clf"])
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name  # float32 scorer on float64 images


def test_gdm_port_matches_ours_in_float32(float32_pair: dict) -> None:
    """Batch composition changes float32 rounding only; the trajectories amplify it ~100-fold.

    The port runs the UNet on 2 rows (and the guidance forward on 1), ours on up to 12: measured
    max |recon difference| 1.7e-5 here, 2e-7 on the trained embedded models, against 1e-2 or
    more for any algorithmic difference (the guided-unguided gap above). Scores are smooth in the
    images, so they move by less (1e-6 measured).
    """
    ours, port = float32_pair["ours"], float32_pair["port"]
    assert torch.equal(ours.rev_t, port.rev_t)
    assert (ours.x_t - port.x_t).abs().max() <= 1e-5
    assert (ours.recon - port.recon).abs().max() <= 5e-4
    assert (ours.recon_uncond - port.recon_uncond).abs().max() <= 5e-4
    a, b = scores(ours, float32_pair["clf"]), scores(port, float32_pair["clf"])
    for name in a:
        assert (a[name] - b[name]).abs().max() <= SCORE_DIFF_TOL, name
    # Without guidance the twins coincide; the scores then move far outside the bound.
    unguided = SimilarityScorer(["ssim", "l2", "logits"], float32_pair["clf"].float())
    same = unguided(ours.recon_uncond.float(), ours.recon_uncond.float())
    assert max((a[n] - same[n]).abs().max() for n in a) > 100 * SCORE_DIFF_TOL


# ------------------------------------------------------------------------------------- NFE count
def test_gdm_nfe_follow_the_formulas(float64_pair: dict) -> None:
    settings: gdm.GdmSettings = float64_pair["settings"]
    rev_t = float64_pair["ours"].rev_t
    steps = (float64_pair["ours"].start_index + 1).long()  # denoising steps of each image
    n = len(rev_t)
    crops = max(settings.cutouts_num, 1)
    # ours: inversion drops stopped rows; one evaluation per row and step for guided and twin
    ours = float64_pair["ours_counter"]
    assert ours.unet_rows == int((rev_t + 1).sum()) + 2 * int(steps.sum())
    # port: every row inverted until the last stops; per image and step the batch [y, -1]
    # (2 rows) plus the guidance forward on the guided row (cond_fn skips label -1)
    port = float64_pair["port_counter"]
    assert port.unet_rows == n * (int(rev_t.max()) + 1) + 3 * int(steps.sum())
    assert port.unet_calls == int(rev_t.max()) + 1 + 2 * int(steps.sum())
    for counter in (ours, port):
        assert counter.classifier_forward_rows == crops * int(steps.sum())
        assert counter.classifier_backward_rows == counter.classifier_forward_rows
    assert ours.unet_rows <= 0.8 * port.unet_rows  # the issue's >= 20% fewer evaluations


def test_port_builds_the_unet_graph_and_ours_never_does(float64_pair: dict) -> None:
    steps = int((float64_pair["ours"].start_index + 1).sum())
    port_grad = [rows for rows, grad in float64_pair["port_calls"] if grad]
    assert port_grad == [1] * steps  # one guided row per step, with autograd on
    assert not any(grad for _, grad in float64_pair["ours_calls"])


def test_port_without_early_stop_uses_denoise_batches_and_a_second_twin_pass() -> None:
    unet, clf, x = tiny_unet(False, torch.float64), tiny_classifier(torch.float64), tiny_images()
    x = x.double()
    labels = torch.arange(N_IMAGES) % NUM_CLASSES
    settings = gdm_settings(0.0, 0)
    results, counters = {}, {}
    for name, fn in (("ours", gdm.reconstruct), ("port", rp.gdm_reconstruct_released)):
        counters[name] = gdm.CallCounter()
        eps = lambda a, t: unet(a, t).sample  # noqa: E731
        results[name] = fn(eps, clf, x, labels, settings, None, counters[name])
    ours, port = results["ours"], results["port"]
    assert ours.rev_t.unique().tolist() == [7]  # no early stop: the last inversion step
    assert (ours.recon - port.recon).abs().max() <= 1e-9
    assert (ours.recon_uncond - port.recon_uncond).abs().max() <= 1e-9
    steps = 7 + 3  # start index rev_t + d - 1 = 9, so 10 denoising steps
    splits = math.ceil(N_IMAGES / 5)  # the released denoise_batch_size
    # per split and step: a guided call, the guidance forward, and (later) a twin call
    assert counters["port"].unet_calls == 8 + 3 * splits * steps
    assert counters["port"].unet_rows == N_IMAGES * 8 + 3 * N_IMAGES * steps
    assert counters["ours"].unet_rows == N_IMAGES * 8 + 2 * N_IMAGES * steps


# ------------------------------------------------------------------------------------------ CFG
def cam_like_mask(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A deterministic binary mask that depends on the image (stands in for Grad-CAM)."""
    del labels
    return (x.mean(dim=1, keepdim=True) > 0).float()


@pytest.mark.parametrize(
    ("uncond_aux", "inversion_steps"), [(False, None), (True, None), (False, 3), (True, 3)]
)
def test_cfg_port_matches_ours_and_costs_the_same(
    uncond_aux: bool, inversion_steps: int | None
) -> None:
    unet, x = tiny_unet(True), tiny_images()
    labels = torch.arange(N_IMAGES) % NUM_CLASSES
    settings = cfg.CfgSettings(
        ddim_steps=5,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_offset=0,
        guidance_scale=3.0,
        use_cam=True,
        uncond_aux=uncond_aux,
        inversion_steps=inversion_steps,  # partial depth (ours): the port cuts its loops too
    )

    def eps(a: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return unet(a, t, class_labels=y).sample

    c_ours, c_port = gdm.CallCounter(), gdm.CallCounter()
    ours = cfg.reconstruct(
        eps, x, labels, NUM_CLASSES, settings, cam_like_mask(x, labels), counter=c_ours
    )
    port = rp.cfg_reconstruct_released(
        eps, x, labels, NUM_CLASSES, settings, cam_like_mask, counter=c_port
    )
    assert torch.equal(ours.z_t, port.z_t)
    # without uncond_aux both run the same [uncond; cond] batches in the same order: bit equal;
    # with it ours adds the twins to that batch, the port runs them as a second pass, and the
    # batch composition changes float32 rounding (measured 4.5e-5 with 1 thread, 0 with 2),
    # against ~1e-1 for any algorithmic difference (the guided-unguided gap below)
    tol = 2e-4 if uncond_aux else 0.0
    assert (ours.recon - port.recon).abs().max() <= tol
    if uncond_aux:
        assert (ours.recon_uncond - port.recon_uncond).abs().max() <= tol
        assert (ours.recon - ours.recon_uncond).abs().max() > 100 * tol
    n, s = N_IMAGES, inversion_steps or settings.ddim_steps
    expected = n * s + 2 * n * s + (n * s if uncond_aux else 0)
    assert c_ours.unet_rows == c_port.unet_rows == expected
    assert c_port.unet_calls == s * (3 if uncond_aux else 2)
    assert c_ours.unet_calls == 2 * s


# ------------------------------------------------------------------------------ the benchmark
def test_peak_memory_sees_an_allocation() -> None:
    memory = speed.PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(16 * 2**20 // 4 * 4)  # 64 MiB, touched
    del block
    peak = memory.stop()
    if memory.method.startswith("peak RSS"):
        assert 56 <= peak <= 200
    else:  # ru_maxrss cannot be reset: only a lower bound
        assert peak >= 0


def test_resolve_dtypes() -> None:
    assert speed.resolve_dtypes("auto", torch.device("cpu")) == [torch.float32]
    assert speed.resolve_dtypes(["float32", "bfloat16"], torch.device("cpu")) == [
        torch.float32,
        torch.bfloat16,
    ]
    with pytest.raises(ValueError, match="unknown"):
        speed.resolve_dtypes(["fp8"], torch.device("cpu"))


def write_tiny_run(root: Path) -> dict[str, Path]:
    """Models, images, list and benchmark.json as the workflow lays them out."""
    classifier = tiny_classifier()
    classifier.spec = {  # type: ignore[assignment]
        "arch": "small_cnn",
        "num_classes": NUM_CLASSES,
        "in_channels": 1,
        "width": 8,
    }
    save_model(classifier, root / "models/classifier/weights")
    save_model(tiny_unet(False), root / "models/unet_uncond/weights")
    save_model(tiny_unet(True), root / "models/unet_cond/weights")
    images = ((tiny_images()[:3] + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    (root / "bench/images").mkdir(parents=True)
    lines = []
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(root / f"bench/images/im{i}.png")
        lines.append(f"im{i}.png {i}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "bench/benchmark.json").write_text(json.dumps({"image_root": "images"}))
    return {
        "classifier": root / "models/classifier/weights/model.safetensors",
        "gdm": root / "models/unet_uncond",
        "cfg": root / "models/unet_cond",
        "list": root / "list.txt",
        "benchmark": root / "bench/benchmark.json",
    }


def test_speed_stage_writes_the_table(tmp_path: Path) -> None:
    paths = write_tiny_run(tmp_path)
    experiments = [
        {
            "name": "gdm_main",
            "method": "gdm",
            "gdm": {
                "respacing": "ddim10",
                "early_stop_steps": 2,
                "early_stop_metrics": ["psnr"],
                "early_stop_thresholds": [56.0],
                "forback_skip_diff": 3,
                "cutouts_num": 2,
                "cutouts_size": 12,
                "uncond_aux": True,
            },
        },
        {
            "name": "cfg_main",
            "method": "cfg",
            "cfg": {"ddim_steps": 4, "timestep_offset": 0, "beta_schedule": "linear"},
        },
    ]
    out = {k: tmp_path / f"out/speed.{k}" for k in ("csv", "md", "tex")}
    frame = speed.speed_stage(
        classifier_weights=paths["classifier"],
        experiments=experiments,
        model_dirs=[paths["gdm"], paths["cfg"]],
        imglist=paths["list"],
        benchmark_json=paths["benchmark"],
        benchmark={"image_size": 16, "channels": 1, "num_classes": NUM_CLASSES},
        num_images=3,
        batch_sizes=[1, 3],
        device_name="cpu",
        dtypes="auto",
        distances=["ssim", "l2", "logits"],
        run="unit_test",
        out_csv=out["csv"],
        out_md=out["md"],
        out_tex=out["tex"],
    )
    assert list(frame.columns) == list(speed.SPEED_COLUMNS)
    assert len(frame) == 2 * 2 * 2  # methods x implementations x batch sizes
    written = pd.read_csv(out["csv"])
    assert written["method"].tolist() == frame["method"].tolist()
    assert set(frame["implementation"]) == {"released_port", "ours"}
    assert (frame["images"] == 3).all() and (frame["images_per_s"] > 0).all()
    assert (frame["dtype"] == "float32").all() and (frame["device"] == "cpu").all()
    assert (frame["peak_mem_mb"] >= 0).all()
    assert (frame["max_abs_score_diff"] <= SCORE_DIFF_TOL).all()
    g = frame[frame["method"] == "GDM"].set_index(["batch_size", "implementation"])
    for batch in (1, 3):
        port, ours = g.loc[(batch, "released_port")], g.loc[(batch, "ours")]
        assert ours["nfe_per_image"] <= 0.8 * port["nfe_per_image"]
        assert ours["classifier_fwd_per_image"] == port["classifier_fwd_per_image"] > 0
        assert ours["nfe_reduction_vs_port"] == pytest.approx(
            1 - ours["nfe_per_image"] / port["nfe_per_image"]
        )
    c = frame[frame["method"] == "CFG"]
    assert np.allclose(c["nfe_per_image"], 3 * 4)  # inversion S + [uncond; cond] 2S, S = 4
    # Grad-CAM (use_cam, the default): one classifier forward and backward per image, both
    assert (c["classifier_fwd_per_image"] == 1).all() and (c["classifier_bwd_per_image"] == 1).all()
    tex = out["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "released (port)" in tex
    assert "unit\\_test" in tex  # the run name is escaped
    md = out["md"].read_text()
    assert md.count("\n| GDM |") == 4 and "images/s" in md


def test_repeats_keep_counts_and_take_the_fastest_pass(tmp_path: Path) -> None:
    """Best-of-R timing: counts and scores of a repeated benchmark equal a single pass's."""
    unet, clf = tiny_unet(False), tiny_classifier()
    images = (tiny_images()[:4] + 1) / 2
    # scale 3: the strong test scale (300) amplifies float32 batch rounding past SCORE_DIFF_TOL
    settings = gdm_settings(56.0, 2, classifier_scale=3.0)
    kwargs = {"batch_sizes": [2], "distances": ["l2", "logits"], "warmup": False}
    once = speed.run_speed_benchmark(images, clf, {"GDM": (unet, settings)}, NUM_CLASSES, **kwargs)
    twice = speed.run_speed_benchmark(
        images, clf, {"GDM": (unet, settings)}, NUM_CLASSES, repeats=2, **kwargs
    )
    assert (twice["repeats"] == 2).all() and (once["repeats"] == 1).all()
    for col in ("nfe_per_image", "classifier_fwd_per_image", "classifier_bwd_per_image"):
        assert twice[col].tolist() == once[col].tolist()
    assert (twice["max_abs_score_diff"] <= SCORE_DIFF_TOL).all()
    assert (twice["cpu_seconds"] > 0).all() and (twice["seconds"] > 0).all()
    port, ours = twice.set_index("implementation").loc[["released_port", "ours"]].itertuples()
    assert ours.cpu_speedup_vs_port == pytest.approx(port.cpu_seconds / ours.cpu_seconds)
    assert port.cpu_speedup_vs_port == pytest.approx(1.0)
    with pytest.raises(ValueError, match="repeats"):
        speed.run_speed_benchmark(images, clf, {"GDM": (unet, settings)}, NUM_CLASSES, repeats=0)


def test_channels_last_variant_computes_the_same() -> None:
    """A speed variant is timed beside ours with the same counts and scores."""
    unet, clf = tiny_unet(False), tiny_classifier()
    images = (tiny_images()[:2] + 1) / 2
    settings = gdm_settings(56.0, 0, classifier_scale=3.0)
    frame = speed.run_speed_benchmark(
        images,
        clf,
        {"GDM": (unet, settings)},
        NUM_CLASSES,
        batch_sizes=[2],
        distances=["l2"],
        warmup=False,
        variants=["channels_last"],
    ).set_index("implementation")
    assert list(frame.index) == ["released_port", "ours", "ours+channels_last"]
    assert frame.loc["ours+channels_last", "nfe_per_image"] == frame.loc["ours", "nfe_per_image"]
    # NHWC convolutions round differently: measured 1.1e-5 on this random model, vs ~1e-2 for
    # any algorithmic difference
    assert frame.loc["ours+channels_last", "max_abs_score_diff"] <= 1e-4
    assert "ours + channels last" in speed_markdown(frame.reset_index(), "t")
    with pytest.raises(ValueError, match="variants"):
        speed.run_speed_benchmark(
            images, clf, {"GDM": (unet, settings)}, NUM_CLASSES, variants=["turbo"]
        )


def test_experiment_image_sizes_follow_the_reconstruct_jobs() -> None:
    """Experiment input_size, else the classifier spec's, else the benchmark's; the pre-resize
    side is resize_size, never below the crop."""
    from diffguard.runtime import experiment_image_sizes

    bench = {"image_size": 224, "resize_size": 256, "channels": 3}
    assert experiment_image_sizes({"input_size": 256}, bench, {"input_size": 32}) == (256, 256)
    assert experiment_image_sizes({}, bench, {"input_size": 32}) == (32, 256)
    assert experiment_image_sizes({}, bench, None) == (224, 256)
    assert experiment_image_sizes({"input_size": 300}, bench) == (300, 300)
    assert experiment_image_sizes({}, {"image_size": 16}) == (16, 16)


def test_speed_stage_loads_each_experiment_at_its_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An experiment's input_size (ldm_main: 256) sets the size of the images it is timed on."""
    paths = write_tiny_run(tmp_path)
    seen: dict[str, tuple[int, ...]] = {}
    original = speed.run_speed_benchmark

    def recording(images: dict, *args: object, **kwargs: object) -> pd.DataFrame:
        seen.update({m: tuple(x.shape) for m, x in images.items()})
        return original(images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(speed, "run_speed_benchmark", recording)
    experiments = [
        {
            "name": "gdm_main",
            "method": "gdm",
            "gdm": {
                "respacing": "ddim4",
                "early_stop_steps": 1,
                "early_stop_metrics": ["psnr"],
                "early_stop_thresholds": [56.0],
                "cutouts_num": -1,
            },
        },
        {
            "name": "cfg_main",
            "method": "cfg",
            "input_size": 12,
            "cfg": {"ddim_steps": 2, "timestep_offset": 0, "beta_schedule": "linear"},
        },
    ]
    speed.speed_stage(
        classifier_weights=paths["classifier"],
        experiments=experiments,
        model_dirs=[paths["gdm"], paths["cfg"]],
        imglist=paths["list"],
        benchmark_json=paths["benchmark"],
        benchmark={"image_size": 16, "channels": 1, "num_classes": NUM_CLASSES},
        num_images=2,
        batch_sizes=[2],
        device_name="cpu",
        dtypes="auto",
        distances=["l2"],
        run="unit_test",
        out_csv=tmp_path / "out/speed.csv",
        out_md=tmp_path / "out/speed.md",
        out_tex=tmp_path / "out/speed.tex",
    )
    assert seen == {"GDM": (2, 1, 16, 16), "CFG": (2, 1, 12, 12)}


def test_gdm_runners_on_a_class_conditional_bare_unet_use_its_null_label() -> None:
    """The embedded default's GDM runs on the conditional UNet (null label): so does the
    speed job's bare-UNet path, for the port and for ours."""
    from diffguard.speed import method_runners

    unet, clf, x = tiny_unet(True), tiny_classifier(), tiny_images()
    labels = torch.arange(N_IMAGES) % NUM_CLASSES
    runners = method_runners(
        "GDM", unet, gdm_settings(0.0, 0), clf, channels=1, num_classes=NUM_CLASSES
    )
    outputs = {name: run(x, labels, gdm.CallCounter()) for name, run in runners.items()}
    for _reference, recon in outputs.values():
        assert recon.shape == x.shape and torch.isfinite(recon).all()
    # ours vs the port: 2.9e-5 max under ATEN_CPU_CAPABILITY=default, avx2 and avx512 alike
    # (batching differs, float32 rounding), against 1.9 between the guided regeneration and
    # its reference (a label-handling slip moves the result by that order)
    tol = 1e-4
    assert (outputs["ours"][1] - outputs["released_port"][1]).abs().max() <= tol
    assert (outputs["ours"][1] - outputs["ours"][0]).abs().max() > 100 * tol
