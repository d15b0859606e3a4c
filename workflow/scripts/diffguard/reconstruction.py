"""The reconstruction job: DiffGuard on one shard of a dataset, per-image scores to npz."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffguard import io
from diffguard.data import ImageRecord, read_imglist, select_shard, subsample
from diffguard.gdm import CallCounter
from diffguard.method_api import MethodBatch, MethodJob, MethodOutput
from diffguard.runtime import (
    ExperimentSetup,
    image_root,
    load_trained_classifier,
    open_experiment,
    resolve_device,
)

log = logging.getLogger("diffguard")


def oracle_label(image_id: str, label: int, num_classes: int, seed: int) -> int:
    """Oracle guidance label: the true label for ID images, a seeded random label for OOD ones.

    The random label depends only on the image id and the seed, so shards do not matter.
    """
    if label >= 0:
        return label
    rng = np.random.default_rng([seed, zlib.crc32(image_id.encode())])
    return int(rng.integers(0, num_classes))


def aligned_chunks(
    num_records: int, shard: int, shard_size: int, batch_size: int
) -> list[tuple[int, int, slice]]:
    """Batches of one shard on the dataset's global grid of ``batch_size``-aligned batches.

    A shard's images are always computed inside the same global batch (grid batch ``j`` holds
    images ``[j * batch_size, (j + 1) * batch_size)``), whatever the shard size; a grid batch
    that straddles a shard boundary is computed whole and only the shard's rows are kept. On a
    given machine the batched arithmetic (convolutions, matmuls) can depend on a batch's size
    and members, so this is what makes any ``shard_size`` give bit-identical scores.

    Returns:
        ``(first, stop, keep)`` per grid batch: the global index range to compute, and the rows
        of that batch that belong to the shard.

    Raises:
        ValueError: Non-positive sizes, or a shard outside the dataset.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, num_records)
    if shard < 0 or lo >= hi:
        raise ValueError(f"shard {shard} of size {shard_size} is outside {num_records} records")
    chunks = []
    for first in range((lo // batch_size) * batch_size, hi, batch_size):
        stop = min(first + batch_size, num_records)
        chunks.append((first, stop, slice(max(lo, first) - first, min(hi, stop) - first)))
    return chunks


TRACE_COLUMNS = ("image_id", "label", "step", "timestep", "psnr_db", "psnr_peak")
"""Columns of an inversion-trace CSV: one row per image and inversion level ``step`` (1..S)."""


def inversion_trace_job(
    *,
    imglists: Mapping[str, str | Path],
    benchmark_json: str | Path,
    classifier_spec: str | Path,
    model_dir: str | Path,
    experiment: dict[str, Any],
    benchmark: dict[str, Any],
    images: int | None,
    batch_size: int,
    device_name: str,
    outs: Mapping[str, str | Path],
    dtype: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Fig. 4: PSNR(x_t, x0) along the full GDM inversion of a subsample of each dataset.

    Runs only the deterministic DDIM inversion of a ``inversion_trace_only`` experiment over
    every step of its respaced grid (its early-stop settings are ignored, nothing is
    regenerated) on ``images`` images drawn from each dataset's list with ``benchmark.seed``
    (all when None or larger than the list). Images are loaded as the experiment's reconstruct
    jobs load them and compared with x_t at the model's sample size, as the released early stop
    does. One job for every dataset: the model is loaded once. Writes :data:`TRACE_COLUMNS`
    (PSNR in units of the experiment's ``psnr_peak``) to ``outs[dataset]``.

    Raises:
        ValueError: The experiment is not a GDM one, its model is a latent one, or the datasets
            of ``imglists`` and ``outs`` differ.
    """
    from diffguard import gdm
    from diffguard.methods import start_job

    name = experiment["name"]
    if experiment["method"] != "gdm":
        raise ValueError(
            f"experiments.{name}: an inversion trace needs method gdm, got {experiment['method']}"
        )
    if set(imglists) != set(outs):
        raise ValueError(f"inversion trace: lists {sorted(imglists)} but outputs {sorted(outs)}")
    device = resolve_device(device_name)
    spec = json.loads(Path(classifier_spec).read_text(encoding="utf-8"))
    setup = open_experiment(
        experiment, benchmark, model_dir, device, classifier_spec=spec, dtype=dtype
    )
    # early stop off: the trace inverts over every step and builds no early-stop metric
    settings = gdm.full_inversion_settings(setup.settings)
    job = start_job("gdm", setup.model, None, settings, where=setup.where)
    root = image_root(benchmark_json)
    frames = {}
    for dataset, imglist in imglists.items():
        records = read_imglist(imglist)
        n = None if images is None or images >= len(records) else int(images)
        records = subsample(records, n, int(benchmark.get("seed", 0)))
        frames[dataset] = _trace_dataset(job, setup, records, root, benchmark, batch_size, device)
        io.write_csv(outs[dataset], frames[dataset])
        log.info("%s: -> %s", dataset, outs[dataset])
    return frames


def _trace_dataset(
    job: MethodJob,
    setup: ExperimentSetup,
    records: Sequence[ImageRecord],
    root: Path,
    benchmark: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
) -> pd.DataFrame:
    """The trace frame (:data:`TRACE_COLUMNS`) of one dataset's ``records``."""
    from diffguard import gdm

    levels = gdm.inversion_levels(setup.settings)
    steps = len(levels)
    counter = gdm.CallCounter()
    traces = []
    start = time.perf_counter()
    for first in range(0, len(records), batch_size):
        chunk = records[first : first + batch_size]
        x01 = setup.load_images(chunk, root, benchmark).to(device)
        traces.append(gdm.trace_batch(job, MethodBatch(x01 * 2 - 1, torch.empty(0)), counter))
    trace = np.concatenate([t.numpy() for t in traces]) if traces else np.zeros((0, steps))
    log.info(
        "full %s inversion (%d steps, no early stop) of %d images, %.1f UNet "
        "evaluations/image, %.1f s",
        setup.settings.respacing,
        steps,
        len(records),
        counter.unet_rows / max(len(records), 1),
        time.perf_counter() - start,
    )
    return pd.DataFrame(
        {
            "image_id": np.repeat([r.image_id for r in records], steps),
            "label": np.repeat([r.label for r in records], steps),
            "step": np.tile(np.arange(1, steps + 1), len(records)),
            "timestep": np.tile(levels, len(records)),
            "psnr_db": trace.reshape(-1).astype(np.float64),
            "psnr_peak": float(setup.settings.psnr_peak),
        },
        columns=list(TRACE_COLUMNS),
    )


def reconstruct_shard(
    *,
    imglist: str | Path,
    benchmark_json: str | Path,
    predictions: str | Path,
    classifier_weights: str | Path,
    model_dir: str | Path,
    experiment: dict[str, Any],
    benchmark: dict[str, Any],
    seed: int,
    shard: int,
    shard_size: int,
    batch_size: int,
    distances: Sequence[str],
    save_images: int,
    device_name: str,
    out: str | Path,
    torch_hub_dir: str | None = None,
    dtype: str | None = None,
) -> None:
    """Run DiffGuard on one shard of a dataset and write per-image scores (npz).

    Images are loaded at :func:`~diffguard.runtime.experiment_image_sizes` (the experiment's
    ``input_size``, else the classifier spec's, else ``benchmark.image_size``; after a
    ``benchmark.resize_size`` pre-resize); the method's batch entry point (see
    :mod:`diffguard.methods`) resizes them to the diffusion model's ``sample_size`` for
    inversion and regeneration and back to the input size for scoring, as the released code
    does (224 -> 256 -> 224 for ADM). The experiment's ``precision`` (else the top-level
    ``dtype`` fallback, else ``released``) sets the precision of the diffusion network (GPU
    only; see :func:`diffguard.precision.resolve_precision`).
    """
    from diffguard.distances import SimilarityScorer

    torch.manual_seed(seed)
    device = resolve_device(device_name)
    all_records = read_imglist(imglist)
    records = select_shard(all_records, shard, shard_size)
    pred_of = _predictions(predictions)
    classifier = load_trained_classifier(classifier_weights, device)
    clf_spec = getattr(classifier, "spec", None)
    setup = open_experiment(
        experiment, benchmark, model_dir, device, classifier_spec=clf_spec, seed=seed, dtype=dtype
    )
    scorer = SimilarityScorer(list(distances), classifier, torch_hub_dir, device)
    root = image_root(benchmark_json)
    log.info(
        "experiment %s on %d images (shard %d), device %s, input %d px, model %d px",
        setup.name,
        len(records),
        shard,
        device,
        setup.image_size,
        setup.model.sample_size,
    )
    job = setup.start_job(classifier, torch_hub_dir, device)
    guide_of = _guidance(pred_of, bool(experiment.get("oracle_labels")), benchmark, seed)
    shard_out = _ShardOutput(save_images, len(records))
    truncated: list[str] = []
    for first, stop, keep in aligned_chunks(len(all_records), shard, shard_size, batch_size):
        chunk = all_records[first:stop]
        # Anything drawing from the global RNG sees the same state whichever shard runs it.
        torch.manual_seed(seed * 1_000_003 + first)
        x01 = setup.load_images(chunk, root, benchmark, truncated).to(device)
        preds = torch.tensor([pred_of[r.image_id] for r in chunk])
        batch = MethodBatch(x01 * 2 - 1, guide_of(chunk, preds), x01)
        res = job.run(batch, shard_out.counter)
        scores = scorer(res.reference.to(device), res.recon.to(device))
        # Rows of the grid batch outside this shard were computed for bit-identical batching.
        shard_out.add(chunk, keep, preds, batch, res, scores)
    shard_out.write(out, records, truncated, shard)


def _predictions(path: str | Path) -> dict[str, int]:
    """Image id -> the classifier's cached prediction."""
    npz = io.read_npz(path)
    return dict(zip(npz["image_ids"].tolist(), npz["preds"].tolist(), strict=True))


def _guidance(
    pred_of: Mapping[str, int], oracle: bool, benchmark: Mapping[str, Any], seed: int
) -> Callable[[Sequence[ImageRecord], torch.Tensor], torch.Tensor]:
    """Guidance labels of a chunk: the classifier's predictions, or :func:`oracle_label`."""
    num_classes = benchmark["num_classes"]

    def guide(chunk: Sequence[ImageRecord], preds: torch.Tensor) -> torch.Tensor:
        if not oracle:
            return preds
        return torch.tensor([oracle_label(r.image_id, r.label, num_classes, seed) for r in chunk])

    return guide


class _ShardOutput:
    """The arrays of a shard, gathered batch by batch, and their npz."""

    def __init__(self, save_images: int, num_records: int) -> None:
        self.save_images = save_images
        self.num_records = num_records
        self.rows: dict[str, list[np.ndarray]] = {}
        self.kept: dict[str, list[torch.Tensor]] = {"x0": [], "recon": [], "recon_uncond": []}
        self.counter = CallCounter()
        self.start_time = time.perf_counter()
        self.done = 0

    def add(
        self,
        chunk: Sequence[ImageRecord],
        keep: slice,
        preds: torch.Tensor,
        batch: MethodBatch,
        res: MethodOutput,
        scores: Mapping[str, torch.Tensor],
    ) -> None:
        """Keep the shard's rows of one grid batch (and the first ``save_images`` images)."""
        chunk = chunk[keep]
        x, recon, guide = batch.x[keep], res.recon[keep], batch.labels[keep]
        recon_uncond = None if res.recon_uncond is None else res.recon_uncond[keep]
        values = {
            "image_ids": np.array([r.image_id for r in chunk]),
            "labels": np.array([r.label for r in chunk]),
            "preds": preds[keep].numpy(),
            "guide_labels": guide.numpy(),
            "rev_t": res.rev_t[keep].numpy(),
            "start_index": res.start_index[keep].numpy(),
            "psnr_trace": res.psnr_trace[keep].numpy(),
            **{f"score_{k}": v[keep].numpy() for k, v in scores.items()},
        }
        for key, value in values.items():
            self.rows.setdefault(key, []).append(value)
        room = self.save_images - sum(len(t) for t in self.kept["x0"])
        if room > 0:
            self.kept["x0"].append(x[:room].cpu())
            self.kept["recon"].append(recon[:room])
            if recon_uncond is not None:
                self.kept["recon_uncond"].append(recon_uncond[:room])
        self.done += len(chunk)
        rate = self.done / (time.perf_counter() - self.start_time)
        log.info(
            "%d/%d images, %.2f images/s, ETA %.0f s",
            self.done,
            self.num_records,
            rate,
            (self.num_records - self.done) / rate,
        )

    def write(
        self, out: str | Path, records: Sequence[ImageRecord], truncated: list[str], shard: int
    ) -> None:
        """The shard's npz: per-image rows, kept images (float16), NFE, truncated paths."""
        arrays = {k: np.concatenate(v) for k, v in self.rows.items()}
        for key, tensors in self.kept.items():
            arrays[key] = (
                torch.cat(tensors).to(torch.float16).numpy()
                if tensors
                else np.zeros((0,), np.float16)
            )
        nfe = self.counter.unet_rows / max(len(records), 1)
        arrays["nfe_per_image"] = np.array(nfe)
        # chunks are padded to aligned batches: keep the shard's own truncated images only
        cut = set(truncated)
        own = [r.path for r in records if r.path in cut]
        arrays["truncated_paths"] = np.array(own, dtype=str)
        log.info("shard %d: %d truncated images decoded as far as they go", shard, len(own))
        io.write_npz(out, **arrays)
        log.info(
            "wrote %s: %.1f UNet evaluations/image, %.1f s",
            out,
            nfe,
            time.perf_counter() - self.start_time,
        )
