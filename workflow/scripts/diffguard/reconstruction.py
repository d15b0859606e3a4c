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
from diffguard.data import read_imglist, select_shard
from diffguard.precision import select_precision
from diffguard.runtime import (
    experiment_image_sizes,
    image_root,
    load_diffusion_model,
    load_experiment_images,
    load_trained_classifier,
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


EARLY_STOP_PERCEPTUAL = ("dists", "lpips")
"""Perceptual early-stop metrics (``psnr`` is built into :mod:`diffguard.gdm`)."""


def perceptual_similarity(
    name: str, torch_hub_dir: str | None, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Early-stop similarity ``1 - DISTS`` or ``-LPIPS`` of ``(x/2 + 0.5, x0/2 + 0.5)``.

    As the released ``CombinedMetrics``: unlike the final score, the noisy sample is not
    clamped to [0, 1]. The transform is the tester's (PAPER.md C.4), so an ``lpips`` threshold
    is negative (stop when ``-LPIPS < threshold``).
    """
    import piq

    from diffguard.distances import require_perceptual_weights

    if name not in EARLY_STOP_PERCEPTUAL:
        raise ValueError(f"perceptual early-stop metric {name!r}: expected {EARLY_STOP_PERCEPTUAL}")
    require_perceptual_weights(name, torch_hub_dir)
    metric = (piq.DISTS if name == "dists" else piq.LPIPS)(reduction="none").to(device).eval()

    @torch.no_grad()
    def similarity(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a, b = x.float() / 2 + 0.5, x0.float() / 2 + 0.5
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        dist = metric(a, b)
        return 1 - dist if name == "dists" else -dist

    return similarity


def dists_similarity(
    torch_hub_dir: str | None, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Early-stop similarity ``1 - DISTS(x/2 + 0.5, x0/2 + 0.5)``, the noisy image unclamped."""
    return perceptual_similarity("dists", torch_hub_dir, device)


def unconditional_eps(backend: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``eps(x, t)`` of a backend without guidance (a conditional model's null label)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if backend.conditional:
            null = torch.full((x.shape[0],), backend.null_label, dtype=torch.long)
            return backend.eps(x, t, null.to(x.device))
        return backend.eps(x, t)

    return eps


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
    from diffguard.backends import check_schedule, resize_images
    from diffguard.config import method_settings
    from diffguard.data import subsample

    name = experiment["name"]
    if experiment["method"] != "gdm":
        raise ValueError(
            f"experiments.{name}: an inversion trace needs method gdm, got {experiment['method']}"
        )
    if set(imglists) != set(outs):
        raise ValueError(f"inversion trace: lists {sorted(imglists)} but outputs {sorted(outs)}")
    settings = method_settings(experiment)
    assert isinstance(settings, gdm.GdmSettings)
    device = resolve_device(device_name)
    spec = json.loads(Path(classifier_spec).read_text(encoding="utf-8"))
    backend = load_diffusion_model(
        model_dir,
        device,
        select_precision(experiment.get("precision"), dtype),
        f"experiments.{experiment['name']}.precision",
    )
    if backend.latent:
        raise ValueError(
            f"experiments.{name}: an inversion trace needs a pixel-space model, got a latent "
            f"({backend.source}) one"
        )
    check_schedule(backend, settings, f"experiments.{name}.gdm")
    eps = unconditional_eps(backend)
    root = image_root(benchmark_json)
    levels = gdm.inversion_levels(settings)
    steps = len(levels)
    frames = {}
    for dataset, imglist in imglists.items():
        records = read_imglist(imglist)
        n = None if images is None or images >= len(records) else int(images)
        records = subsample(records, n, int(benchmark.get("seed", 0)))
        counter = gdm.CallCounter()
        traces = []
        start = time.perf_counter()
        for first in range(0, len(records), batch_size):
            chunk = records[first : first + batch_size]
            x01 = load_experiment_images(chunk, root, experiment, benchmark, spec).to(device)
            x_model = resize_images(x01 * 2 - 1, backend.sample_size)
            traces.append(gdm.inversion_trace(eps, x_model, settings, counter).numpy())
        trace = np.concatenate(traces) if traces else np.zeros((0, steps))
        frame = pd.DataFrame(
            {
                "image_id": np.repeat([r.image_id for r in records], steps),
                "label": np.repeat([r.label for r in records], steps),
                "step": np.tile(np.arange(1, steps + 1), len(records)),
                "timestep": np.tile(levels, len(records)),
                "psnr_db": trace.reshape(-1).astype(np.float64),
                "psnr_peak": float(settings.psnr_peak),
            },
            columns=list(TRACE_COLUMNS),
        )
        io.write_csv(outs[dataset], frame)
        frames[dataset] = frame
        log.info(
            "%s: full %s inversion (%d steps, no early stop) of %d images, %.1f UNet "
            "evaluations/image, %.1f s -> %s",
            dataset,
            settings.respacing,
            steps,
            len(records),
            counter.unet_rows / max(len(records), 1),
            time.perf_counter() - start,
            outs[dataset],
        )
    return frames


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
    ``benchmark.resize_size`` pre-resize), resized to the diffusion model's ``sample_size``
    for inversion and regeneration and back to the input size for scoring, as the released
    code does (224 -> 256 -> 224 for ADM). The experiment's ``precision`` (else the top-level
    ``dtype`` fallback, else ``released``) sets the precision of the diffusion network (GPU
    only; see :func:`diffguard.precision.resolve_precision`).
    """
    from diffguard import cfg, gdm
    from diffguard.backends import check_schedule, resize_images
    from diffguard.cam import cam_mask
    from diffguard.config import method_settings
    from diffguard.distances import SimilarityScorer

    torch.manual_seed(seed)
    device = resolve_device(device_name)
    settings = method_settings(experiment, seed)
    all_records = read_imglist(imglist)
    records = select_shard(all_records, shard, shard_size)
    preds_npz = io.read_npz(predictions)
    pred_of = dict(zip(preds_npz["image_ids"].tolist(), preds_npz["preds"].tolist(), strict=True))
    classifier = load_trained_classifier(classifier_weights, device)
    backend = load_diffusion_model(
        model_dir,
        device,
        select_precision(experiment.get("precision"), dtype),
        f"experiments.{experiment['name']}.precision",
    )
    clf_spec = getattr(classifier, "spec", None)
    input_size, _ = experiment_image_sizes(experiment, benchmark, clf_spec)
    if experiment["method"] == "gdm" and backend.latent:
        raise ValueError(
            f"experiments.{experiment['name']}: method gdm needs a pixel-space model, "
            f"got a latent ({backend.source}) one"
        )
    if experiment["method"] == "cfg" and not backend.conditional:
        raise ValueError(
            f"experiments.{experiment['name']}: method cfg needs a class-conditional model, "
            f"got an unconditional {backend.source} one"
        )
    num_classes = benchmark["num_classes"]
    scorer = SimilarityScorer(list(distances), classifier, torch_hub_dir, device)
    root = image_root(benchmark_json)
    check_schedule(backend, settings, f"experiments.{experiment['name']}.{experiment['method']}")
    log.info(
        "experiment %s on %d images (shard %d), device %s, input %d px, model %d px",
        experiment["name"],
        len(records),
        shard,
        device,
        input_size,
        backend.sample_size,
    )

    eps_uncond = unconditional_eps(backend)
    extra_similarities = {}
    if isinstance(settings, gdm.GdmSettings):
        for name in EARLY_STOP_PERCEPTUAL:
            if name in settings.early_stop_metrics:
                extra_similarities[name] = perceptual_similarity(name, torch_hub_dir, device)

    out_rows: dict[str, list[np.ndarray]] = {}
    kept: dict[str, list[torch.Tensor]] = {"x0": [], "recon": [], "recon_uncond": []}
    start_time = time.perf_counter()
    counter = gdm.CallCounter()
    done = 0
    truncated: list[str] = []
    for first, stop, keep in aligned_chunks(len(all_records), shard, shard_size, batch_size):
        chunk = all_records[first:stop]
        # Anything drawing from the global RNG sees the same state whichever shard runs it.
        torch.manual_seed(seed * 1_000_003 + first)
        x01 = load_experiment_images(chunk, root, experiment, benchmark, clf_spec, truncated).to(
            device
        )
        x = x01 * 2 - 1
        x_model = resize_images(x, backend.sample_size)
        preds = torch.tensor([pred_of[r.image_id] for r in chunk])
        if experiment.get("oracle_labels"):
            guide = torch.tensor(
                [oracle_label(r.image_id, r.label, num_classes, seed) for r in chunk]
            )
        else:
            guide = preds
        if experiment["method"] == "gdm":
            assert isinstance(settings, gdm.GdmSettings)
            res = gdm.reconstruct(
                eps_uncond,
                classifier,
                x_model,
                guide.to(device),
                settings,
                extra_similarities,
                counter,
            )
            recon, recon_uncond = res.recon, res.recon_uncond
            rev_t, start_index, trace = res.rev_t, res.start_index, res.psnr_trace
        else:
            assert isinstance(settings, cfg.CfgSettings)
            mask = (
                cam_mask(classifier, classifier.cam_layer, x01, guide, settings.cam_cut)
                if settings.use_cam
                else None
            )
            res_c = cfg.reconstruct(
                backend.eps,
                x_model,
                guide,
                int(backend.null_label),
                settings,
                mask,
                encode=lambda v: backend.encode(v, quantize=settings.encode_quantize),
                decode=lambda z: backend.decode(z, quantize=settings.decode_quantize),
                counter=counter,
            )
            recon, recon_uncond = res_c.recon, res_c.recon_uncond
            n = len(chunk)
            rev_t = torch.full((n,), settings.ddim_steps - 1)
            start_index = rev_t.clone()
            trace = torch.zeros((n, 0))
        # Back to the input resolution: scores compare images at the classifier's size.
        recon = resize_images(recon, input_size)
        if recon_uncond is not None:
            recon_uncond = resize_images(recon_uncond, input_size)
        reference_kind = experiment.get("score_reference", "auto")
        if reference_kind == "auto":
            reference_kind = "uncond_recon" if recon_uncond is not None else "input"
        if reference_kind == "uncond_recon":
            if recon_uncond is None:
                raise ValueError(
                    f"experiments.{experiment['name']}: score_reference uncond_recon "
                    "needs uncond_aux"
                )
            reference = recon_uncond
        else:
            reference = x.cpu()
        scores = scorer(reference.to(device), recon.to(device))
        # Rows of the grid batch outside this shard were computed for bit-identical batching.
        chunk, x, preds, guide, recon = chunk[keep], x[keep], preds[keep], guide[keep], recon[keep]
        rev_t, start_index, trace = rev_t[keep], start_index[keep], trace[keep]
        scores = {k: v[keep] for k, v in scores.items()}
        if recon_uncond is not None:
            recon_uncond = recon_uncond[keep]
        batch = {
            "image_ids": np.array([r.image_id for r in chunk]),
            "labels": np.array([r.label for r in chunk]),
            "preds": preds.numpy(),
            "guide_labels": guide.numpy(),
            "rev_t": rev_t.numpy(),
            "start_index": start_index.numpy(),
            "psnr_trace": trace.numpy(),
            **{f"score_{k}": v.numpy() for k, v in scores.items()},
        }
        for key, value in batch.items():
            out_rows.setdefault(key, []).append(value)
        room = save_images - sum(len(t) for t in kept["x0"])
        if room > 0:
            kept["x0"].append(x[:room].cpu())
            kept["recon"].append(recon[:room])
            if recon_uncond is not None:
                kept["recon_uncond"].append(recon_uncond[:room])
        done += len(chunk)
        rate = done / (time.perf_counter() - start_time)
        log.info(
            "%d/%d images, %.2f images/s, ETA %.0f s",
            done,
            len(records),
            rate,
            (len(records) - done) / rate,
        )
    arrays = {k: np.concatenate(v) for k, v in out_rows.items()}
    for key, tensors in kept.items():
        arrays[key] = (
            torch.cat(tensors).to(torch.float16).numpy() if tensors else np.zeros((0,), np.float16)
        )
    arrays["nfe_per_image"] = np.array(counter.unet_rows / max(len(records), 1))
    # chunks are padded to aligned batches: keep the shard's own truncated images only
    cut = set(truncated)
    own = [r.path for r in records if r.path in cut]
    arrays["truncated_paths"] = np.array(own, dtype=str)
    log.info("shard %d: %d truncated images decoded as far as they go", shard, len(own))
    io.write_npz(out, **arrays)
    log.info(
        "wrote %s: %.1f UNet evaluations/image, %.1f s",
        out,
        counter.unet_rows / max(len(records), 1),
        time.perf_counter() - start_time,
    )
