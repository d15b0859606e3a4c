"""Stages of the rules that only read and write image lists and score tables.

``select_images`` runs once per dataset and ``gather_scores`` once per experiment, dataset and
seed (28 jobs in the default run), so this module imports neither torch nor torchvision: a
process that imports them starts about 3 s slower on a laptop CPU. See :mod:`diffguard.pipeline`
for the stage convention.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from diffguard import io
from diffguard.imglist import read_imglist, subsample, validate_labels, write_imglist

log = logging.getLogger("diffguard")


# ---------------------------------------------------------------------------------- image lists
def select_images_stage(
    imglist: str | Path, out: str | Path, spec: dict[str, Any], seed: int, num_classes: int
) -> None:
    """Checkpoint ``select_images``: fix the seeded subsample of one dataset; ID labels are
    checked against the classes."""
    records = read_imglist(imglist)
    n = spec.get("n")
    if n is not None and n > len(records):
        raise ValueError(
            f"{imglist}: datasets.*.n = {n} but the list holds only {len(records)} images"
        )
    chosen = subsample(records, n, seed)
    if spec["role"] in ("id", "train"):
        validate_labels(chosen, num_classes, imglist)
    write_imglist(out, chosen)
    log.info("%s: kept %d of %d images", out, len(chosen), len(records))


# -------------------------------------------------------------------------------------- scores
PER_IMAGE_COLUMNS = ("image_ids", "labels", "preds", "guide_labels", "rev_t", "start_index")


def gather_scores_stage(shards: Sequence[str | Path], imglist: str | Path, out: str | Path) -> None:
    """Rule ``gather_scores``: concatenate shard scores into one per-image CSV; every listed
    image must appear once.

    Columns: ``image_id``, ``path``, ``label``, ``pred`` (the classifier's prediction from the
    cache the experiment's guidance labels come from: at its input size by default, see
    ``experiments.<name>.guidance_predictions``; the baselines' CSVs carry the benchmark-size
    one), ``guide_label`` (the label that guided the regeneration: ``pred``, or the oracle
    label), ``rev_t``, ``start_index`` and one ``score_<distance>`` per distance.
    """
    frames = []
    for shard in shards:
        data = io.read_npz(shard)
        columns = {k: data[k] for k in PER_IMAGE_COLUMNS}
        columns.update({k: v for k, v in data.items() if k.startswith("score_")})
        frames.append(pd.DataFrame(columns))
    frame = pd.concat(frames, ignore_index=True).rename(
        columns={
            "image_ids": "image_id",
            "labels": "label",
            "preds": "pred",
            "guide_labels": "guide_label",
        }
    )
    records = read_imglist(imglist)
    expected = [r.image_id for r in records]
    if frame["image_id"].tolist() != expected:
        missing = sorted(set(expected) - set(frame["image_id"]))[:5]
        raise ValueError(
            f"shards {list(map(str, shards))} do not cover {imglist} exactly once "
            f"(first missing: {missing})"
        )
    frame.insert(1, "path", [r.path for r in records])
    io.write_csv(out, frame)
    log.info("gathered %d images from %d shards into %s", len(frame), len(shards), out)
