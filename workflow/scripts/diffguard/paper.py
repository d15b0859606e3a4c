"""``paper/numbers.tex``: every number and run-specific phrase the paper prints, as LaTeX macros.

``paper/ms.tex`` never types a result: it uses the macros defined here (all of them are always
defined, with ``--`` where a run has no such number), ``\\input``\\ s the generated tables and
includes the figures from ``\\figdir``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from diffguard.io import write_text
from diffguard.settings import CfgSettings, GdmSettings
from diffguard.tables import NO_PUBLISHED_NOTE, latex_escape, read_metrics
from diffguard.targets import FIGURE, FIGURES

log = logging.getLogger(__name__)

MISSING = "--"
CONFIG_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

# The released code's value of a top-level switch, where the workflow's default (the schema's)
# differs: the released evaluation takes the best distance per OOD set and metric.
RELEASED_TOP_LEVEL: Mapping[str, Any] = {"take_best_over_distances": True}


@dataclass(frozen=True)
class Switch:
    """A released-code versus paper-text difference that is a configuration switch.

    ``describe`` turns the released code's settings (the GDM/CFG dataclass defaults, which are
    the released settings, or :data:`RELEASED_TOP_LEVEL`) into the table's "released code"
    cell, so a changed default changes the paper text.
    """

    section: str  # gdm, cfg, or "" for a top-level config key
    key: str
    describe: Callable[[Any], str]
    paper: str


def _early_stop(gdm: GdmSettings) -> str:
    names = {"psnr": "PSNR {} (code units)", "dists": "1$-$DISTS {}", "lpips": "$-$LPIPS {}"}
    pairs = zip(gdm.early_stop_metrics, gdm.early_stop_thresholds, strict=True)
    return " or ".join(names[m].format(_value(t)) for m, t in pairs) + ", per image"


def _start_level(gdm: GdmSettings) -> str:
    # guided sampling starts at respaced index rev_t + d - 1 (gdm.denoise_start_index); the
    # latent sits at rev_t + 1
    d = gdm.forback_skip_diff
    if d <= 0:
        return f"{d}: sampling starts {gdm.skip_first_steps} step(s) below the top of the grid"
    above = {0: "at the latent's level", 1: "one level above the latent"}
    where = above.get(d - 2, f"{d - 2} levels above the latent")
    return f"{d}: sampling starts {where}"


def _score_reference(uncond_aux: bool) -> str:
    twin = "guided vs. unguided regeneration" if uncond_aux else "guided regeneration vs. input"
    return f"score: {twin} ({_value(uncond_aux)})"


def _cfg_depth(cfg: CfgSettings) -> str:
    k = cfg.inversion_steps
    steps = "the whole DDIM grid" if k is None else f"the first {k} DDIM steps"
    return f"{_value(k)}: invert and regenerate {steps} (the option is our addition)"


SWITCHES: tuple[Switch, ...] = (
    Switch(
        "gdm",
        "uncond_aux",
        lambda g: _score_reference(g.uncond_aux),
        "guided regeneration vs. the input",
    ),
    Switch(
        "gdm",
        "psnr_peak",
        lambda g: (
            f"{_value(g.psnr_peak)} on $[-1,1]$ images "
            f"(+{20 * math.log10(g.psnr_peak / 2):.2f}\\,dB)"
        ),
        "peak 2",
    ),
    Switch(
        "gdm",
        "early_stop_thresholds",
        _early_stop,
        "PSNR 6.39 (paper units), DISTS 0.37 (Table 4)",
    ),
    Switch("gdm", "forback_skip_diff", _start_level, "not described"),
    Switch(
        "gdm",
        "cutouts_num",
        lambda g: f"{g.cutouts_num} random resized crops, log-probabilities summed",
        "``cutout''",
    ),
    Switch(
        "gdm",
        "no_x0_hat",
        lambda g: (
            "true: guide on $x_t$ (no $\\hat x_0$)"
            if g.no_x0_hat
            else "false: guide on the blend $f\\hat x_0+(1-f)x_t$, gradient w.r.t.\\ the blend "
            "(not through the UNet)"
        ),
        "Eq.~7: guide on $\\hat x_0$, gradient chained to $x_t$; blend weight not given",
    ),
    Switch(
        "gdm",
        "clip_first_inversion_step",
        lambda g: (
            f"{_value(g.clip_first_inversion_step)}: first inversion step "
            + ("clamped" if g.clip_first_inversion_step else "unclamped")
        ),
        "not described",
    ),
    Switch(
        "cfg",
        "inversion_variant",
        lambda c: (
            latex_escape(c.inversion_variant)
            + {
                "next_t": ": UNet at the next timestep",
                "standard": ": UNet at the current timestep",
            }[c.inversion_variant]
        ),
        "standard DDIM inversion",
    ),
    Switch("cfg", "cam_cut", lambda c: _value(c.cam_cut), "$\\approx 0.2$ (best in Fig.~7)"),
    Switch(
        "cfg",
        "decode_quantize",
        lambda c: (
            f"{_value(c.decode_quantize)}: latent "
            + ("snapped to the VQ codebook" if c.decode_quantize else "not snapped to the codebook")
            + " before decoding"
        ),
        "not described",
    ),
    Switch(
        "cfg",
        "uncond_aux",
        lambda c: _score_reference(c.uncond_aux),
        "guided regeneration vs. the input",
    ),
    Switch("cfg", "inversion_steps", _cfg_depth, "the whole grid"),
    Switch(
        "",
        "take_best_over_distances",
        lambda top: (
            "best distance per OOD set and metric (optimistic)"
            if top["take_best_over_distances"]
            else "the headline distance"
        ),
        "Table 4 only",
    ),
)
"""Released-code versus paper-text differences that are configuration switches, and our own
additions to the method (``cfg.inversion_steps``), whose cells say so."""


def released_settings() -> dict[str, Any]:
    """Section -> the released code's settings: the GDM/CFG defaults and top-level values."""
    return {"gdm": GdmSettings(), "cfg": CfgSettings(), "": RELEASED_TOP_LEVEL}


def schema_default(key: str) -> Any:
    """The config schema's default of top-level ``key`` (KeyError naming the schema if none)."""
    import yaml

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())
    try:
        return schema["properties"][key]["default"]
    except KeyError:
        raise KeyError(f"{CONFIG_SCHEMA}: top-level key {key!r} has no default") from None


def macro_name(text: str) -> str:
    """Letters-only CamelCase for a LaTeX macro name (``near_digits`` -> ``NearDigits``,
    ``cifar10`` -> ``CifarOneZero``)."""
    digits = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
    parts: list[str] = []
    word = ""
    for ch in str(text):
        if ch.isascii() and ch.isalpha():
            word += ch
        else:
            if word:
                parts.append(word[0].upper() + word[1:])
                word = ""
            if ch.isdigit():
                parts.append(digits[int(ch)])
    if word:
        parts.append(word[0].upper() + word[1:])
    if not parts:
        raise ValueError(f"cannot make a LaTeX macro name from {text!r}")
    return "".join(parts)


def _macro(name: str, value: str) -> str:
    if not name.isalpha():
        raise ValueError(f"LaTeX macro name must be letters only, got {name!r}")
    return rf"\newcommand{{\{name}}}{{{value}}}"


def _num(value: float | None, decimals: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{decimals}f}"


def format_runtime(seconds: float | None) -> str:
    """``5.2\\,s``, ``3.4\\,min`` or ``1.25\\,h`` (``--`` when unknown)."""
    if seconds is None or math.isnan(seconds):
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f}\\,s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}\\,min"
    return f"{seconds / 3600:.2f}\\,h"


def _is_oracle(experiment: str, oracle_experiments: Sequence[str] | None) -> bool:
    if oracle_experiments is not None:
        return experiment in oracle_experiments
    # Without the config: the workflow names its oracle-label experiments *oracle*.
    return "oracle" in experiment.lower()


def _best(frame: pd.DataFrame) -> tuple[str, float, float]:
    """(method, AUROC, FPR@95 (a)) of the highest mean AUROC (seeds averaged); ties: first."""
    if frame.empty:
        return MISSING, math.nan, math.nan
    means = frame.groupby("method", sort=False)[["auroc", "fpr95_id_recall"]].mean()
    method = str(means["auroc"].idxmax())
    return method, float(means.loc[method, "auroc"]), float(means.loc[method, "fpr95_id_recall"])


def _role_rows(metrics: pd.DataFrame, role: str) -> pd.DataFrame:
    """Per-method rows for one role: the ``average_<role>`` rows, else the mean of its sets."""
    rows = metrics[metrics["dataset"] == f"average_{role}"]
    if not rows.empty:
        return rows
    per_set = metrics[(metrics["role"] == role) & ~metrics["dataset"].str.startswith("average")]
    if per_set.empty:
        return per_set
    keys = ["kind", "method", "experiment", "seed"]
    keys = [k for k in keys if k in per_set]
    return (
        per_set.groupby(keys, dropna=False, sort=False)[["auroc", "fpr95_id_recall"]]
        .mean()
        .reset_index()
    )


def _method_macros(prefix: str, best: tuple[str, float, float]) -> list[str]:
    method, auroc, fpr = best
    return [
        _macro(f"{prefix}Method", latex_escape(method)),
        _macro(f"{prefix}AUROC", _num(auroc)),
        _macro(f"{prefix}FPR", _num(fpr)),
    ]


def config_switch_table(
    settings: Mapping[str, tuple[str, Mapping[str, Any]]],
    take_best_over_distances: bool = False,
    released: Mapping[str, Any] | None = None,
) -> str:
    """LaTeX ``tabular`` of the released-code/paper switches and this run's values.

    Args:
        settings: Experiment name -> (method ``gdm``/``cfg``, its full settings incl. defaults).
        take_best_over_distances: The run's top-level switch.
        released: Section -> released settings (default :func:`released_settings`).
    """
    lines = [
        r"\begin{tabular}{@{}p{0.2\linewidth}p{0.27\linewidth}p{0.2\linewidth}"
        r"p{0.2\linewidth}@{}}",
        r"\toprule",
        r"Switch & Released code (default) & Paper text & This run \\",
        r"\midrule",
    ]
    released = released_settings() if released is None else released
    for switch in SWITCHES:
        section, key, paper = switch.section, switch.key, switch.paper
        code = switch.describe(released[section])
        if section:
            values = {
                name: _switch_value(key, spec)
                for name, (method, spec) in settings.items()
                if method == section and key in spec
            }
            if not values:
                this_run = f"(no {section.upper()} experiment)"
            elif len(set(values.values())) == 1:
                this_run = f"{next(iter(values.values()))} (all)"
            else:
                this_run = "; ".join(f"{latex_escape(n)}: {v}" for n, v in values.items())
        else:
            this_run = _value(take_best_over_distances)
        name = latex_escape(f"{section}.{key}" if section else key)
        # long keys must break inside the narrow column
        name = name.replace(r"\_", r"\_\allowbreak{}").replace(".", r".\allowbreak{}")
        lines.append(rf"\texttt{{{name}}} & {code} & {paper} & {this_run} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _switch_value(key: str, spec: Mapping[str, Any]) -> str:
    if key == "early_stop_thresholds" and "early_stop_metrics" in spec:
        pairs = zip(spec["early_stop_metrics"], spec["early_stop_thresholds"], strict=False)
        return ", ".join(f"{_value(m)} {_value(t)}" for m, t in pairs) or "off"
    return _value(spec[key])


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return latex_escape(str(value))


FIGURE_CAPTIONS: dict[str, tuple[str, str]] = {
    figure.stem: (figure.width, figure.paper_caption) for figure in FIGURES
}
"""Stem -> (width, caption) of every figure the paper can include, in paper order (from the
registry :data:`diffguard.targets.FIGURES`; generated into ``\\reportFigures``)."""

FIGURE_NOTES_WITHOUT: dict[str, tuple[str, str]] = {
    # stem -> (stem whose absence triggers the note, note appended to the caption)
    "accuracy_over_timesteps": (
        "noisy_classifier_agreement",
        "This run configures no noise-aware classifier (\\texttt{figures.fig2."
        "noisy\\_classifier}): only the two curves of the protected classifier are drawn, "
        "and panel A, which needs one, is absent.",
    ),
}
"""Caption notes for figures drawn without a companion figure of the same run."""


def figure_blocks(figures: Sequence[str]) -> str:
    """LaTeX ``figure`` floats of the run's figures, in :data:`FIGURE_CAPTIONS` order.

    Raises:
        KeyError: A figure without a caption here.
    """
    unknown = [f for f in figures if f not in FIGURE_CAPTIONS]
    if unknown:
        raise KeyError(f"paper figures {unknown} have no caption in diffguard.paper")
    blocks = []
    for name, (width, caption) in FIGURE_CAPTIONS.items():
        if name not in figures:
            continue
        companion, note = FIGURE_NOTES_WITHOUT.get(name, (name, ""))
        if companion not in figures:
            caption = f"{caption} {note}"
        # as showyourwork does: the caption names the script (and rule) that draws the figure
        script, rule = latex_escape(FIGURE[name].script), latex_escape(FIGURE[name].rule)
        made_by = f"\\figscript{{{script}}}{{{rule}}}"
        blocks.append(
            "\\begin{figure}[tbp]\n\\centering\n"
            f"\\includegraphics[width={width}]{{\\figdir/{name}.pdf}}\n"
            f"\\caption{{{caption}{made_by}}}\n\\label{{fig:{name.replace('_', '-')}}}\n"
            "\\end{figure}\n"
        )
    return "".join(blocks)


def check_macros(check: pd.DataFrame | None) -> list[str]:
    """Macros of the reproduction check: status and cell counts (``--`` without a check)."""
    if check is None:
        values = dict.fromkeys(("Status", "Cells", "Passed", "Failed", "Missing"), MISSING)
    else:
        from diffguard.reproduction import overall_status

        counted = check[check["status"] != "not applicable"]
        counts = counted["status"].value_counts()
        values = {
            "Status": latex_escape(overall_status(check)),
            "Cells": str(len(counted)),
            "Passed": str(int(counts.get("pass", 0))),
            "Failed": str(int(counts.get("fail", 0))),
            "Missing": str(int(counts.get("missing", 0))),
        }
    return [_macro(f"check{key}", value) for key, value in values.items()]


def _method_rank_macros(
    metrics: pd.DataFrame, oracle: pd.Series, headline: tuple[str, str] | None
) -> list[str]:
    """Counts of variants/baselines and the best / headline / oracle method macros."""
    fair = metrics[~oracle]
    average = fair[fair["dataset"] == "average"]
    lines = []
    n_variants = average[average["kind"] == "diffguard"]["method"].nunique()
    lines.append(_macro("nDiffGuardVariants", str(n_variants)))
    lines.append(
        _macro("nBaselines", str(average[average["kind"] == "baseline"]["method"].nunique()))
    )
    for kind, prefix in (
        ("diffguard", "bestDiffGuard"),
        ("baseline", "bestBaseline"),
        ("combined", "bestCombined"),
    ):
        lines += _method_macros(prefix, _best(average[average["kind"] == kind]))
    for role, word in (("near", "Near"), ("far", "Far")):
        rows = _role_rows(fair, role)
        for kind, prefix in (("diffguard", "bestDiffGuard"), ("baseline", "bestBaseline")):
            subset = rows[rows["kind"] == kind] if not rows.empty else rows
            lines += _method_macros(f"{prefix}{word}", _best(subset))
    head = average.iloc[0:0]
    if headline is not None:
        head = average[
            (average["kind"] == "diffguard")
            & (average["experiment"] == headline[0])
            & (average["distance"] == headline[1])
        ]
        if head.empty:
            log.warning("headline %s / %s has no average row in the metrics", *headline)
    lines += _method_macros("headline", _best(head))
    oracle_rows = metrics[oracle & (metrics["dataset"] == "average")]
    lines += _method_macros("bestOracle", _best(oracle_rows[oracle_rows["kind"] == "diffguard"]))

    return lines


def _dataset_macros(metrics: pd.DataFrame, counts: Mapping[str, int] | None) -> list[str]:
    """OOD set names, seeds and image counts (``counts``: the ID set first, then OOD sets)."""
    lines = []
    ood_sets = list(
        dict.fromkeys(d for d in metrics["dataset"] if d and not d.startswith("average"))
    )
    lines.append(_macro("nOODSets", str(len(ood_sets))))
    lines.append(_macro("oodSetNames", ", ".join(latex_escape(d) for d in ood_sets) or MISSING))
    seeds = metrics["seed"].dropna().astype(str) if "seed" in metrics else pd.Series([], dtype=str)
    lines.append(_macro("nSeeds", str(max(1, seeds[seeds != ""].nunique()))))
    counts = dict(counts or {})
    id_sets = [d for d in counts if d not in ood_sets]
    lines.append(_macro("idSetName", latex_escape(id_sets[0]) if id_sets else MISSING))
    lines.append(_macro("nImagesID", str(counts[id_sets[0]]) if id_sets else MISSING))
    n_ood = sum(n for d, n in counts.items() if d in ood_sets)
    lines.append(_macro("nImagesOOD", str(n_ood) if counts else MISSING))
    lines.append(_macro("nImagesTotal", str(sum(counts.values())) if counts else MISSING))
    for dataset, n in counts.items():
        lines.append(_macro(f"nImages{macro_name(dataset)}", str(n)))
    return lines


def claims_section(claims: pd.DataFrame | None, table: str = "tables/claims.tex") -> str:
    """The paper's claims section (``\\claimsSection``): the verdicts with their numbers and
    the claims table; empty when the run checks no claims."""
    if claims is None:
        return ""
    from diffguard.claims import claims_paragraph

    return (
        "%\n\\section{The paper's claims}\n"
        + claims_paragraph(claims)
        + f"\n\n\\input{{{table}}}\n"
    )


def paper_numbers(
    metrics: pd.DataFrame,
    *,
    run: str,
    figure_dir: str,
    counts: Mapping[str, int] | None = None,
    runtime_s: float | None = None,
    settings: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    take_best_over_distances: bool = False,
    headline: tuple[str, str] | None = None,
    published_tables: Sequence[str] = (),
    oracle_experiments: Sequence[str] | None = None,
    figures: Sequence[str] = (),
    check: pd.DataFrame | None = None,
    claims: pd.DataFrame | None = None,
) -> str:
    """Text of ``numbers.tex``.

    Args:
        metrics: Long metrics frame of the run.
        run: Run name.
        figure_dir: Figure folder relative to ``paper/`` (``../figures/<run>``).
        counts: Dataset -> number of images (the ID set first, then OOD sets).
        runtime_s: Wall time of the run in seconds, when known.
        settings: Experiment -> (method, full settings), for the switch table.
        take_best_over_distances: The run's ``take_best_over_distances``.
        headline: (experiment, distance) of the headline DiffGuard configuration.
        published_tables: LaTeX files (relative to ``paper/``) comparing with published numbers.
        oracle_experiments: Experiments with oracle labels (excluded from "best DiffGuard");
            default: experiments whose name contains "oracle".
        figures: Figure stems of the run (``\\reportFigures``).
        check: The reproduction check frame (``\\checkStatus`` and counts).
        claims: The claims frame (``\\claimsSection``; None: the run checks no claims).

    Returns:
        LaTeX source defining every macro ``ms.tex`` uses.
    """
    for column in ("method", "kind", "dataset", "auroc", "fpr95_id_recall"):
        if column not in metrics:
            raise ValueError(f"paper numbers: metrics have no column {column!r}")
    metrics = metrics.copy()
    metrics["dataset"] = metrics["dataset"].astype(str)
    for column in ("experiment", "distance", "role"):
        if column not in metrics:
            metrics[column] = ""
        metrics[column] = metrics[column].fillna("").astype(str)
    oracle = metrics["experiment"].map(lambda e: bool(e) and _is_oracle(e, oracle_experiments))
    lines = [
        "% Generated by the workflow (rule write_paper_numbers); do not edit.",
        _macro("runName", latex_escape(run)),
        _macro("figdir", figure_dir),
    ]
    lines += _method_rank_macros(metrics, oracle, headline)
    lines += _dataset_macros(metrics, counts)
    lines.append(_macro("totalRuntime", format_runtime(runtime_s)))
    table = config_switch_table(settings or {}, take_best_over_distances)
    lines.append(_macro("configSwitchTable", "%\n" + table + "%\n"))
    if published_tables:
        inputs = "".join(rf"\input{{{p}}}" + "\n" for p in published_tables)
        lines.append(_macro("publishedComparison", "%\n" + inputs))
    else:
        lines.append(_macro("publishedComparison", latex_escape(NO_PUBLISHED_NOTE)))
    lines.append(_macro("reportFigures", "%\n" + figure_blocks(figures) + "%\n"))
    lines += check_macros(check)
    lines.append(_macro("claimsSection", claims_section(claims)))
    return "\n".join(lines) + "\n"


def count_list(path: str | Path) -> int:
    """Number of non-empty lines of an image list."""
    with open(path) as handle:
        return sum(1 for line in handle if line.strip())


def read_runtime(benchmarks: Sequence[str | Path]) -> float | None:
    """Total seconds of Snakemake benchmark files (column ``s``); None without any."""
    if not benchmarks:
        return None
    total = 0.0
    for path in benchmarks:
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no column 's')")
        total += float(frame["s"].mean())  # repeated benchmarks: one run's worth
    return total


def experiment_settings(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Experiment -> (method, full settings with defaults) from a workflow config."""
    import dataclasses

    from diffguard.config import method_settings, resolve_experiment  # imports torch

    out = {}
    experiments = dict(config.get("experiments", {}))
    for name in experiments:
        resolved = resolve_experiment(experiments, name)
        out[name] = (resolved["method"], dataclasses.asdict(method_settings(resolved)))
    return out


def write_paper_numbers(
    metrics_csv: str | Path,
    out: str | Path,
    *,
    run: str,
    figure_dir: str,
    lists: Mapping[str, str | Path] | None = None,
    benchmarks: Sequence[str | Path] = (),
    runtime_s: float | None = None,
    config: Mapping[str, Any] | None = None,
    published_tables: Sequence[str] = (),
    figures: Sequence[str] = (),
    check_csv: str | Path | None = None,
    claims_csv: str | Path | None = None,
    tune_chosen: Sequence[str | Path] = (),
) -> Path:
    """Write ``numbers.tex`` from the run's metrics, image lists, benchmarks and config.

    Args:
        metrics_csv: Long metrics CSV.
        out: ``paper/numbers.tex``.
        run: Run name.
        figure_dir: Figure folder relative to ``paper/``.
        lists: Dataset -> image list (ID set first), for the image counts.
        benchmarks: Snakemake benchmark files whose times add up to the runtime.
        runtime_s: Runtime in seconds (overrides ``benchmarks``).
        config: Workflow config (experiments, headline distance, switches).
        published_tables: Published-vs-reproduced LaTeX tables, relative to ``paper/``.
        figures: Figure stems of the run, in any order.
        check_csv: The reproduction check CSV.
        claims_csv: The claims CSV (rule check_claims), when the run checks claims.
        tune_chosen: ``chosen.json`` of each tune (``\\tuneChoices``: empty without any).
    """
    metrics = read_metrics(metrics_csv)
    counts = {name: count_list(path) for name, path in (lists or {}).items()}
    if runtime_s is None:
        runtime_s = read_runtime(benchmarks)
    config = dict(config or {})
    choices = [json.loads(Path(p).read_text()) for p in tune_chosen]
    if choices and config.get("experiments"):
        from diffguard.tuning import with_choices

        # the switch table reports the values the jobs ran with: the tunes' choices applied
        config["experiments"] = with_choices(config["experiments"], choices)
    settings = experiment_settings(config) if config.get("experiments") else None
    headline = None
    oracle = None
    if settings:
        first = config.get("headline_experiment", next(iter(settings)))
        headline = (first, config.get("headline_distance", "l2"))
        oracle = [name for name in settings if _extends_oracle(config["experiments"], name)]
    text = paper_numbers(
        metrics,
        run=run,
        figure_dir=figure_dir,
        counts=counts,
        runtime_s=runtime_s,
        settings=settings,
        take_best_over_distances=bool(
            config.get("take_best_over_distances", schema_default("take_best_over_distances"))
        ),
        headline=headline,
        published_tables=published_tables,
        oracle_experiments=oracle,
        figures=figures,
        check=(
            pd.read_csv(check_csv, keep_default_na=False, na_values=[""]) if check_csv else None
        ),
        claims=_read_claims(claims_csv),
    )
    text += _macro("tuneChoices", tune_sentence(choices)) + "\n"
    write_text(out, text)
    log.info("wrote %s (%d macros)", out, text.count(r"\newcommand"))
    return Path(out)


def _read_claims(path: str | Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    from diffguard.claims import read_claims

    return read_claims(path)


def tune_sentence(choices: Sequence[Mapping[str, Any]]) -> str:
    """The paper's sentence on the settings chosen on validation data (``chosen.json`` of each
    tune); empty without ``tune:`` entries."""
    parts = []
    for chosen in choices:
        settings = ", ".join(
            f"\\texttt{{{latex_escape(str(k))}}} = {latex_escape(str(v))}"
            for k, v in chosen["settings"].items()
        )
        rule = chosen.get("combination_rule")
        combo = f", combination rule {latex_escape(rule)}" if rule else ""
        parts.append(
            f"for \\texttt{{{latex_escape(chosen['experiment'])}}} (and the experiments "
            f"extending it) {settings}, distance {latex_escape(chosen['distance'])}{combo} "
            rf"(validation objective {_num(float(chosen['objective']))}\,\% on "
            f"{latex_escape(', '.join(chosen['val_sets']))})"
        )
    if not parts:
        return ""
    return (
        "\\paragraph{Settings chosen on validation data.} Each grid was evaluated on the "
        "validation sets only (disjoint from the test sets); the test metrics above use the "
        "choice: " + "; ".join(parts) + "."
    )


def _extends_oracle(experiments: Mapping[str, Mapping[str, Any]], name: str) -> bool:
    """Whether ``name`` inherits ``oracle_labels: true`` through its ``extends`` chain."""
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current not in seen and current in experiments:
        seen.add(current)
        spec = experiments[current]
        if "oracle_labels" in spec:
            return bool(spec["oracle_labels"])
        current = spec.get("extends")
    return False
