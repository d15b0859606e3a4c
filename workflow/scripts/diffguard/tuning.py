"""The ``tune:`` stage: settings chosen on validation sets only, then applied to a test experiment.

A tune ``<name>`` sweeps the cartesian product of its ``grid`` (dotted experiment keys) over the
experiment ``<experiment>`` as generated experiments ``<experiment>__tune<NN>`` that run on the
``split: val`` datasets only. The tune job reads their per-image validation scores (and the
validation baseline scores, to choose a combination rule) and writes ``sweep.csv`` (every grid
point x distance) and ``chosen.json``; the tuned experiment and every experiment extending it
read ``chosen.json`` as an input of their reconstruction jobs and run with its settings.

The parsing half (stdlib only) runs while the workflow is parsed
(tests/workflow/test_parse_imports.py); the stage half imports pandas and the metrics lazily.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffguard.config import GRID_SEPARATOR, ConfigError

log = logging.getLogger(__name__)

TUNE_TAG = "tune"
"""Generated grid experiments are ``<experiment>__tune<NN>`` (NN = grid order, from 00)."""
OBJECTIVES = ("near", "far", "all")
DEFAULT_OBJECTIVE = "near"


@dataclass(frozen=True)
class Tune:
    """One validated ``tune.<name>`` entry."""

    name: str
    experiment: str
    keys: tuple[str, ...]
    points: tuple[tuple[Any, ...], ...]
    distances: tuple[str, ...]
    objective: str
    baseline: str | None
    rules: tuple[str, ...]

    def point_experiment(self, index: int) -> str:
        """Name of the generated experiment of grid point ``index``."""
        return f"{self.experiment}{GRID_SEPARATOR}{TUNE_TAG}{index:02d}"

    @property
    def point_experiments(self) -> list[str]:
        return [self.point_experiment(i) for i in range(len(self.points))]

    def settings(self, index: int) -> dict[str, Any]:
        return dict(zip(self.keys, self.points[index], strict=True))


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``target[a][b] = value`` for ``dotted = "a.b"`` (creating the inner mappings)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = copy.deepcopy(value)


def parse_tunes(config: Mapping[str, Any]) -> dict[str, Tune]:
    """``config["tune"]`` as :class:`Tune` entries (structure checks; see :func:`check_tune`)."""
    tunes: dict[str, Tune] = {}
    for name, spec in (config.get("tune") or {}).items():
        where = f"tune.{name}"
        experiment = spec.get("experiment")
        if experiment not in config["experiments"]:
            raise ConfigError(
                f"{where}.experiment: {experiment!r} is not an experiment "
                f"({sorted(config['experiments'])})"
            )
        grid = spec.get("grid") or {}
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError(f"{where}.grid: expected a mapping of dotted key -> values")
        for key, values in grid.items():
            parts = str(key).split(".")
            if not all(parts) or key in ("method", "model", "extends", "grid"):
                raise ConfigError(f"{where}.grid: {key!r} is not a tunable experiment key")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.grid.{key}: expected a non-empty list of values")
        distances = spec.get("distances") or config.get("distances") or []
        unknown = [d for d in distances if d not in config.get("distances", [])]
        if unknown:
            raise ConfigError(
                f"{where}.distances: {unknown} are not in the top-level `distances` "
                f"{config.get('distances')} (the score tables hold those only)"
            )
        objective = spec.get("objective", DEFAULT_OBJECTIVE)
        if objective not in OBJECTIVES:
            raise ConfigError(f"{where}.objective: {objective!r} is not one of {OBJECTIVES}")
        combo = spec.get("combination") or {}
        baseline = combo.get("baseline")
        if baseline is not None and baseline not in config.get("baselines", []):
            raise ConfigError(
                f"{where}.combination.baseline: {baseline!r} is not in `baselines` "
                f"{config.get('baselines')}"
            )
        tunes[name] = Tune(
            name=name,
            experiment=str(experiment),
            keys=tuple(str(k) for k in grid),
            points=tuple(itertools.product(*grid.values())),
            distances=tuple(distances),
            objective=str(objective),
            baseline=baseline,
            rules=tuple(combo.get("rules", ())),
        )
    return tunes


def tune_experiments(config: Mapping[str, Any], tunes: Mapping[str, Tune]) -> dict[str, dict]:
    """The generated (unresolved) grid experiments of every tune, each extending its
    experiment with one grid point's values."""
    generated: dict[str, dict[str, Any]] = {}
    for tune in tunes.values():
        for index in range(len(tune.points)):
            name = tune.point_experiment(index)
            if name in config["experiments"] or name in generated:
                raise ConfigError(f"tune.{tune.name}: generated name {name!r} already exists")
            entry: dict[str, Any] = {"extends": tune.experiment}
            for key, value in tune.settings(index).items():
                set_dotted(entry, key, value)
            generated[name] = entry
    return generated


def check_objective(tune: Tune, roles: Mapping[str, str]) -> list[str]:
    """The validation OOD sets the objective averages over (``roles``: set -> near/far).

    Raises:
        ConfigError: No validation OOD set of the objective's role.
    """
    sets = [d for d, role in roles.items() if tune.objective in ("all", role)]
    if not sets:
        raise ConfigError(
            f"tune.{tune.name}.objective: {tune.objective!r} averages over no validation OOD "
            f"set (val OOD sets and roles: {dict(roles)})"
        )
    return sets


def descends_from(experiments: Mapping[str, Mapping[str, Any]], name: str, base: str) -> bool:
    """Whether ``name`` is ``base`` or extends it (through its unresolved ``extends`` chain)."""
    current: str | None = name
    while current is not None:
        if current == base:
            return True
        current = experiments.get(current, {}).get("extends")
    return False


def own_keys(experiments: Mapping[str, Mapping[str, Any]], name: str, base: str) -> set[str]:
    """Dotted keys set on the chain from ``name`` down to (not including) ``base``: an
    experiment extending the tuned one keeps what it sets itself, as ``extends`` does."""
    keys: set[str] = set()
    current: str | None = name
    while current is not None and current != base:
        stack = [("", experiments[current])]
        while stack:
            prefix, block = stack.pop()
            for key, value in block.items():
                dotted = f"{prefix}{key}"
                keys.add(dotted)
                if isinstance(value, Mapping):
                    stack.append((f"{dotted}.", value))
        current = experiments[current].get("extends")
    return keys


# ------------------------------------------------------------------- applying the choice
def with_choices(
    experiments: Mapping[str, Any], choices: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The config's ``experiments`` with each tune's chosen settings written into its tuned
    experiment (experiments extending it inherit them unless they set a key themselves, as
    their jobs do): what the paper's switch table reports as "this run"."""
    out = copy.deepcopy(dict(experiments))
    for chosen in choices:
        name = chosen["experiment"]
        if name not in out:
            raise ValueError(f"chosen.json of tune {chosen.get('tune')}: no experiment {name!r}")
        for key, value in chosen["settings"].items():
            set_dotted(out[name], key, value)
    return out


def apply_chosen(experiment: dict[str, Any], chosen_file: str | Path | None) -> dict[str, Any]:
    """``experiment`` with ``chosen.json``'s settings applied (the keys listed in its
    ``tuned_keys``; none: unchanged). Reconstruction jobs call it before running."""
    experiment = copy.deepcopy(experiment)
    apply = experiment.pop("tuned_keys", None)
    if chosen_file is None or apply is None:
        return experiment
    chosen = json.loads(Path(chosen_file).read_text())
    for key in apply:
        if key not in chosen["settings"]:
            raise ValueError(f"{chosen_file}: settings lack {key!r} (has {chosen['settings']})")
        set_dotted(experiment, key, chosen["settings"][key])
    log.info(
        "experiment %s: applied tune %s settings %s",
        experiment.get("name"),
        chosen.get("tune"),
        {k: chosen["settings"][k] for k in apply},
    )
    return experiment


# --------------------------------------------------------------------------------- stage
def _auroc(id_scores: Any, ood_scores: Any) -> float:
    from diffguard.metrics import ood_metrics

    return float(ood_metrics(id_scores, ood_scores)["auroc"])


def _combined_auroc(
    frames: Mapping[str, Any],
    base: Mapping[str, Any],
    files: tuple[Any, Any],
    col: str,
    rule: str,
    baseline: str,
    id_set: str,
    oods: Sequence[str],
) -> dict[str, float]:
    """Val AUROC per OOD set of one combination, computed by the evaluate rule's own
    :func:`diffguard.evaluation.combined_scores` (same image alignment, same ID reference)."""
    from diffguard.evaluation import combined_scores

    score_files, base_files = files
    combo = {"baseline": baseline, "rule": rule}
    combined_id, combined = combined_scores(
        frames, base, (score_files.__getitem__, base_files), combo, col, id_set, oods
    )
    return {d: _auroc(combined_id, combined[d]) for d in oods}


def sweep_rows(
    tune: Tune,
    score_files: Mapping[tuple[int, str], str | Path],
    id_set: str,
    roles: Mapping[str, str],
) -> list[dict[str, Any]]:
    """One row per grid point x distance: settings, val AUROC per val OOD set, objective."""
    import numpy as np
    import pandas as pd

    from diffguard.combine import IMAGE_KEY

    objective_sets = check_objective(tune, roles)
    rows = []
    for index in range(len(tune.points)):
        frames = {
            d: pd.read_csv(score_files[(index, d)], dtype={IMAGE_KEY: str})
            for d in [id_set, *roles]
        }
        for dist in tune.distances:
            col = f"score_{dist}"
            aurocs = {d: _auroc(frames[id_set][col], frames[d][col]) for d in roles}
            rows.append(
                {
                    "point": index,
                    "experiment": tune.point_experiment(index),
                    **tune.settings(index),
                    "distance": dist,
                    **{f"auroc_{d}": a for d, a in aurocs.items()},
                    "objective": float(np.mean([aurocs[d] for d in objective_sets])),
                }
            )
    return rows


def choose_rule(
    tune: Tune,
    best: Mapping[str, Any],
    score_files: Mapping[tuple[int, str], str | Path],
    baseline_files: Mapping[str, str | Path],
    id_set: str,
    roles: Mapping[str, str],
) -> tuple[str | None, dict[str, float]]:
    """The combination rule with the best val objective at the chosen point (first on ties)."""
    if tune.baseline is None or not tune.rules:
        return None, {}
    import numpy as np
    import pandas as pd

    from diffguard.combine import IMAGE_KEY

    sets = [id_set, *roles]
    point = int(best["point"])
    files = ({d: score_files[(point, d)] for d in sets}, baseline_files)
    frames = {d: pd.read_csv(files[0][d], dtype={IMAGE_KEY: str}) for d in sets}
    base = {d: pd.read_csv(baseline_files[d], dtype={IMAGE_KEY: str}) for d in sets}
    objective_sets = check_objective(tune, roles)
    values: dict[str, float] = {}
    for rule in tune.rules:
        col = f"score_{best['distance']}"
        aurocs = _combined_auroc(frames, base, files, col, rule, tune.baseline, id_set, list(roles))
        values[rule] = float(np.mean([aurocs[d] for d in objective_sets]))
    chosen = max(tune.rules, key=lambda r: (values[r], -tune.rules.index(r)))
    return chosen, values


def tune_from_params(params: Mapping[str, Any]) -> Tune:
    """A :class:`Tune` from the job parameter :func:`tune_params` wrote."""
    return Tune(
        name=params["name"],
        experiment=params["experiment"],
        keys=tuple(params["keys"]),
        points=tuple(tuple(p) for p in params["points"]),
        distances=tuple(params["distances"]),
        objective=params["objective"],
        baseline=params["baseline"],
        rules=tuple(params["rules"]),
    )


def tune_params(tune: Tune) -> dict[str, Any]:
    """The tune as a plain job parameter (lists, no dataclass)."""
    return {
        "name": tune.name,
        "experiment": tune.experiment,
        "keys": list(tune.keys),
        "points": [list(p) for p in tune.points],
        "distances": list(tune.distances),
        "objective": tune.objective,
        "baseline": tune.baseline,
        "rules": list(tune.rules),
    }


def tune_stage(
    *,
    tune: Tune,
    score_files: Sequence[str | Path],
    baseline_files: Sequence[str | Path],
    id_set: str,
    roles: Mapping[str, str],
    sweep_out: str | Path,
    chosen_out: str | Path,
) -> dict[str, Any]:
    """Rule ``tune``: the sweep over the grid and distances on validation sets, and the choice
    (best objective; ties: the first in grid order, then distance order)."""
    import pandas as pd

    from diffguard import io

    index_of = {name: i for i, name in enumerate(tune.point_experiments)}
    by_key: dict[tuple[int, str], str | Path] = {}
    for path in score_files:
        dataset, exp = Path(path).parent.name, Path(path).parent.parent.name
        if exp not in index_of or dataset not in [id_set, *roles]:
            raise ValueError(f"{path}: not a validation score table of tune {tune.name!r}")
        by_key.setdefault((index_of[exp], dataset), path)  # first seed listed
    rows = sweep_rows(tune, by_key, id_set, roles)
    best = rows[0]
    for row in rows[1:]:
        if row["objective"] > best["objective"]:
            best = row
    rule, rule_values = choose_rule(
        tune, best, by_key, {Path(p).stem: p for p in baseline_files}, id_set, roles
    )
    chosen = {
        "tune": tune.name,
        "experiment": tune.experiment,
        "settings": tune.settings(int(best["point"])),
        "distance": best["distance"],
        "combination_rule": rule,
        "objective": best["objective"],
        "val_sets": [id_set, *roles],
    }
    if rule is not None:
        chosen["combination_baseline"] = tune.baseline
        chosen["combination_objectives"] = rule_values
    io.write_csv(sweep_out, pd.DataFrame(rows))
    io.write_json(chosen_out, chosen)
    log.info("tune %s: chose %s (objective %.2f)", tune.name, chosen["settings"], best["objective"])
    return chosen
