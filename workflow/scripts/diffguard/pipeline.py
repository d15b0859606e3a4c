"""Workflow stages of the data and the models; the convention every stage function follows.

A rule's script in ``workflow/scripts`` is a thin wrapper: it sets up logging and calls one
function, named ``<rule>_stage`` after the rule it serves (``evaluate`` -> ``evaluate_stage``),
which takes plain paths and config values (never the ``snakemake`` object), logs what it does
and writes its outputs atomically. The stages live beside what they do:

- data and models: here (``build_embedded_benchmark``, ``train_classifier``,
  ``train_diffusion``, ``prepare_ensemble_member``) and :mod:`diffguard.preparation`
  (``prepare_classifier``, ``prepare_diffusion_model``);
- lists and score tables, without torch: :mod:`diffguard.list_stages` (``select_images``,
  ``gather_scores``);
- the classifier pass: :mod:`diffguard.predictions` (``cache_predictions``);
- scores and metrics: :mod:`diffguard.evaluation` (``baseline_scores``, ``evaluate``);
- tables: :mod:`diffguard.tables` (``render_tables``), :mod:`diffguard.paper_tables`
  (``render_paper_tables``), :mod:`diffguard.reproduction` (``reproduction_check``,
  ``reproduction_gate``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from diffguard import io
from diffguard.data import (
    image_root,
    load_records_images,
    read_imglist,
)

log = logging.getLogger("diffguard")


# --------------------------------------------------------------------------------------- data
def build_embedded_benchmark_stage(
    benchmark: dict[str, Any],
    out_dir: str | Path,
    lists: Iterable[str] = (),
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Rule ``build_embedded_benchmark``: write the benchmark of ``benchmark.kind``.

    ``embedded``: the offline sklearn-digits benchmark of ``benchmark.embedded`` (writes all its
    lists). ``mnist``: the lists named in ``lists``, cut from the extracted downloads in
    ``sources`` (role -> folder) with the settings of ``benchmark.mnist``.
    """
    if benchmark.get("kind") == "mnist":
        from diffguard.mnist_benchmark import build_mnist_benchmark

        return build_mnist_benchmark(
            out_dir,
            lists,
            sources or {},
            benchmark.get("mnist", {}),
            seed=int(benchmark.get("seed", 0)),
        )
    from diffguard.embedded import build_embedded_benchmark as build

    emb = benchmark.get("embedded", {})
    return build(
        out_dir,
        seed=int(benchmark.get("seed", 0)),
        n_near=emb.get("n_near"),
        n_far=int(emb.get("n_far", 300)),
        id_classes=emb.get("id_classes", (0, 1, 2, 3, 4, 5)),
        val_fraction=emb.get("val_fraction"),
    )


# ------------------------------------------------------------------------------------- models
def _training_images(
    imglist: str | Path, benchmark_json: str | Path, benchmark: dict[str, Any]
) -> tuple[list[Any], torch.Tensor]:
    """The records of a training list and their images at the benchmark's size."""
    records = read_imglist(imglist)
    images = load_records_images(
        records,
        image_root(benchmark_json),
        benchmark["image_size"],
        benchmark["channels"],
        benchmark.get("resize_size"),
    )
    return records, images


def train_classifier_stage(
    imglist: str | Path,
    benchmark_json: str | Path,
    classifier_cfg: dict[str, Any],
    benchmark: dict[str, Any],
    out_dir: str | Path,
    train_log: str | Path,
) -> None:
    """Rule ``train_classifier``: train the protected classifier; log its train accuracy."""
    from diffguard.model_io import save_model
    from diffguard.training import evaluate_classifier, train_classifier

    records, images = _training_images(imglist, benchmark_json, benchmark)
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
    """Rule ``train_diffusion``: train a small UNet; ``done`` lists the weights' hashes."""
    from diffguard.model_io import save_model
    from diffguard.training import small_unet_kwargs, train_diffusion

    if spec.get("source", "train") != "train":
        raise ValueError(f"train_diffusion only trains models with source 'train', got {spec}")
    records, images = _training_images(imglist, benchmark_json, benchmark)
    conditional = bool(spec.get("conditional", False))
    labels = torch.tensor([r.label for r in records]) if conditional else None
    kwargs = small_unet_kwargs(
        benchmark["channels"],
        benchmark["image_size"],
        conditional,
        benchmark["num_classes"],
        spec.get("unet"),
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
        max_timestep=train.get("max_timestep"),
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


def prepare_ensemble_member_stage(
    spec: dict[str, Any],
    checkpoint: str | Path,
    path: str | None,
    out_dir: str | Path,
    where: str = "classifier.ensemble_members",
) -> None:
    """Rules ``prepare_ensemble_member`` and ``prepare_classifier``: a checkpoint ->
    ``out_dir/weights``.

    ``checkpoint`` is the file, or with ``path`` the extracted archive holding it at ``path``
    (e.g. OpenOOD v1.5's ``<run>/s0/best.ckpt``, ccexam's ``ccexam/weights/mnist.pth``).
    """
    from diffguard.preparation import prepare_classifier_stage

    source = Path(checkpoint)
    if path is not None:
        member = source / path
        if not member.is_file():
            found = sorted(str(f.relative_to(source)) for f in source.rglob("*.ckpt"))[:20]
            raise FileNotFoundError(
                f"{where}: {path!r} is not a file of the extracted archive "
                f"{source}; its .ckpt files: {found or 'none'}"
            )
        source = member
    prepare_classifier_stage(spec, source, Path(out_dir))
