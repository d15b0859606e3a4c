"""Workflow stages: one function per Snakemake rule, called by the thin scripts in workflow/scripts.

Each stage takes plain paths and config values (never the ``snakemake`` object), logs what it
does, and writes its outputs atomically.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffguard import io
from diffguard.data import read_imglist, subsample, validate_labels, write_imglist
from diffguard.runtime import (  # noqa: F401  (re-exported for the rule scripts)
    crop_sizes,
    experiment_image_sizes,
    image_root,
    load_records_images,
    load_trained_classifier,
    load_truncated_images,
    resolve_device,
    setup_logging,
)

log = logging.getLogger("diffguard")


# --------------------------------------------------------------------------------------- data
def build_embedded_benchmark(benchmark: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    from diffguard.embedded import build_embedded_benchmark as build

    emb = benchmark.get("embedded", {})
    return build(
        out_dir,
        seed=int(benchmark.get("seed", 0)),
        n_near=emb.get("n_near"),
        n_far=int(emb.get("n_far", 300)),
        id_classes=emb.get("id_classes", (0, 1, 2, 3, 4, 5)),
    )


def select_images(
    imglist: str | Path, out: str | Path, spec: dict[str, Any], seed: int, num_classes: int
) -> None:
    """Fix the seeded subsample of one dataset; ID labels are checked against the classes."""
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


# ------------------------------------------------------------------------------------- models
def train_classifier_stage(
    imglist: str | Path,
    benchmark_json: str | Path,
    classifier_cfg: dict[str, Any],
    benchmark: dict[str, Any],
    out_dir: str | Path,
    train_log: str | Path,
) -> None:
    from diffguard.model_io import save_model
    from diffguard.training import evaluate_classifier, train_classifier

    records = read_imglist(imglist)
    images = load_records_images(
        records,
        image_root(benchmark_json),
        benchmark["image_size"],
        benchmark["channels"],
        benchmark.get("resize_size"),
    )
    labels = torch.tensor([r.label for r in records])
    spec = {
        "arch": classifier_cfg["arch"],
        "num_classes": benchmark["num_classes"],
        "in_channels": benchmark["channels"],
        "width": classifier_cfg.get("width", 32),
        "dropout": classifier_cfg.get("dropout", 0.0),
    }
    train = classifier_cfg.get("train", {})
    start = time.perf_counter()
    model = train_classifier(
        images,
        labels,
        spec,
        epochs=int(train.get("epochs", 20)),
        lr=float(train.get("lr", 1e-3)),
        seed=int(train.get("seed", 0)),
        log_csv=train_log,
        batch_size=int(train.get("batch_size", 64)),
    )
    log.info("classifier trained in %.1f s", time.perf_counter() - start)
    log.info("train accuracy %.4f", evaluate_classifier(model, images, labels))
    save_model(model, out_dir)


def train_diffusion_stage(
    imglist: str | Path,
    benchmark_json: str | Path,
    spec: dict[str, Any],
    benchmark: dict[str, Any],
    out_dir: str | Path,
    train_log: str | Path,
    done: str | Path,
) -> None:
    from diffguard.model_io import save_model
    from diffguard.training import small_unet_kwargs, train_diffusion

    if spec.get("source", "train") != "train":
        raise ValueError(f"train_diffusion only trains models with source 'train', got {spec}")
    records = read_imglist(imglist)
    images = load_records_images(
        records,
        image_root(benchmark_json),
        benchmark["image_size"],
        benchmark["channels"],
        benchmark.get("resize_size"),
    )
    conditional = bool(spec.get("conditional", False))
    labels = torch.tensor([r.label for r in records]) if conditional else None
    kwargs = small_unet_kwargs(
        benchmark["channels"], benchmark["image_size"], conditional, benchmark["num_classes"]
    )
    train = spec.get("train", {})
    start = time.perf_counter()
    model = train_diffusion(
        images * 2 - 1,
        labels,
        kwargs,
        steps=int(train.get("steps", 2000)),
        batch_size=int(train.get("batch_size", 64)),
        lr=float(train.get("lr", 2e-3)),
        seed=int(train.get("seed", 0)),
        class_dropout=float(train.get("class_dropout", 0.1)),
        log_csv=train_log,
    )
    log.info("diffusion model trained in %.1f s", time.perf_counter() - start)
    weights = Path(out_dir) / "weights"
    save_model(model, weights)
    # The marker names what was trained (no wall-clock time, so reruns write the same bytes).
    io.write_text(
        done,
        "".join(
            f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(weights)}\n"
            for path in sorted(weights.rglob("*"))
            if path.is_file()
        ),
    )


def prepare_ensemble_member(
    spec: dict[str, Any], checkpoint: str | Path, path: str | None, out_dir: str | Path
) -> None:
    """A deep-ensemble member's checkpoint -> ``out_dir/weights`` (as prepare_classifier).

    ``checkpoint`` is the member's file, or with ``path`` the extracted archive holding it at
    ``path`` (e.g. OpenOOD v1.5's ``<run>/s0/best.ckpt``).
    """
    from diffguard.preparation import prepare_classifier

    source = Path(checkpoint)
    if path is not None:
        member = source / path
        if not member.is_file():
            found = sorted(str(f.relative_to(source)) for f in source.rglob("*.ckpt"))[:20]
            raise FileNotFoundError(
                f"classifier.ensemble_members: {path!r} is not a file of the extracted archive "
                f"{source}; its .ckpt files: {found or 'none'}"
            )
        source = member
    prepare_classifier(spec, source, Path(out_dir))


# -------------------------------------------------------------------------------- predictions
@torch.no_grad()
def cache_predictions(
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
    """Logits, penultimate features, predictions (and MC-dropout / ensemble logits) of a dataset.

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
    model = load_trained_classifier(classifier_weights, device)
    members = [load_trained_classifier(w, device) for w in ensemble_weights]
    for path, member in zip(ensemble_weights, members, strict=True):
        if member.fc.out_features != model.fc.out_features:
            raise ValueError(
                f"ensemble member {path} has {member.fc.out_features} classes, the classifier "
                f"{classifier_weights} {model.fc.out_features}"
            )
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
    logits_t = torch.cat(logits)
    k = logits_t.shape[1]
    log.info("%s: %d truncated images decoded as far as they go", imglist, len(truncated))
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


PER_IMAGE_COLUMNS = ("image_ids", "labels", "preds", "guide_labels", "rev_t", "start_index")


def gather_scores(shards: Sequence[str | Path], imglist: str | Path, out: str | Path) -> None:
    """Concatenate shard scores into one per-image CSV; every listed image must appear once.

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
    """Fit every baseline on the training outputs and score each evaluation set."""
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
METRIC_COLUMNS = ("auroc", "aupr_in", "aupr_out", "fpr95_id_recall", "fpr95_ood_recall")
METHOD_NAMES = {"gdm": "GDM", "cfg": "CFG"}


def _metric_rows(
    id_scores: np.ndarray,
    ood: dict[str, np.ndarray],
    roles: dict[str, str],
    meta: dict[str, Any],
) -> list[dict[str, Any]]:
    from diffguard.metrics import ood_metrics

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
                    **{m: float(np.mean([r[m] for r in sel])) for m in METRIC_COLUMNS},
                }
            )
    per_set = [r for r in rows if not r["dataset"].startswith("average")]
    rows.append(
        {
            **meta,
            "dataset": "average",
            "role": "all",
            **{m: float(np.mean([r[m] for r in per_set])) for m in METRIC_COLUMNS},
        }
    )
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
    """Metrics of every baseline, DiffGuard experiment x distance x seed, and combination."""
    from diffguard.combine import IMAGE_KEY, align_by_image, combine

    score_map = {
        Path(p).parent.parent.name + "/" + Path(p).parent.name + "/" + Path(p).stem: p
        for p in score_files
    }
    base_files = {Path(p).stem: p for p in baseline_files}
    # ids as text: "0001" and "1" are different images
    base = {d: pd.read_csv(p, dtype={IMAGE_KEY: str}) for d, p in base_files.items()}
    rows: list[dict[str, Any]] = []
    for name in baselines:
        meta = {
            "method": name.upper() if len(name) <= 4 else name,
            "kind": "baseline",
            "experiment": "",
            "distance": "",
            "baseline": name,
            "rule": "",
            "seed": "",
        }
        meta["method"] = BASELINE_LABELS.get(name, name)
        rows += _metric_rows(
            base[id_set][name].to_numpy(),
            {d: base[d][name].to_numpy() for d in ood_sets},
            ood_sets,
            meta,
        )

    def exp_file(exp: str, dataset: str, seed: int) -> str | Path:
        return score_map[f"{exp}/{dataset}/seed-{seed}"]

    def exp_scores(exp: str, dataset: str, seed: int) -> pd.DataFrame:
        return pd.read_csv(exp_file(exp, dataset, seed), dtype={IMAGE_KEY: str})

    for exp, method in experiments.items():
        # seeds per experiment (a mapping) or one list for all
        for seed in seeds[exp] if isinstance(seeds, Mapping) else seeds:
            frames = {d: exp_scores(exp, d, seed) for d in [id_set, *ood_sets]}
            for dist in distances:
                col = f"score_{dist}"
                meta = {
                    "method": f"DiffGuard ({METHOD_NAMES[method]}: {exp}, {dist})",
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
            for combo in combinations:
                if combo["experiment"] != exp:
                    continue
                col = f"score_{headline_distance}"
                bl = combo["baseline"]
                params = combo.get("params", {})
                # each image's baseline score next to its own DiffGuard score (joined on the
                # image id; the two tables' row orders are not a contract)
                paired = {
                    d: align_by_image(
                        frames[d],
                        base[d],
                        diffguard_file=exp_file(exp, d, seed),
                        baseline_file=base_files[d],
                    )[bl].to_numpy()
                    for d in [id_set, *ood_sets]
                }
                dg_id = frames[id_set][col].to_numpy()
                bl_id = paired[id_set]
                combined = {
                    d: combine(
                        dg_id, frames[d][col].to_numpy(), bl_id, paired[d], combo["rule"], **params
                    )
                    for d in ood_sets
                }
                combined_id = combine(dg_id, dg_id, bl_id, bl_id, combo["rule"], **params)
                meta = {
                    "method": (
                        f"DiffGuard ({METHOD_NAMES[method]}: {exp})"
                        f"+{BASELINE_LABELS.get(bl, bl)} [{combo['rule']}]"
                    ),
                    "kind": "combined",
                    "experiment": exp,
                    "distance": headline_distance,
                    "baseline": bl,
                    "rule": combo["rule"],
                    "seed": seed,
                }
                rows += _metric_rows(combined_id, combined, ood_sets, meta)
    frame = pd.DataFrame(rows)
    if take_best:
        from diffguard.metrics import take_best_over

        frame = take_best_over(frame)
    frame.insert(0, "run", run)
    io.write_csv(out, frame)
    log.info("wrote %d metric rows to %s", len(frame), out)


BASELINE_LABELS = {
    "msp": "MSP",
    "mls": "MLS",
    "ebo": "EBO",
    "odin": "ODIN",
    "react": "ReAct",
    "knn": "KNN",
    "vim": "ViM",
    "mahalanobis": "Mahalanobis",
    "mc_dropout": "MC-Dropout",
    "deep_ensemble": "Deep Ensemble",
}
