"""Evaluation stages: score the baselines, compute every metric.

Stage functions (``<rule>_stage``) of the rules ``baseline_scores`` and ``evaluate`` (the shards'
scores are gathered by :mod:`diffguard.list_stages`); see :mod:`diffguard.pipeline` for the
convention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffguard import io
from diffguard.baselines import BASELINES
from diffguard.methods import METHODS
from diffguard.metrics import METRIC_KEYS, ood_metrics
from diffguard.runtime import load_trained_classifier

log = logging.getLogger("diffguard")


# --------------------------------------------------------------------------------- baselines
def _cached(npz: dict[str, np.ndarray]) -> Any:
    from diffguard.baselines import CachedOutputs

    def sampled(key: str) -> np.ndarray | None:
        """(S, N, K) logits of passes or members; absent or S = 0 -> None."""
        value = npz.get(key)
        return value if value is not None and value.shape[0] else None

    return CachedOutputs(
        logits=npz["logits"],
        features=npz["features"],
        labels=npz["labels"],
        mc_logits=sampled("mc_logits"),
        ensemble_logits=sampled("ensemble_logits"),
    )


def baseline_scores_stage(
    train_predictions: str | Path,
    test_predictions: Sequence[str | Path],
    classifier_weights: str | Path,
    baselines: Sequence[str],
    outputs: Sequence[str | Path],
) -> None:
    """Rule ``baseline_scores``: fit every baseline on the training outputs and score each
    evaluation set."""
    from diffguard.baselines import make_baseline

    classifier = load_trained_classifier(classifier_weights, torch.device("cpu"))
    weight = classifier.fc.weight.detach().numpy()
    bias = classifier.fc.bias.detach().numpy()
    train = _cached(io.read_npz(train_predictions))
    fitted = {name: make_baseline(name, weight=weight, bias=bias).fit(train) for name in baselines}
    for path_in, path_out in zip(test_predictions, outputs, strict=True):
        npz = io.read_npz(path_in)
        test = _cached(npz)
        frame = pd.DataFrame(
            {"image_id": npz["image_ids"], "label": npz["labels"], "pred": npz["preds"]}
        )
        for name, baseline in fitted.items():
            frame[name] = baseline.score(test)
        io.write_csv(path_out, frame)
        log.info("baseline scores for %d images -> %s", len(frame), path_out)


# -------------------------------------------------------------------------------- evaluation
def _metric_rows(
    id_scores: np.ndarray,
    ood: dict[str, np.ndarray],
    roles: dict[str, str],
    meta: dict[str, Any],
) -> list[dict[str, Any]]:
    """Metrics rows of one method: each OOD set, the near/far averages (when the run has both
    groups) and the average over the sets."""
    rows = []
    for name, scores in ood.items():
        rows.append(
            {**meta, "dataset": name, "role": roles[name], **ood_metrics(id_scores, scores)}
        )
    for group, members in (("near", "average_near"), ("far", "average_far")):
        sel = [r for r in rows if r["role"] == group]
        if sel and len(sel) < len(rows):
            rows.append(
                {
                    **meta,
                    "dataset": members,
                    "role": group,
                    **{m: float(np.mean([r[m] for r in sel])) for m in METRIC_KEYS},
                }
            )
    per_set = [r for r in rows if not r["dataset"].startswith("average")]
    rows.append(
        {
            **meta,
            "dataset": "average",
            "role": "all",
            **{m: float(np.mean([r[m] for r in per_set])) for m in METRIC_KEYS},
        }
    )
    return rows


def _baseline_rows(
    base: Mapping[str, pd.DataFrame],
    baselines: Sequence[str],
    id_set: str,
    ood_sets: dict[str, str],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in baselines:
        meta = {
            "method": BASELINES[name].label if name in BASELINES else name,
            "kind": "baseline",
            "experiment": "",
            "distance": "",
            "baseline": name,
            "rule": "",
            "seed": "",
        }
        rows += _metric_rows(
            base[id_set][name].to_numpy(),
            {d: base[d][name].to_numpy() for d in ood_sets},
            ood_sets,
            meta,
        )
    return rows


def _diffguard_rows(
    frames: Mapping[str, pd.DataFrame],
    names: tuple[str, str, int],
    distances: Sequence[str],
    id_set: str,
    ood_sets: dict[str, str],
) -> list[dict[str, Any]]:
    """Rows of one experiment and seed (``names = (experiment, method, seed)``), per distance."""
    exp, method, seed = names
    rows: list[dict[str, Any]] = []
    for dist in distances:
        col = f"score_{dist}"
        meta = {
            "method": f"DiffGuard ({METHODS[method].label}: {exp}, {dist})",
            "kind": "diffguard",
            "experiment": exp,
            "distance": dist,
            "baseline": "",
            "rule": "",
            "seed": seed,
        }
        rows += _metric_rows(
            frames[id_set][col].to_numpy(),
            {d: frames[d][col].to_numpy() for d in ood_sets},
            ood_sets,
            meta,
        )
    return rows


def combined_scores(
    frames: Mapping[str, pd.DataFrame],
    base: Mapping[str, pd.DataFrame],
    files: tuple[Callable[[str], str | Path], Mapping[str, str | Path]],
    combo: Mapping[str, Any],
    column: str,
    id_set: str,
    ood_sets: Sequence[str],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Combined scores of the ID set and of each OOD set for one combination ``combo``
    (``baseline``, ``rule``, optional ``params``) of the DiffGuard score ``column``.

    The ID test set is the reference every rule is fitted on (its own scores included), as in
    rule ``evaluate``; ``files`` = (dataset -> DiffGuard score file, dataset -> baseline file),
    named in alignment errors. Returns ``(combined ID scores, {OOD set: combined scores})``.
    """
    from diffguard.combine import align_by_image, combine

    exp_file, base_files = files
    bl, rule = combo["baseline"], combo["rule"]
    params = combo.get("params", {})
    # each image's baseline score next to its own DiffGuard score (joined on the image id;
    # the two tables' row orders are not a contract)
    paired = {
        d: align_by_image(
            frames[d],
            base[d],
            diffguard_file=exp_file(d),
            baseline_file=base_files[d],
        )[bl].to_numpy()
        for d in [id_set, *ood_sets]
    }
    dg_id = frames[id_set][column].to_numpy()
    bl_id = paired[id_set]
    combined = {
        d: combine(dg_id, frames[d][column].to_numpy(), bl_id, paired[d], rule, **params)
        for d in ood_sets
    }
    combined_id = combine(dg_id, dg_id, bl_id, bl_id, rule, **params)
    return combined_id, combined


def _combination_rows(
    frames: Mapping[str, pd.DataFrame],
    base: Mapping[str, pd.DataFrame],
    files: tuple[Callable[[str], str | Path], Mapping[str, str | Path]],
    names: tuple[str, str, int],
    combinations: Sequence[dict[str, Any]],
    headline_distance: str,
    id_set: str,
    ood_sets: dict[str, str],
) -> list[dict[str, Any]]:
    """Rows of each combination of one experiment and seed (``names = (experiment, method,
    seed)``) with a baseline; ``files`` = (dataset -> the experiment's score file, dataset ->
    the baseline file), named in alignment errors."""
    exp, method, seed = names
    rows: list[dict[str, Any]] = []
    for combo in combinations:
        if combo["experiment"] != exp:
            continue
        col = f"score_{headline_distance}"
        bl = combo["baseline"]
        combined_id, combined = combined_scores(
            frames, base, files, combo, col, id_set, list(ood_sets)
        )
        meta = {
            "method": (
                f"DiffGuard ({METHODS[method].label}: {exp})"
                f"+{BASELINES[bl].label if bl in BASELINES else bl} [{combo['rule']}]"
            ),
            "kind": "combined",
            "experiment": exp,
            "distance": headline_distance,
            "baseline": bl,
            "rule": combo["rule"],
            "seed": seed,
        }
        rows += _metric_rows(combined_id, combined, ood_sets, meta)
    return rows


def evaluate_stage(
    *,
    score_files: Sequence[str | Path],
    baseline_files: Sequence[str | Path],
    id_set: str,
    ood_sets: dict[str, str],
    experiments: dict[str, str],
    seeds: Sequence[int] | Mapping[str, Sequence[int]],
    distances: Sequence[str],
    baselines: Sequence[str],
    combinations: Sequence[dict[str, Any]],
    headline_distance: str,
    take_best: bool,
    run: str,
    out: str | Path,
) -> None:
    """Rule ``evaluate``: metrics of every baseline, DiffGuard experiment x distance x seed,
    and combination."""
    from diffguard.combine import IMAGE_KEY

    score_map = {
        Path(p).parent.parent.name + "/" + Path(p).parent.name + "/" + Path(p).stem: p
        for p in score_files
    }
    base_files = {Path(p).stem: p for p in baseline_files}
    # ids as text: "0001" and "1" are different images
    base = {d: pd.read_csv(p, dtype={IMAGE_KEY: str}) for d, p in base_files.items()}
    rows = _baseline_rows(base, baselines, id_set, ood_sets)
    for exp, method in experiments.items():
        # seeds per experiment (a mapping) or one list for all
        for seed in seeds[exp] if isinstance(seeds, Mapping) else seeds:

            def exp_file(dataset: str, exp: str = exp, seed: int = seed) -> str | Path:
                return score_map[f"{exp}/{dataset}/seed-{seed}"]

            frames = {
                d: pd.read_csv(exp_file(d), dtype={IMAGE_KEY: str}) for d in [id_set, *ood_sets]
            }
            names = (exp, method, seed)
            rows += _diffguard_rows(frames, names, distances, id_set, ood_sets)
            rows += _combination_rows(
                frames,
                base,
                (exp_file, base_files),
                names,
                combinations,
                headline_distance,
                id_set,
                ood_sets,
            )
    frame = pd.DataFrame(rows)
    if take_best:
        from diffguard.metrics import take_best_over

        frame = take_best_over(frame)
    frame.insert(0, "run", run)
    io.write_csv(out, frame)
    log.info("wrote %d metric rows to %s", len(frame), out)
