"""Measure the float error behind the unit suite's tolerances on every CPU kernel and thread count.

Each setting runs in a fresh subprocess because ``ATEN_CPU_CAPABILITY`` is read when torch is
imported. Prints one row per check with the max |error| per ``capability/threads`` setting; set a
test's bound from the row's max with a stated margin and write the numbers in its comment.

    .venv/bin/python tests/tools/measure_tolerances.py  # default|avx2|avx512 x 1|2 threads
    .venv/bin/python tests/tools/measure_tolerances.py --caps avx2 --threads 1

On a CPU without a capability torch silently falls back; the column header shows what ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("measure_tolerances")


def _max(a: object, b: object) -> float:
    import torch

    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def gdm_fixture_errors() -> dict[str, float]:
    """Errors of tests/unit/test_gdm_fixture.py against the released trajectories."""
    import test_gdm_fixture as t
    import torch
    from conftest import _shared_dir

    from diffguard import gdm
    from diffguard.checkpoints import load_checkpoint
    from diffguard.convert.adm import build_adm_unet, convert_adm_state_dict, use_released_attention

    fixture = load_checkpoint(_shared_dir() / "reference/checkpoints/gdm_trajectory_fixture.pt")
    config = fixture["cases"]["fixed_steps"]["config"]
    unet = build_adm_unet(config)
    unet.load_state_dict(convert_adm_state_dict(fixture["adm_state_dict"], config), strict=True)
    use_released_attention(unet.eval())
    clf = t.FixtureClassifier()
    clf.load_state_dict(fixture["classifier_state_dict"], strict=True)
    clf.eval()

    def eps(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return unet(x, s).sample[:, :3]

    errors: dict[str, float] = {}
    for case in ("fixed_steps", "adaptive_early_stop"):
        exp = fixture["cases"][case]
        settings = t.settings_from_released(exp["config"])
        out = gdm.reconstruct(eps, clf, fixture["x0"], fixture["labels"], settings, {})
        errors[f"gdm_fixture.inversion.xT[{case}]"] = _max(out.x_t, exp["xT"])
        errors[f"gdm_fixture.inversion.recon[{case}]"] = max(
            _max(out.recon, exp["recon"]), _max(out.recon_uncond, exp["recon_uncond"])
        )
        start = gdm.denoise_start_index(exp["rev_t"], settings, settings.schedule().num_steps)
        labels = torch.cat([fixture["labels"], torch.full((3,), -1)])
        guided = gdm.guided_sample(
            eps, clf, torch.cat([exp["xT"]] * 2), labels, torch.cat([start, start]), settings
        )
        errors[f"gdm_fixture.guided_sampling[{case}]"] = max(
            _max(guided[:3], exp["recon"]), _max(guided[3:], exp["recon_uncond"])
        )
    return errors


def speed_errors() -> dict[str, float]:
    """Port-vs-ours differences of tests/unit/test_speed.py."""
    import test_speed as t
    import torch

    from diffguard import speed

    errors: dict[str, float] = {}
    pair = t.run_pair(torch.float32, 2)
    ours, port = pair["ours"], pair["port"]
    errors["speed.float32_pair.x_t"] = _max(ours.x_t, port.x_t)
    errors["speed.float32_pair.recon"] = max(
        _max(ours.recon, port.recon), _max(ours.recon_uncond, port.recon_uncond)
    )
    a, b = t.scores(ours, pair["clf"]), t.scores(port, pair["clf"])
    errors["speed.float32_pair.scores"] = max(_max(a[k], b[k]) for k in a)

    unet, clf = t.tiny_unet(False), t.tiny_classifier()
    images = (t.tiny_images()[:4] + 1) / 2
    settings = t.gdm_settings(56.0, 2, classifier_scale=3.0)
    frame = speed.run_speed_benchmark(
        images, clf, {"GDM": (unet, settings)}, t.NUM_CLASSES, batch_sizes=[2],
        distances=["l2", "logits"], warmup=False, repeats=2,
    )  # fmt: skip
    errors["speed.repeats.max_abs_score_diff"] = float(frame["max_abs_score_diff"].max())
    frame = speed.run_speed_benchmark(
        images[:2], clf, {"GDM": (unet, t.gdm_settings(56.0, 0, classifier_scale=3.0))},
        t.NUM_CLASSES, batch_sizes=[2], distances=["l2"], warmup=False,
        variants=["channels_last"],
    ).set_index("implementation")  # fmt: skip
    errors["speed.channels_last.max_abs_score_diff"] = float(
        frame.loc["ours+channels_last", "max_abs_score_diff"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        frame = run_speed_stage(Path(tmp))
    for method, sub in frame.groupby("method"):
        errors[f"speed.stage.max_abs_score_diff[{method}]"] = float(sub["max_abs_score_diff"].max())
    return errors


def run_speed_stage(tmp: Path):  # noqa: ANN201 (pandas frame; pandas imported lazily)
    """The speed stage exactly as test_speed_stage_writes_the_table runs it."""
    import test_speed as t

    # Re-run the test body itself so the measurement cannot drift from the test's setup.
    captured: dict = {}
    real = t.speed.speed_stage

    def spy(**kwargs: object):  # noqa: ANN202
        captured["frame"] = real(**kwargs)
        return captured["frame"]

    t.speed.speed_stage = spy
    try:
        # the bound under measurement may fail; the frame is what we want
        with contextlib.suppress(AssertionError):
            t.test_speed_stage_writes_the_table(tmp)
    finally:
        t.speed.speed_stage = real
    return captured["frame"]


def worker(threads: int) -> None:
    """Print this process's capability and errors as one JSON line."""
    sys.path[:0] = [str(ROOT / "tests/unit"), str(ROOT / "tests"), str(ROOT / "workflow/scripts")]
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    errors = {**gdm_fixture_errors(), **speed_errors()}
    cap = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"capability": cap, "threads": threads, "errors": errors}))


def main() -> None:
    """Run one worker per capability x thread count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", nargs="+", default=["default", "avx2", "avx512"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    columns: dict[str, dict[str, float]] = {}
    for cap in args.caps:
        for threads in args.threads:
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(threads)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"worker {cap}/{threads} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            name = f"{cap}->{row['capability']}/{threads}t"
            log.info("measured %s", name)
            columns[name] = row["errors"]
    checks = list(next(iter(columns.values())))
    width = max(len(c) for c in checks)
    print(f"{'check':<{width}}  " + "  ".join(f"{c:>18}" for c in columns) + "  max")
    for check in checks:
        values = [columns[c][check] for c in columns]
        cells = "  ".join(f"{v:>18.2e}" for v in values)
        print(f"{check:<{width}}  {cells}  {max(values):.2e}")


if __name__ == "__main__":
    main()
