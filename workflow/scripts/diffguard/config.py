"""Experiment resolution: ``extends`` chains, deep merges and typed method settings."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from typing import Any

# Imported while the workflow is parsed: keep this module's imports to the standard library and
# torch-free package modules (tests/workflow/test_parse_imports.py checks it).
from diffguard.methods import METHODS, get_method

TRACE_IMAGES = 100
"""Default images per dataset of an ``inversion_trace_only`` experiment (schema default)."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent (the message names the key)."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_experiment(experiments: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Resolve ``experiments[name]`` through its ``extends`` chain (cycles are errors)."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"experiments: cycle in extends: {' -> '.join([*chain, current])}")
        if current not in experiments:
            where = f"experiments.{chain[-1]}.extends" if chain else "experiments"
            raise ConfigError(f"{where}: unknown experiment {current!r}")
        chain.append(current)
        current = experiments[current].get("extends")
    resolved: dict[str, Any] = {}
    for entry in reversed(chain):
        # `grid` generates sibling experiments (expand_grid) and is never inherited
        resolved = deep_merge(
            resolved,
            {k: v for k, v in experiments[entry].items() if k not in ("extends", "grid")},
        )
    if "method" not in resolved:
        raise ConfigError(f"experiments.{name}: no `method` (gdm or cfg) in it or its bases")
    method = resolved["method"]
    settings_cls = get_method(method, f"experiments.{name}.method").settings
    overrides = resolved.get(method, {})
    known = {f.name for f in dataclasses.fields(settings_cls)}
    if method == "gdm":
        known.add("crop_seed")  # resolved to cutouts_seed per run seed by method_settings
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(
            f"experiments.{name}.{method}: unknown key(s) {', '.join(hints)}; valid keys "
            f"(fields of {settings_cls.__module__}.{settings_cls.__name__}): {sorted(known)}"
        )
    _check_reference(resolved, settings_cls, name)
    if resolved.get("inversion_trace_only") and method != "gdm":
        raise ConfigError(
            f"experiments.{name}.inversion_trace_only: the inversion trace (Fig. 4) is a GDM "
            f"procedure; method is {method!r}"
        )
    resolved["name"] = name
    resolved.setdefault("oracle_labels", False)
    resolved.setdefault("inversion_trace_only", False)
    if resolved["inversion_trace_only"]:
        resolved.setdefault("trace_images", TRACE_IMAGES)
    return resolved


def _check_reference(resolved: dict[str, Any], settings_cls: type, name: str) -> None:
    """``score_reference: uncond_recon`` needs the method's unguided twin (``uncond_aux``)."""
    if resolved.get("score_reference") != "uncond_recon":
        return
    method = resolved["method"]
    defaults = {f.name: f.default for f in dataclasses.fields(settings_cls)}
    if not resolved.get(method, {}).get("uncond_aux", defaults.get("uncond_aux", False)):
        raise ConfigError(
            f"experiments.{name}.score_reference: uncond_recon needs the unguided twin, "
            f"set {method}.uncond_aux: true (or score_reference auto/input)"
        )


GRID_SEPARATOR = "__"
"""Separator between the base experiment and the swept value in generated names."""


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def expand_grid(experiments: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add the experiments that ``grid:`` keys generate; return the extended mapping.

    ``grid: {"cfg.cam_cut": [0.1, 0.2]}`` inside experiment ``ldm_main`` adds
    ``ldm_main__cam_cut0.1`` and ``ldm_main__cam_cut0.2``, each ``extends: ldm_main`` with that
    one value overridden. Each grid key is an independent one-dimensional sweep (Fig. 7 sweeps
    the CAM cut and the number of DDIM steps separately); a 2-D sweep is a grid on an
    experiment that already fixes the other value.
    """
    expanded = dict(experiments)
    for base, entry in experiments.items():
        grid = entry.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"experiments.{base}.grid: expected a mapping of key -> values")
        for dotted, values in grid.items():
            parts = str(dotted).split(".")
            if len(parts) < 2 or parts[0] not in METHODS or not all(parts):
                raise ConfigError(
                    f"experiments.{base}.grid: key {dotted!r} must be '<method>.<setting>' "
                    f"(e.g. 'cfg.cam_cut'), method one of {sorted(METHODS)}"
                )
            if not isinstance(values, list) or not values:
                raise ConfigError(f"experiments.{base}.grid.{dotted}: expected a non-empty list")
            for value in values:
                name = f"{base}{GRID_SEPARATOR}{parts[-1]}{_format_value(value)}"
                if name in expanded:
                    raise ConfigError(
                        f"experiments.{base}.grid.{dotted}: generated name {name!r} already exists"
                    )
                override: dict[str, Any] = {parts[-1]: value}
                for part in reversed(parts[:-1]):
                    override = {part: override}
                expanded[name] = {"extends": base, **override}
    return expanded


def sweep_spec(
    experiments: Mapping[str, Mapping[str, object]], base: str, setting: str
) -> dict[str, float]:
    """Experiment -> swept value of one ``grid:`` sweep (``setting`` = ``cfg.cam_cut``).

    Members are ``base`` itself (when it sets the value) and the experiments the grid
    generated from it (``<base>__<leaf><value>``, see :func:`expand_grid`).

    Raises:
        KeyError: ``base`` is not an experiment, or no member sets the value.
    """
    if base not in experiments:
        raise KeyError(f"report.figures.sweeps: experiment {base!r} does not exist")
    parts = setting.split(".")
    prefix = f"{base}{GRID_SEPARATOR}{parts[-1]}"
    points: dict[str, float] = {}
    for name, spec in experiments.items():
        if name != base and not name.startswith(prefix):
            continue
        value: object = spec
        for part in parts:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            points[name] = float(value)
    if len(points) < 2:
        raise KeyError(
            f"report.figures.sweeps: {base!r} has fewer than two experiments setting {setting!r} "
            f"(add `grid: {{{setting}: [...]}}` to experiments.{base})"
        )
    return points


def resolve_all(experiments: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every experiment (grid-generated ones included), resolved through ``extends``."""
    expanded = expand_grid(experiments)
    return {name: resolve_experiment(expanded, name) for name in expanded}


def experiment_seeds(config: dict[str, Any], experiment: dict[str, Any]) -> list[int]:
    """Seeds of a resolved experiment: its own ``seeds`` (inherited), else the global ones."""
    seeds = experiment.get("seeds", config.get("seeds", [0]))
    if not seeds:
        raise ConfigError(f"experiments.{experiment.get('name')}.seeds: empty list")
    return [int(s) for s in seeds]


RELEASED_CROP_SEED = 100


def resolve_crop_seed(rule: Any, seed: int, name: str = "?") -> int:
    """Seed of the GDM crop generator for run seed ``seed`` under ``gdm.crop_seed`` ``rule``.

    ``released`` (default): ``100 + seed``, so seed 0 (a single-seed run) uses the released
    ``LocalRandGenerator(seed=100)`` and seeds 0-3 use 100-103; ``run``: the run seed itself;
    an integer: that crop seed for every run seed (e.g. 100: the released crops in all runs).
    """
    if rule == "released":
        return RELEASED_CROP_SEED + seed
    if rule == "run":
        return seed
    if isinstance(rule, int) and not isinstance(rule, bool):
        return rule
    raise ConfigError(
        f"experiments.{name}.gdm.crop_seed: expected 'released', 'run' or an integer, got {rule!r}"
    )


def method_settings(experiment: dict[str, Any], seed: int | None = None) -> Any:
    """Typed settings of a resolved experiment; the seed drives the GDM crop generator."""
    method = experiment["method"]
    values = dict(experiment.get(method, {}))
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    crop_seed = values.pop("crop_seed", "released") if method == "gdm" else None
    if method == "gdm" and seed is not None and "cutouts_seed" not in values:
        values["cutouts_seed"] = resolve_crop_seed(crop_seed, seed, experiment["name"])
    try:
        return get_method(method, f"experiments.{experiment['name']}.method").settings(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"experiments.{experiment['name']}.{method}: {err}") from err


def dataset_size(config: dict[str, Any], dataset: str, available: int | None = None) -> int:
    """Number of images of ``dataset`` the run uses (its ``n``; ``available`` when n is null)."""
    spec = config["datasets"][dataset]
    n = spec.get("n")
    if n is None:
        if available is None:
            raise ConfigError(f"datasets.{dataset}.n must be set to plan shards for it")
        return available
    return int(n)


def shard_count(config: dict[str, Any], dataset: str, available: int | None = None) -> int:
    """Reconstruction jobs of ``dataset`` (``available``: its list length when ``n`` is null)."""
    return math.ceil(dataset_size(config, dataset, available) / int(config.get("shard_size", 500)))


SPLITS = ("test", "val")
"""``datasets.<name>.split``: the sets test metrics come from, or validation sets (tuning)."""


def dataset_split(config: dict[str, Any], dataset: str) -> str:
    """``datasets.<dataset>.split`` (no schema default, so job parameters stay as written:
    ``test``)."""
    split = config["datasets"][dataset].get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"datasets.{dataset}.split: {split!r} is not one of {list(SPLITS)}")
    return str(split)


def _split_datasets(config: dict[str, Any], split: str) -> tuple[list[str], list[str]]:
    """ID and OOD sets of one split, in config order."""
    mine = [k for k in config["datasets"] if dataset_split(config, k) == split]
    ids = [k for k in mine if config["datasets"][k]["role"] == "id"]
    oods = [k for k in mine if config["datasets"][k]["role"] in ("near", "far")]
    return ids, oods


def evaluation_datasets(config: dict[str, Any]) -> tuple[str, list[str]]:
    """Names of the ID test set and the OOD test sets, in config order (``split: val`` sets
    are left out: they only choose settings, see :func:`validation_datasets`)."""
    ids, oods = _split_datasets(config, "test")
    if len(ids) != 1:
        raise ConfigError(f"datasets: exactly one dataset must have role 'id', found {ids}")
    if not oods:
        raise ConfigError("datasets: at least one dataset must have role 'near' or 'far'")
    return ids[0], oods


def validation_datasets(config: dict[str, Any]) -> tuple[str, list[str]]:
    """Names of the ID validation set and the OOD validation sets (``split: val``).

    Raises:
        ConfigError: No validation sets, or not exactly one ID set among them.
    """
    ids, oods = _split_datasets(config, "val")
    if not ids and not oods:
        raise ConfigError(
            "datasets: tuning needs validation sets (`split: val`): one of role 'id' and at "
            "least one of role 'near' or 'far'"
        )
    if len(ids) != 1:
        raise ConfigError(
            f"datasets: exactly one `split: val` dataset must have role 'id', found {ids}"
        )
    if not oods:
        raise ConfigError("datasets: at least one `split: val` dataset must be near or far")
    return ids[0], oods


def experiment_precision(config: dict[str, Any], experiment: dict[str, Any]) -> str:
    """Precision a resolved experiment's diffusion network runs in on CUDA (never ``released``).

    Its ``precision``, else the top-level ``dtype`` fallback, else ``released``: the released
    code's setting for the source of ``diffusion_models.<model>`` (see
    :data:`diffguard.precision.RELEASED_PRECISION`). CPU runs use float32 whatever this says.
    """
    from diffguard.precision import PrecisionError, concrete_precision, select_precision

    name = experiment.get("name", "?")
    model = experiment.get("model")
    models = config.get("diffusion_models") or {}
    if model not in models:
        raise ConfigError(
            f"experiments.{name}.model: {model!r} is not a key of diffusion_models "
            f"({sorted(models)})"
        )
    source = models[model].get("source", "train")
    where = f"experiments.{name}.precision" if experiment.get("precision") else "dtype"
    try:
        return concrete_precision(
            select_precision(experiment.get("precision"), config.get("dtype")), source, where
        )
    except PrecisionError as err:
        raise ConfigError(str(err)) from err


# ------------------------------------------------------------------------------- image sizes
def crop_sizes(benchmark: Mapping[str, Any], input_size: int | None = None) -> tuple[int, int]:
    """``(input_size, pre_size)``: ``Resize(pre_size)`` then ``CenterCrop(input_size)``.

    ``input_size`` None means ``benchmark.image_size``; ``pre_size`` is ``benchmark.resize_size``
    (default the input size) but never below the crop, so a larger crop (the LDM's 256 on the
    ImageNet benchmark, 224 after Resize(256)) resizes to itself, as reconstruction loads it.
    """
    size = int(input_size or benchmark["image_size"])
    return size, max(int(benchmark.get("resize_size") or size), size)


def experiment_image_sizes(
    experiment: Mapping[str, Any],
    benchmark: Mapping[str, Any],
    classifier_spec: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """``(input_size, pre_size)`` an experiment's images are loaded at (its reconstruct jobs).

    ``input_size`` is the experiment's ``input_size``, else the classifier spec's, else
    ``benchmark.image_size``; ``pre_size`` as :func:`crop_sizes`.
    """
    size = experiment.get("input_size") or (classifier_spec or {}).get("input_size")
    return crop_sizes(benchmark, size)


# ----------------------------------------------------------------- classifier outputs (cache)
GUIDANCE_PREDICTIONS = ("experiment_input", "benchmark")
"""``experiments.<name>.guidance_predictions``: where the guidance labels are predicted."""


def guidance_input_size(config: dict[str, Any], experiment: dict[str, Any]) -> int | None:
    """Input size of the prediction cache an experiment's guidance labels come from.

    ``experiment_input`` (default, the released code: the LDM classifies its 256 crop) -> the
    experiment's ``input_size``, else ``classifier.input_size``, else ``benchmark.image_size``;
    ``benchmark`` -> the benchmark-size cache the baselines use. None means that cache
    (``predictions/<dataset>.npz``); an int, the cache at that size.
    """
    mode = experiment.get("guidance_predictions", "experiment_input")
    if mode not in GUIDANCE_PREDICTIONS:
        raise ConfigError(
            f"experiments.{experiment.get('name')}.guidance_predictions: {mode!r} is not one of "
            f"{list(GUIDANCE_PREDICTIONS)}"
        )
    if mode == "benchmark":
        return None
    size, _ = experiment_image_sizes(experiment, config["benchmark"], config["classifier"])
    return None if size == int(config["benchmark"]["image_size"]) else size


def ensemble_members(config: dict[str, Any]) -> list[dict[str, Any]]:
    """``classifier.ensemble_members`` as dicts, checked against the classifier and downloads.

    Each member is one of: a download key (a checkpoint file), ``{checkpoint: key, path: file
    inside that extracted archive}``, or ``{seed: s}`` (a trained classifier: the same training
    with another seed). Members share the classifier's ``arch`` and spec. ``deep_ensemble`` in
    ``baselines`` needs at least two members.
    """
    classifier = config["classifier"]
    source = classifier.get("source", "train")
    downloads = config.get("downloads", {})
    members = []
    for i, entry in enumerate(classifier.get("ensemble_members", []) or []):
        where = f"classifier.ensemble_members[{i}]"
        member = {"checkpoint": entry} if isinstance(entry, str) else dict(entry)
        if "seed" in member:
            if source != "train":
                raise ConfigError(
                    f"{where}: a {{seed}} member retrains the classifier, but classifier.source "
                    f"is {source!r}; give download keys of member checkpoints instead"
                )
        else:
            if source != "download":
                raise ConfigError(
                    f"{where}: a checkpoint member needs classifier.source 'download' (trained "
                    "classifiers take {seed: s} members)"
                )
            key = member.get("checkpoint")
            if key not in downloads:
                raise ConfigError(f"{where}.checkpoint: {key!r} is not a key of `downloads`")
            archive = bool(downloads[key].get("extract"))
            if archive != ("path" in member):
                raise ConfigError(
                    f"{where}: download {key!r} is "
                    + (
                        "an archive: give the member's `path` inside it"
                        if archive
                        else "a single file: `path` applies to archives (extract: true) only"
                    )
                )
        members.append(member)
    if "deep_ensemble" in config.get("baselines", []) and len(members) < 2:
        raise ConfigError(
            "baselines: deep_ensemble needs classifier.ensemble_members (at least two "
            f"independently trained classifiers of arch {classifier.get('arch')!r}), found "
            f"{len(members)}"
        )
    return members


def child_processes_import(package_root: str) -> None:
    """Put ``package_root`` first on ``PYTHONPATH`` so child processes import this package copy."""
    rest = [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_root
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *rest])
