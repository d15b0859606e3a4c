"""The classifier pass: cached logits, features and predictions of one dataset.

Stage function of the rules ``cache_predictions`` and ``cache_guidance_predictions`` (see
:mod:`diffguard.pipeline` for the naming convention); the preflight runs it on a few images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffguard import io
from diffguard.data import read_imglist
from diffguard.runtime import (
    experiment_image_sizes,
    image_root,
    load_records_images,
    load_trained_classifier,
    load_truncated_images,
    resolve_device,
)

log = logging.getLogger("diffguard")


def _load_classifiers(
    classifier_weights: str | Path, ensemble_weights: Sequence[str | Path], device: torch.device
) -> tuple[nn.Module, list[nn.Module]]:
    """The classifier and the ensemble members, which must have its number of classes."""
    model = load_trained_classifier(classifier_weights, device)
    members = [load_trained_classifier(w, device) for w in ensemble_weights]
    for path, member in zip(ensemble_weights, members, strict=True):
        if member.fc.out_features != model.fc.out_features:
            raise ValueError(
                f"ensemble member {path} has {member.fc.out_features} classes, the classifier "
                f"{classifier_weights} {model.fc.out_features}"
            )
    return model, members


@torch.no_grad()
def cache_predictions_stage(
    imglist: str | Path,
    benchmark_json: str | Path,
    classifier_weights: str | Path,
    benchmark: dict[str, Any],
    out: str | Path,
    mc_passes: int = 0,
    batch_size: int = 64,
    device_name: str = "cpu",
    mc_seed: int = 0,
    *,
    mc_dropout_p: float | None = None,
    ensemble_weights: Sequence[str | Path] = (),
    input_size: int | None = None,
) -> None:
    """Rules ``cache_predictions`` / ``cache_guidance_predictions``: logits, penultimate
    features, predictions (and MC-dropout / ensemble logits) of a dataset.

    Images are loaded at ``input_size`` (default ``benchmark.image_size``) after the
    ``benchmark.resize_size`` pre-resize, as reconstruction loads an experiment of that input
    size (:func:`diffguard.runtime.experiment_image_sizes`); ``preds`` is the classifier's
    arg-max at that size, the guidance label of the reconstruction jobs reading this file.

    MC-dropout (``mc_passes`` > 0): the classifier stays in eval mode (batch norm uses its
    running statistics) and each pass drops out the penultimate features, see
    :func:`diffguard.classifiers.mc_dropout_logits`; the rate is ``mc_dropout_p``, else the
    model's own dropout layer, else OpenOOD's 0.5. The masks come from torch's global RNG, seeded
    with ``mc_seed`` for each batch of images (within a fork, the caller's state is kept), so
    reruns agree. ``ensemble_weights``: classifier weight files (``model.safetensors`` of
    prepared members); their logits are stored as ``ensemble_logits`` ``(M, N, K)``.
    """
    from diffguard.classifiers import mc_dropout_logits, mc_dropout_rate

    device = resolve_device(device_name)
    model, members = _load_classifiers(classifier_weights, ensemble_weights, device)
    p = mc_dropout_rate(model, mc_dropout_p) if mc_passes else 0.0
    size, pre_size = experiment_image_sizes({"input_size": input_size}, benchmark)
    records = read_imglist(imglist)
    root = image_root(benchmark_json)
    logits, feats, mc, ens = [], [], [], []
    truncated: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        x = load_records_images(
            chunk,
            root,
            size,
            benchmark["channels"],
            pre_size,
            load_truncated=load_truncated_images(benchmark),
            truncated=truncated,
        ).to(device)
        f = model.features(x)
        logits.append(model.fc(f).cpu())
        feats.append(f.cpu())
        if mc_passes:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(mc_seed * 1_000_003 + start)
                mc.append(mc_dropout_logits(model, f, mc_passes, p).cpu())
        if members:
            ens.append(torch.stack([m(x).cpu() for m in members], dim=0))
    log.info("%s: %d truncated images decoded as far as they go", imglist, len(truncated))
    _write_cache(out, records, (logits, feats, mc, ens), size, truncated)
    log.info(
        "cached predictions of %d images at %d px (%d MC passes at p=%.2f, %d ensemble members) "
        "to %s",
        len(records),
        size,
        mc_passes,
        p,
        len(members),
        out,
    )


def _write_cache(
    out: str | Path,
    records: Sequence[Any],
    outputs: tuple[list[torch.Tensor], ...],
    size: int,
    truncated: list[str],
) -> None:
    """Write the prediction cache; ``outputs`` = per-batch (logits, features, MC-dropout
    logits, ensemble logits); no passes or members: empty ``(0, N, K)`` arrays."""
    logits, feats, mc, ens = outputs
    logits_t = torch.cat(logits)
    k = logits_t.shape[1]
    io.write_npz(
        out,
        image_ids=np.array([r.image_id for r in records]),
        paths=np.array([r.path for r in records]),
        labels=np.array([r.label for r in records]),
        logits=logits_t.numpy(),
        features=torch.cat(feats).numpy(),
        preds=logits_t.argmax(1).numpy(),
        input_size=np.array(size),
        truncated_paths=np.array(truncated, dtype=str),
        mc_logits=torch.cat(mc, dim=1).numpy()
        if mc
        else np.zeros((0, len(records), k), np.float32),
        ensemble_logits=torch.cat(ens, dim=1).numpy()
        if ens
        else np.zeros((0, len(records), k), np.float32),
    )
