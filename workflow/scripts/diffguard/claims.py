"""The paper's qualitative claims (a)-(e), checked on a run's TEST per-image scores.

Stage function of rule ``check_claims`` (config section ``claims:``, described in
``workflow/schemas/config.schema.yaml``). Every number comes from the per-image score tables
already on disk (``data/processed/<run>/scores/<exp>/<set>/seed-<s>.csv`` and
``baselines/<set>.csv``) of the test sets; AUROCs are :func:`diffguard.metrics.ood_metrics`
averaged over the claim's OOD sets, as the ``average_<role>`` rows of ``metrics.csv``:

(a) the guided regeneration changes OOD images more than ID images: the mean change (``1 -
    score`` for distances bounded in [0, 1], e.g. 1 - SSIM; ``-score``, the distance itself,
    otherwise) over the OOD sets (each set's mean, averaged) minus that over ID is > 0, and
    fewer than ``tie_fraction`` of the ID-OOD image pairs have equal change (a saturated score);
(b) DiffGuard alone beats each listed baseline on AUROC;
(c) DiffGuard + baseline (:func:`diffguard.evaluation.combined_scores`: the rule evaluate uses,
    fitted on the ID test set) beats the baseline alone;
(d) the experiment with the x0 blend beats the one without;
(e) oracle labels beat predicted labels.

One row per claim, compared pair and seed (the seeds an experiment ran; (d) and (e) the seeds
both experiments ran); a claim whose experiments or baseline the run does not have is one
``not run`` row saying why. Writes ``claims.{csv,md}`` and ``paper/tables/claims.tex`` through
:mod:`diffguard.tabular`; :func:`claims_paragraph` is the paper's text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffguard import io
from diffguard.metrics import ood_metrics
from diffguard.tabular import (
    LEFT,
    PLAIN,
    latex_escape,
    latex_float,
    latex_tabular,
    markdown_table,
    md_escape,
)

log = logging.getLogger(__name__)

BOUNDED = frozenset({"ssim", "dists", "fsim", "vif"})
"""Distances whose score is ``1 - d`` with ``d`` in [0, 1] (:mod:`diffguard.distances`)."""

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
COLUMNS = (
    "claim",
    "statement",
    "seed",
    "comparison",
    "value",
    "reference",
    "difference",
    "threshold",
    "status",
    "detail",
    "chosen_by",
)
"""Columns of ``claims.csv``: ``value`` is the side the claim says is larger (OOD change,
DiffGuard, the combination, with x0, oracle), ``reference`` the other; AUROC in percent."""

SET_LABELS = {"near": "near-OOD", "far": "far-OOD", "all": "OOD"}
CHOSEN_KEYS = ("distance", "combination_rule")
"""Keys a tune's ``chosen.json`` must hold for the claims."""


# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ClaimsSpec:
    """The ``claims:`` section with the tune's choices applied (see the schema)."""

    diffguard: str
    distance: str
    change_distance: str
    baselines: tuple[str, ...]
    combination: Mapping[str, Any] | None
    x0_ablation: Mapping[str, Any] | None
    oracle: Mapping[str, Any] | None
    sets: str
    tie_fraction: float
    chosen_by: str = "config"


def read_chosen(path: str | Path) -> dict[str, Any]:
    """A tune's ``chosen.json``; fails naming the file and a missing key."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in CHOSEN_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: no key(s) {missing} (a tune's chosen.json has {CHOSEN_KEYS})")
    if not isinstance(data["distance"], str):
        raise ValueError(f"{path}: 'distance' must be a distance name, got {data['distance']!r}")
    return data


def claims_spec(section: Mapping[str, Any], chosen_file: str | Path | None = None) -> ClaimsSpec:
    """The claims settings: ``section`` (schema defaults filled in), and with ``chosen_file``
    (``claims.tune``) the tune's distance and, when it chose one, its combination rule."""
    distance = str(section["distance"])
    combination = section.get("combination")
    chosen_by = "config"
    if chosen_file is not None:
        chosen = read_chosen(chosen_file)
        distance = chosen["distance"]
        if combination is not None and chosen["combination_rule"] is not None:
            combination = {**combination, "rule": chosen["combination_rule"]}
        chosen_by = f"tune {section.get('tune')}"
    return ClaimsSpec(
        diffguard=str(section["diffguard"]),
        distance=distance,
        change_distance=str(section["change_distance"]),
        baselines=tuple(section["baselines"]),
        combination=combination,
        x0_ablation=section.get("x0_ablation"),
        oracle=section.get("oracle"),
        sets=str(section["sets"]),
        tie_fraction=float(section["tie_fraction"]),
        chosen_by=chosen_by,
    )


# ------------------------------------------------------------------------------------ scores
def score_key(path: str | Path) -> tuple[str, str, int]:
    """``(experiment, dataset, seed)`` of ``.../scores/<exp>/<dataset>/seed-<s>.csv``."""
    p = Path(path)
    if not p.stem.startswith("seed-"):
        raise ValueError(f"{path}: not a per-image score table (.../<exp>/<set>/seed-<s>.csv)")
    return p.parent.parent.name, p.parent.name, int(p.stem.removeprefix("seed-"))


@dataclass
class Scores:
    """The per-image test scores a claims job reads, loaded on first use."""

    id_set: str
    ood_sets: tuple[str, ...]
    files: Mapping[tuple[str, str, int], Path]
    """(experiment, dataset, seed) -> DiffGuard score table."""
    baseline_files: Mapping[str, Path]
    """Dataset -> baseline score table."""
    _frames: dict[Path, pd.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def from_files(
        cls,
        score_files: Sequence[str | Path],
        baseline_files: Sequence[str | Path],
        id_set: str,
        ood_sets: Sequence[str],
    ) -> Scores:
        return cls(
            id_set,
            tuple(ood_sets),
            {score_key(p): Path(p) for p in score_files},
            {Path(p).stem: Path(p) for p in baseline_files},
        )

    def seeds(self, exp: str) -> list[int]:
        """Seeds with scores of ``exp`` (none: the experiment is not configured)."""
        return sorted({s for e, _, s in self.files if e == exp})

    def _read(self, path: Path) -> pd.DataFrame:
        if path not in self._frames:
            from diffguard.combine import IMAGE_KEY

            # ids as text: "0001" and "1" are different images
            self._frames[path] = pd.read_csv(path, dtype={IMAGE_KEY: str})
        return self._frames[path]

    def file(self, exp: str, dataset: str, seed: int) -> Path:
        try:
            return self.files[(exp, dataset, seed)]
        except KeyError:
            raise KeyError(
                f"no score table of {exp}/{dataset}/seed-{seed} among the inputs"
            ) from None

    def frame(self, exp: str, dataset: str, seed: int) -> pd.DataFrame:
        return self._read(self.file(exp, dataset, seed))

    def base_frame(self, dataset: str) -> pd.DataFrame:
        if dataset not in self.baseline_files:
            raise KeyError(f"no baseline score table of {dataset} among the inputs")
        return self._read(self.baseline_files[dataset])

    def column(self, exp: str, dataset: str, seed: int, distance: str) -> np.ndarray:
        """DiffGuard scores ``score_<distance>``; fails naming the file and its columns."""
        frame, col = self.frame(exp, dataset, seed), f"score_{distance}"
        if col not in frame:
            raise KeyError(
                f"{self.file(exp, dataset, seed)}: no column {col!r} (distance {distance!r} is "
                f"not among the run's `distances`; columns {list(frame)})"
            )
        return frame[col].to_numpy()

    def has_baseline(self, name: str) -> bool:
        return all(name in self.base_frame(d) for d in (self.id_set, *self.ood_sets))

    def baseline(self, name: str, dataset: str) -> np.ndarray:
        return self.base_frame(dataset)[name].to_numpy()

    def experiment_auroc(self, exp: str, seed: int, distance: str) -> float:
        """Mean AUROC over the claim's OOD sets of ``exp`` (one seed) at ``distance``."""
        return mean_auroc(
            self.column(exp, self.id_set, seed, distance),
            {d: self.column(exp, d, seed, distance) for d in self.ood_sets},
        )

    def baseline_auroc(self, name: str) -> float:
        """Mean AUROC over the claim's OOD sets of baseline ``name``."""
        return mean_auroc(
            self.baseline(name, self.id_set), {d: self.baseline(name, d) for d in self.ood_sets}
        )


# ------------------------------------------------------------------------------ computations
def change(scores: np.ndarray, distance: str) -> np.ndarray:
    """How much the regeneration changed each image: ``1 - score`` for bounded distances
    (1 - SSIM), ``-score`` (the distance itself) otherwise."""
    scores = np.asarray(scores, dtype=np.float64)
    return 1.0 - scores if distance in BOUNDED else -scores


def change_label(distance: str) -> str:
    return f"1 − {distance.upper()}" if distance in BOUNDED else f"{distance} distance"


def tied_pairs(id_values: np.ndarray, ood_values: np.ndarray) -> int:
    """Number of (ID, OOD) pairs with exactly equal values (AUROC counts them as half)."""
    ref = np.sort(np.asarray(id_values, dtype=np.float64))
    ood = np.asarray(ood_values, dtype=np.float64)
    equal = np.searchsorted(ref, ood, side="right") - np.searchsorted(ref, ood, side="left")
    return int(equal.sum())


def mean_auroc(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray]) -> float:
    """AUROC (%) averaged over the OOD sets, as the metrics' ``average_<role>`` rows."""
    return float(np.mean([ood_metrics(id_scores, s)["auroc"] for s in ood_scores.values()]))


def _row(claim: str, statement: str, **cells: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row.update(claim=claim, statement=statement, **cells)
    return row


def _compared(
    claim: str,
    statement: str,
    seed: int,
    comparison: str,
    values: tuple[float, float],
    detail: str = "",
) -> dict[str, Any]:
    """A claim row that holds when ``values[0] > values[1]``."""
    value, reference = values
    return _row(
        claim,
        statement,
        seed=seed,
        comparison=comparison,
        value=value,
        reference=reference,
        difference=value - reference,
        threshold="> 0",
        status=PASS if value > reference else FAIL,
        detail=detail,
    )


def _not_run(claim: str, statement: str, why: str) -> dict[str, Any]:
    return _row(claim, statement, status=NOT_RUN, detail=why)


def _missing(scores: Scores, *experiments: str) -> str:
    """Why experiments have no scores ("" when all have some)."""
    absent = [e for e in experiments if not scores.seeds(e)]
    if not absent:
        return ""
    return f"experiment(s) {', '.join(absent)} not configured (no test scores)"


def _missing_with_baseline(scores: Scores, exp: str, name: str) -> str:
    """Why a claim on ``exp`` and baseline ``name`` cannot be computed ('' when it can)."""
    why = _missing(scores, exp)
    if not why and not scores.has_baseline(name):
        why = f"baseline {name} not computed by this run (`baselines`)"
    return why


def _baseline_label(name: str) -> str:
    from diffguard.baselines import BASELINES

    return BASELINES[name].label if name in BASELINES else name


# ------------------------------------------------------------------------------------ claims
def change_claim(scores: Scores, spec: ClaimsSpec) -> list[dict[str, Any]]:
    """Claim (a), one row per seed of the DiffGuard experiment."""
    statement = "OOD images are changed more than ID images by the guided regeneration"
    exp, dist = spec.diffguard, spec.change_distance
    why = _missing(scores, exp)
    if why:
        return [_not_run("a", statement, why)]
    rows = []
    for seed in scores.seeds(exp):
        id_change = change(scores.column(exp, scores.id_set, seed, dist), dist)
        ood = {d: change(scores.column(exp, d, seed, dist), dist) for d in scores.ood_sets}
        ood_mean = float(np.mean([v.mean() for v in ood.values()]))
        id_mean = float(id_change.mean())
        tied = sum(tied_pairs(id_change, v) for v in ood.values())
        pairs = sum(id_change.size * v.size for v in ood.values())
        fraction = tied / pairs
        holds = ood_mean > id_mean and fraction < spec.tie_fraction
        rows.append(
            _row(
                "a",
                statement,
                seed=seed,
                comparison=f"mean {change_label(dist)} of {exp}: {SET_LABELS[spec.sets]} vs ID",
                value=ood_mean,
                reference=id_mean,
                difference=ood_mean - id_mean,
                threshold=f"> 0, tied pairs < {100 * spec.tie_fraction:g} %",
                status=PASS if holds else FAIL,
                detail=f"{100 * fraction:.2f} % of {pairs} ID-OOD pairs tied",
            )
        )
    return rows


def baseline_claims(scores: Scores, spec: ClaimsSpec) -> list[dict[str, Any]]:
    """Claim (b), one row per baseline and seed."""
    exp, dist, sets = spec.diffguard, spec.distance, SET_LABELS[spec.sets]
    if not spec.baselines:
        return [
            _not_run("b", "DiffGuard alone beats the logit baselines", "claims.baselines is empty")
        ]
    rows = []
    for name in spec.baselines:
        label = _baseline_label(name)
        statement = f"DiffGuard alone beats {label}"
        why = _missing_with_baseline(scores, exp, name)
        if why:
            rows.append(_not_run("b", statement, why))
            continue
        reference = scores.baseline_auroc(name)
        for seed in scores.seeds(exp):
            value = scores.experiment_auroc(exp, seed, dist)
            comparison = f"{sets} AUROC: {exp} ({dist}) vs {label}"
            rows.append(_compared("b", statement, seed, comparison, (value, reference)))
    return rows


def combination_claim(scores: Scores, spec: ClaimsSpec) -> list[dict[str, Any]]:
    """Claim (c), one row per seed of the DiffGuard experiment."""
    combo = spec.combination
    if combo is None:
        return [
            _not_run(
                "c", "DiffGuard + baseline beats the baseline alone", "claims.combination is null"
            )
        ]
    from diffguard.evaluation import combined_scores

    exp, dist, name, rule = spec.diffguard, spec.distance, combo["baseline"], combo["rule"]
    label = _baseline_label(name)
    statement = f"DiffGuard + {label} beats {label} alone"
    why = _missing_with_baseline(scores, exp, name)
    if why:
        return [_not_run("c", statement, why)]
    sets = [scores.id_set, *scores.ood_sets]
    reference = scores.baseline_auroc(name)
    rows = []
    for seed in scores.seeds(exp):
        frames = {d: scores.frame(exp, d, seed) for d in sets}
        base = {d: scores.base_frame(d) for d in sets}
        files = (lambda d, s=seed: scores.file(exp, d, s), scores.baseline_files)
        combined_id, combined = combined_scores(
            frames, base, files, combo, f"score_{dist}", scores.id_set, list(scores.ood_sets)
        )
        value = mean_auroc(combined_id, combined)
        comparison = f"{SET_LABELS[spec.sets]} AUROC: {exp} ({dist}) + {label} [{rule}] vs {label}"
        rows.append(_compared("c", statement, seed, comparison, (value, reference)))
    return rows


def pair_claim(
    scores: Scores,
    claim: tuple[str, str],
    pair: tuple[str, str] | None,
    distance: str,
    sets: str,
) -> list[dict[str, Any]]:
    """Claims (d) and (e): experiment ``pair[0]`` beats ``pair[1]`` on mean AUROC at
    ``distance``, one row per seed both ran (``pair`` None: not configured)."""
    letter, statement = claim
    if pair is None:
        return [_not_run(letter, statement, "not configured (null in `claims`)")]
    better, worse = pair
    why = _missing(scores, better, worse)
    common = sorted(set(scores.seeds(better)) & set(scores.seeds(worse)))
    if not why and not common:
        why = f"{better} and {worse} share no seed"
    if why:
        return [_not_run(letter, statement, why)]

    comparison = f"{SET_LABELS[sets]} AUROC ({distance}): {better} vs {worse}"
    return [
        _compared(
            letter,
            statement,
            s,
            comparison,
            (
                scores.experiment_auroc(better, s, distance),
                scores.experiment_auroc(worse, s, distance),
            ),
        )
        for s in common
    ]


def evaluate_claims(scores: Scores, spec: ClaimsSpec) -> pd.DataFrame:
    """Every claim's rows (:data:`COLUMNS`), in the order (a)-(e)."""
    x0, oracle = spec.x0_ablation, spec.oracle
    rows = change_claim(scores, spec) + baseline_claims(scores, spec)
    rows += combination_claim(scores, spec)
    rows += pair_claim(
        scores,
        ("d", "removing the x̂0 blend hurts"),
        None if x0 is None else (x0["with"], x0["without"]),
        "" if x0 is None else str(x0["distance"]),
        spec.sets,
    )
    rows += pair_claim(
        scores,
        ("e", "oracle labels beat predicted labels"),
        None if oracle is None else (oracle["oracle"], oracle["predicted"]),
        spec.distance,
        spec.sets,
    )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["chosen_by"] = spec.chosen_by
    return frame


# ---------------------------------------------------------------------------------- rendering
HEADER = ("Claim", "Seed", "Compared", "Measured", "Threshold", "Result")


def _number(value: Any, claim: str) -> str:
    decimals = 3 if claim == "a" else 2  # (a): mean change in [0, 1]; the rest AUROC in %
    return f"{float(value):.{decimals}f}"


def measured_text(row: Mapping[str, Any]) -> str:
    """``value vs reference (Δ +d)`` and the detail; the reason for a row not run."""
    if row["status"] == NOT_RUN:
        return str(row["detail"])
    claim = str(row["claim"])
    diff = float(row["difference"])
    text = (
        f"{_number(row['value'], claim)} vs {_number(row['reference'], claim)} "
        f"(Δ {'+' if diff >= 0 else '−'}{_number(abs(diff), claim)})"
    )
    return f"{text}; {row['detail']}" if row["detail"] else text


def _seed(value: Any) -> str:
    return "" if value is None or value == "" or pd.isna(value) else str(int(value))


def _cells(frame: pd.DataFrame) -> list[list[str]]:
    """Plain-text cells of every row (escape per format)."""
    return [
        [
            f"({row['claim']}) {row['statement']}",
            _seed(row["seed"]),
            str(row["comparison"]),
            measured_text(row),
            str(row["threshold"]),
            str(row["status"]),
        ]
        for _, row in frame.iterrows()
    ]


def settings_note(chosen_by: str) -> str:
    if chosen_by.startswith("tune "):
        return (
            f"distance and combination rule chosen on the validation sets ({chosen_by}); "
            "measured on the test sets"
        )
    return "distance and combination rule fixed in the `claims` config; measured on the test sets"


def claims_markdown(frame: pd.DataFrame, run: str) -> str:
    """The Markdown table (printed at the end of ``make run``)."""
    chosen = str(frame["chosen_by"].iloc[0]) if len(frame) else "config"
    rows = [[md_escape(c) for c in cells] for cells in _cells(frame)]
    lines = [f"Claims of run {md_escape(run)} ({md_escape(settings_note(chosen))})", ""]
    lines += markdown_table(HEADER, rows, [LEFT, PLAIN, LEFT, LEFT, PLAIN, PLAIN])
    return "\n".join(lines) + "\n"


def claims_latex(frame: pd.DataFrame) -> str:
    """The LaTeX table float (``tab:claims``)."""
    rows = [[latex_escape(c) for c in cells] for cells in _cells(frame)]
    header = [" & ".join(HEADER) + r" \\"]
    tabular = latex_tabular(
        r"p{0.2\linewidth}lp{0.24\linewidth}p{0.25\linewidth}p{0.1\linewidth}l",
        header,
        rows,
        groups=list(frame["claim"]),
    )
    chosen = str(frame["chosen_by"].iloc[0]) if len(frame) else "config"
    caption = (
        "The paper's qualitative claims checked on this run's test scores ("
        + latex_escape(settings_note(chosen))
        + "). AUROC in \\%, averaged over the OOD sets compared."
    )
    return latex_float(tabular, caption=caption, label="tab:claims", size=r"\footnotesize")


def claims_paragraph(frame: pd.DataFrame) -> str:
    """LaTeX paragraph: each claim's verdict with its measured numbers, failures said plainly."""
    if frame.empty:
        return "This run checks none of the paper's claims."
    counts = frame["status"].value_counts()
    n_pass, n_fail = int(counts.get(PASS, 0)), int(counts.get(FAIL, 0))
    n_not = int(counts.get(NOT_RUN, 0))
    chosen = str(frame["chosen_by"].iloc[0])
    text = [
        "Table~\\ref{tab:claims} checks the paper's qualitative claims on this run's test data "
        f"({latex_escape(settings_note(chosen))}): {n_pass} comparison(s) hold, {n_fail} "
        f"fail and {n_not} were not run."
    ]
    for (claim, statement), rows in frame.groupby(["claim", "statement"], sort=False):
        head = f"({claim}) {latex_escape(statement)}"
        if (rows["status"] == NOT_RUN).all():
            text.append(f"{head}: not run ({latex_escape(str(rows['detail'].iloc[0]))}).")
            continue
        measured = "; ".join(
            (f"seed {_seed(r['seed'])}: " if _seed(r["seed"]) else "")
            + latex_escape(measured_text(r))
            for _, r in rows.iterrows()
        )
        failed = [_seed(s) for s in rows.loc[rows["status"] == FAIL, "seed"]]
        if not failed:
            verdict = "holds"
        elif len(failed) == len(rows):
            verdict = "does not hold on this run"
        else:
            verdict = f"does not hold for seed(s) {', '.join(failed)}"
        text.append(f"{head}: {verdict} ({measured}).")
    if n_fail:
        text.append(
            "A claim that fails is reported as measured: this run does not reproduce it at "
            "its scale, and no setting was tuned on the test data to change that."
        )
    return " ".join(text)


def check_claims_stage(
    *,
    score_files: Sequence[str | Path],
    baseline_files: Sequence[str | Path],
    section: Mapping[str, Any],
    chosen_file: str | Path | None,
    id_set: str,
    ood_sets: Sequence[str],
    run: str,
    outputs: Mapping[str, str | Path],
) -> pd.DataFrame:
    """Rule ``check_claims``: every claim on the test scores -> ``outputs`` csv, md and tex."""
    spec = claims_spec(section, chosen_file)
    scores = Scores.from_files(score_files, baseline_files, id_set, ood_sets)
    frame = evaluate_claims(scores, spec)
    io.write_csv(outputs["csv"], frame)
    markdown = claims_markdown(frame, run)
    io.write_text(outputs["md"], markdown)
    io.write_text(outputs["tex"], claims_latex(frame))
    log.info("claims (%s):\n%s", spec.chosen_by, markdown)
    return frame


def read_claims(path: str | Path) -> pd.DataFrame:
    """``claims.csv`` as written: empty cells (rows not run) stay empty, numbers are floats."""
    frame = pd.read_csv(path, keep_default_na=False, dtype={"seed": str})
    for column in ("value", "reference", "difference"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
