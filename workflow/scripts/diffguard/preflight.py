"""Preflight: every evaluation experiment (and the classifier pass) on a few images per dataset,
through the real models and the rules' own entry points, with a cost estimate for the full run.

Each experiment runs :func:`diffguard.reconstruction.reconstruct_shard` (the reconstruct rule's
entry point) and the classifier pass :func:`diffguard.predictions.cache_predictions_stage`, first
on one
warm-up image (model loading, CUDA initialisation: reported separately) and then, timed, on the
first ``images`` images of each evaluation set.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffguard import io
from diffguard.data import read_imglist, write_imglist

log = logging.getLogger("diffguard")


@dataclass
class Check:
    """One preflight check: ``ok`` and why not."""

    name: str
    ok: bool
    reason: str = ""


@dataclass
class Cost:
    """Measured cost of one rule (or experiment) and its estimate for the full run."""

    rule: str
    load_s: float
    s_per_image: float
    images: int  # per seed, in the full run
    seeds: int
    shard_jobs: int

    @property
    def gpu_hours_per_seed(self) -> float:
        return self.s_per_image * self.images / 3600

    @property
    def gpu_hours(self) -> float:
        return self.gpu_hours_per_seed * self.seeds


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(
    run: Callable[[Path, int], None], lists: Mapping[str, Path], k: int
) -> tuple[float, float]:
    """``(load_s, s_per_image)``: a one-image warm-up, then ``k`` images of every list, timed."""
    first = next(iter(lists.values()))
    warm = _timed(lambda: run(first, 1))
    total = sum(_timed(lambda p=p: run(p, k)) for p in lists.values())
    per_image = total / (k * len(lists))
    return max(warm - per_image, 0.0), per_image


@dataclass
class _Runner:
    """Runs the rules' entry points on the first images of the preflight's sub-lists in ``tmp``.

    ``<tmp>/<name>-<n>.txt`` holds the first ``n`` images of evaluation set ``name``
    (:func:`_write_sublists`); ``k`` caps every ``n``.
    """

    tmp: Path
    k: int
    benchmark_json: str | Path
    classifier_weights: str | Path
    benchmark: dict[str, Any]
    batch_size: int
    device_name: str
    distances: Sequence[str]
    model_dirs: Mapping[str, str | Path]
    guidance_sizes: Mapping[str, int | None]
    dtype: str | None
    torch_hub_dir: str | None

    def sub(self, base: Path, n: int) -> Path:
        return Path(f"{base}-{min(n, self.k)}.txt")

    def predictions(self, base: Path, n: int, size: int | None = None) -> Path:
        """Classifier outputs of ``sub(base, n)``, cached: reconstruction timings exclude them."""
        from diffguard.predictions import cache_predictions_stage

        out = self.tmp / "pred" / f"{base.name}-{min(n, self.k)}-{size}.npz"
        if out.is_file():
            return out
        cache_predictions_stage(
            self.sub(base, n),
            self.benchmark_json,
            self.classifier_weights,
            self.benchmark,
            out,
            batch_size=self.batch_size,
            device_name=self.device_name,
            input_size=size,
        )
        return out

    def classifier_pass(self, base: Path, n: int) -> None:
        out = self.predictions(base, n)
        out.unlink()  # each call is timed in full

    def recon(self, base: Path, n: int, name: str, exp: dict[str, Any], seed: int) -> None:
        """Reconstruct ``sub(base, n)`` with experiment ``name``; raise on non-finite scores."""
        from diffguard.reconstruction import reconstruct_shard

        out = self.tmp / "recon" / f"{exp['name']}-{base.name}-{min(n, self.k)}.npz"
        reconstruct_shard(
            imglist=self.sub(base, n),
            benchmark_json=self.benchmark_json,
            predictions=self.predictions(base, n, self.guidance_sizes.get(name)),
            classifier_weights=self.classifier_weights,
            model_dir=self.model_dirs[name],
            experiment=dict(exp),
            benchmark=self.benchmark,
            seed=seed,
            shard=0,
            shard_size=min(n, self.k),
            batch_size=self.batch_size,
            distances=self.distances,
            save_images=0,
            device_name=self.device_name,
            out=out,
            torch_hub_dir=self.torch_hub_dir,
            dtype=self.dtype,
        )
        bad = [
            key
            for key, value in io.read_npz(out).items()
            if key.startswith("score_") and not np.isfinite(value).all()
        ]
        if bad:
            raise ValueError(f"non-finite scores {bad} on {self.sub(base, n)}")


def _write_sublists(
    imglists: Mapping[str, str | Path], images: int, tmp: Path, checks: list[Check]
) -> tuple[dict[str, Path], dict[str, int]]:
    """Write the 1- and ``images``-image sub-lists of every list; ``(bases, full sizes)``."""
    lists: dict[str, Path] = {}
    full_sizes: dict[str, int] = {}
    for name, path in imglists.items():
        records = read_imglist(path)
        full_sizes[name] = len(records)
        if not records:
            checks.append(Check(f"list {name}", False, f"{path} is empty"))
            continue
        for n in (1, images):
            write_imglist(tmp / f"{name}-{n}.txt", records[:n])
        lists[name] = tmp / name
        checks.append(Check(f"list {name}", True, f"{len(records)} images"))
    return lists, full_sizes


def _check_classifier(
    runner: _Runner, lists: Mapping[str, Path], all_images: int, n_lists: int
) -> tuple[Check, Cost | None]:
    """Time the classifier pass on every sub-list (one job per list in the full run)."""
    try:
        load_s, per_image = _measure(runner.classifier_pass, lists, runner.k)
    except Exception as err:  # noqa: BLE001  (a preflight reports every failure)
        log.exception("classifier pass failed")
        return Check("classifier pass", False, f"{type(err).__name__}: {err}"), None
    cost = Cost("classifier pass (cache_predictions)", load_s, per_image, all_images, 1, n_lists)
    return Check("classifier pass", True, ""), cost


def _check_experiment(
    runner: _Runner,
    lists: Mapping[str, Path],
    name: str,
    exp: dict[str, Any],
    seed: int,
    full: Cost,
) -> tuple[Check, Cost | None]:
    """Time experiment ``name`` on every sub-list; ``full`` holds the full run's counts."""

    def recon(base: Path, n: int) -> None:
        runner.recon(base, n, name, exp, seed)

    check = f"experiment {name}"
    try:
        for base in lists.values():
            for n in (1, runner.k):
                runner.predictions(base, n, runner.guidance_sizes.get(name))
        load_s, per_image = _measure(recon, lists, runner.k)
    except Exception as err:  # noqa: BLE001  (a preflight reports every failure)
        log.exception("%s failed", check)
        return Check(check, False, f"{type(err).__name__}: {err}"), None
    return Check(check, True, ""), replace(full, load_s=load_s, s_per_image=per_image)


def run_preflight(
    *,
    imglists: Mapping[str, str | Path],
    other_lists: Sequence[str | Path],
    benchmark_json: str | Path,
    classifier_weights: str | Path,
    experiments: Mapping[str, dict[str, Any]],
    model_dirs: Mapping[str, str | Path],
    experiment_seeds: Mapping[str, Sequence[int]],
    guidance_sizes: Mapping[str, int | None],
    benchmark: dict[str, Any],
    images: int,
    shard_size: int,
    batch_size: int,
    distances: Sequence[str],
    device_name: str,
    dtype: str | None,
    torch_hub_dir: str | None,
    out_md: str | Path,
    out_csv: str | Path,
) -> list[Check]:
    """Run the checks, write the summary (markdown + CSV), return the checks.

    ``imglists``: the selected list of every evaluation set (its length is the dataset's images
    in the full run: its ``n`` or the whole list); ``other_lists``: lists the classifier pass
    also covers (the training set).
    """
    from diffguard.runtime import resolve_device

    checks: list[Check] = []
    costs: list[Cost] = []
    device = resolve_device(device_name)
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp_dir:
        tmp = Path(tmp_dir)
        lists, full_sizes = _write_sublists(imglists, images, tmp, checks)
        k = min(images, *full_sizes.values())
        runner = _Runner(
            tmp=tmp,
            k=k,
            benchmark_json=benchmark_json,
            classifier_weights=classifier_weights,
            benchmark=benchmark,
            batch_size=batch_size,
            device_name=device_name,
            distances=distances,
            model_dirs=model_dirs,
            guidance_sizes=guidance_sizes,
            dtype=dtype,
            torch_hub_dir=torch_hub_dir,
        )
        all_images = sum(full_sizes.values()) + sum(len(read_imglist(p)) for p in other_lists)
        check, cost = _check_classifier(runner, lists, all_images, len(imglists) + len(other_lists))
        checks.append(check)
        costs += [cost] if cost is not None else []
        for exp_name, exp in experiments.items():
            seeds = list(experiment_seeds[exp_name])
            jobs = sum(math.ceil(n / shard_size) for n in full_sizes.values()) * len(seeds)
            full = Cost(
                f"reconstruct {exp_name}", 0.0, 0.0, sum(full_sizes.values()), len(seeds), jobs
            )
            check, cost = _check_experiment(runner, lists, exp_name, exp, seeds[0], full)
            checks.append(check)
            costs += [cost] if cost is not None else []
    header = {
        "device": str(device),
        # CPU runs every diffusion network in float32 (diffguard.precision.resolve_precision)
        "dtype": "float32" if device.type == "cpu" else (dtype or "per-experiment precision"),
        "batch_size": min(batch_size, k),
        "images_per_dataset": k,
    }
    write_summary(checks, costs, header, out_md, out_csv)
    return checks


def cost_frame(costs: Sequence[Cost]) -> pd.DataFrame:
    """One row per rule: measured s/image, images in the full run, GPU-hours and jobs."""
    return pd.DataFrame(
        [
            {
                "rule": c.rule,
                "load_s": round(c.load_s, 3),
                "s_per_image": c.s_per_image,
                "images": c.images,
                "gpu_hours_per_seed": c.gpu_hours_per_seed,
                "seeds": c.seeds,
                "gpu_hours": c.gpu_hours,
                "shard_jobs": c.shard_jobs,
            }
            for c in costs
        ],
        columns=[
            "rule",
            "load_s",
            "s_per_image",
            "images",
            "gpu_hours_per_seed",
            "seeds",
            "gpu_hours",
            "shard_jobs",
        ],
    )


def write_summary(
    checks: Sequence[Check],
    costs: Sequence[Cost],
    header: Mapping[str, Any],
    out_md: str | Path,
    out_csv: str | Path,
) -> str:
    """Write the one-screen markdown summary and the cost CSV; return the markdown."""
    frame = cost_frame(costs)
    lines = [
        "# Preflight",
        "",
        ", ".join(f"{k}: {v}" for k, v in header.items()),
        "",
        "| check | status | reason |",
        "|---|---|---|",
        *(f"| {c.name} | {'OK' if c.ok else 'FAIL'} | {c.reason} |" for c in checks),
        "",
        "| rule | load s | s/image | images | GPU-h/seed | seeds | GPU-h | jobs |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r.rule} | {r.load_s:.1f} | {r.s_per_image:.4g} | {r.images} | "
            f"{r.gpu_hours_per_seed:.4g} | {r.seeds} | {r.gpu_hours:.4g} | {r.shard_jobs} |"
            for r in frame.itertuples()
        ),
        "",
        f"total GPU-hours: {frame['gpu_hours'].sum():.4g}",
    ]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"FAILED: {', '.join(failed)}" if failed else "all checks OK")
    text = "\n".join(lines) + "\n"
    io.write_text(out_md, text)
    io.write_csv(out_csv, frame)
    return text
