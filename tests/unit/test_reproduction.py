"""Paper tables (published vs reproduced) and the reproduction check, on synthetic metrics in
the exact columns the evaluate rule writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from latex_doc import assert_compiles

from diffguard.paper_tables import (
    best_over_distances,
    paper_table,
    render_paper_tables_stage,
    select_rows,
)
from diffguard.reproduction import (
    check_table,
    overall_status,
    reproduction_check_stage,
    reproduction_gate_stage,
)
from diffguard.tables import metrics_table

SETS = ("species", "inaturalist")
EVAL_COLUMNS = [
    "run",
    "method",
    "kind",
    "experiment",
    "distance",
    "baseline",
    "rule",
    "seed",
    "dataset",
    "role",
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr95_id_recall",
    "fpr95_ood_recall",
]


def _method_rows(meta: dict, values: dict[str, tuple[float, float]]) -> list[dict]:
    """Rows of one method/seed as pipeline._metric_rows writes them (per set + average)."""
    rows = []
    for dataset, (auroc, fpr) in values.items():
        rows.append(
            {
                "run": "unit",
                **meta,
                "dataset": dataset,
                "role": "near",
                "auroc": auroc,
                "aupr_in": auroc,
                "aupr_out": auroc,
                "fpr95_id_recall": fpr,
                "fpr95_ood_recall": fpr + 1,
            }
        )
    average = {k: float(np.mean([r[k] for r in rows])) for k in EVAL_COLUMNS[-5:]}
    rows.append({"run": "unit", **meta, "dataset": "average", "role": "all", **average})
    return rows


def _meta(kind: str, experiment: str = "", distance: str = "", baseline: str = "", seed="") -> dict:
    method = {
        "baseline": baseline.upper(),
        "diffguard": f"DiffGuard (GDM: {experiment}, {distance})",
        "combined": f"DiffGuard (GDM: {experiment})+{baseline.upper()} [cascade]",
    }[kind]
    return {
        "method": method,
        "kind": kind,
        "experiment": experiment,
        "distance": distance,
        "baseline": baseline,
        "rule": "cascade" if kind == "combined" else "",
        "seed": seed,
    }


GDM_SEEDS = {0: (73.0, 85.0), 1: (73.4, 85.4), 2: (73.2, 85.8), 3: (73.6, 85.6)}


@pytest.fixture()
def metrics() -> pd.DataFrame:
    rows = _method_rows(
        _meta("baseline", baseline="ebo"),
        {"species": (72.04, 82.33), "inaturalist": (90.61, 53.83)},
    )
    for seed, (a, b) in GDM_SEEDS.items():
        meta = _meta("diffguard", "gdm_main", "dists", seed=seed)
        rows += _method_rows(meta, {"species": (a, 80.0), "inaturalist": (b, 70.0)})
        meta = _meta("diffguard", "gdm_main", "l2", seed=seed)
        rows += _method_rows(meta, {"species": (60.0, 90.0), "inaturalist": (95.0, 50.0)})
        meta = _meta("combined", "gdm_main", "dists", "knn", seed=seed)
        rows += _method_rows(meta, {"species": (77.81, 71.04), "inaturalist": (90.19, 48.79)})
    frame = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    # as read back from the CSV: empty seed for baselines
    frame["seed"] = frame["seed"].replace({"": np.nan})
    return frame


@pytest.fixture()
def published(tmp_path: Path) -> Path:
    path = tmp_path / "table2_unit.csv"
    pd.DataFrame(
        {
            "method": ["EBO", "Ours(GDM)", "Ours(GDM)+KNN", "KNN"],
            "species_auroc": [72.04, 73.19, 77.81, 76.38],
            "species_auroc_std": [np.nan, 0.18, np.nan, np.nan],
            "species_fpr95": [82.33, 83.68, 71.04, 76.19],
            "inaturalist_auroc": [90.61, 85.81, 90.19, 85.12],
            "inaturalist_fpr95": [53.83, 71.23, 48.79, 68.41],
            "avg_auroc": [81.33, 79.50, 84.00, 80.75],
        }
    ).to_csv(path, index=False)
    return path


ROWS = {
    "EBO": {"baseline": "ebo"},
    "Ours(GDM)": {"experiment": "gdm_main"},
    "Ours(GDM)+KNN": {"experiment": "gdm_main", "baseline": "knn"},
}


def test_select_rows_by_kind_columns(metrics: pd.DataFrame) -> None:
    base = select_rows(metrics, {"baseline": "ebo"}, headline_distance="dists")
    assert set(base["kind"]) == {"baseline"} and len(base) == 3
    dg = select_rows(metrics, {"experiment": "gdm_main"}, headline_distance="dists")
    assert set(dg["kind"]) == {"diffguard"} and set(dg["distance"]) == {"dists"}
    assert len(dg) == 4 * 3
    l2 = select_rows(metrics, {"experiment": "gdm_main", "distance": "l2"}, headline_distance="x")
    assert set(l2["distance"]) == {"l2"}
    combo = select_rows(
        metrics, {"experiment": "gdm_main", "baseline": "knn"}, headline_distance=""
    )
    assert set(combo["kind"]) == {"combined"}
    with pytest.raises(ValueError, match="unknown key"):
        select_rows(metrics, {"experimnt": "gdm_main"}, headline_distance="dists")


def test_best_over_distances_per_set_then_average(metrics: pd.DataFrame) -> None:
    rows = metrics[(metrics["experiment"] == "gdm_main") & (metrics["kind"] == "diffguard")]
    best = best_over_distances(rows)
    seed0 = best[best["seed"].astype(str) == "0"].set_index("dataset")
    assert seed0.loc["species", "auroc"] == 73.0  # dists beats l2 (60)
    assert seed0.loc["inaturalist", "auroc"] == 95.0  # l2 beats dists (85)
    assert seed0.loc["species", "fpr95_id_recall"] == 80.0  # min FPR (dists)
    assert seed0.loc["inaturalist", "fpr95_id_recall"] == 50.0  # min FPR (l2)
    assert seed0.loc["average", "auroc"] == pytest.approx((73.0 + 95.0) / 2)
    assert seed0.loc["average", "fpr95_id_recall"] == pytest.approx((80.0 + 50.0) / 2)
    assert best["distance"].str.startswith("best of").all()


def test_paper_table_mean_sd_and_delta(metrics: pd.DataFrame, published: Path) -> None:
    comp = paper_table(metrics, published, ROWS, headline_distance="dists")
    gdm = comp[(comp["published_row"] == "Ours(GDM)") & (comp["metric"] == "AUROC")]
    species = gdm[gdm["dataset"] == "species"].iloc[0]
    values = [v[0] for v in GDM_SEEDS.values()]
    assert species["reproduced"] == pytest.approx(np.mean(values))
    assert species["reproduced_sd"] == pytest.approx(np.std(values, ddof=1))
    assert species["n_seeds"] == 4
    assert species["published_sd"] == pytest.approx(0.18)
    assert species["delta"] == pytest.approx(np.mean(values) - 73.19)
    ebo = comp[comp["published_row"] == "EBO"]
    # averages are not compared: the published table has two sets, average over them matches
    assert np.allclose(ebo["delta"].dropna(), [0, 0, 0, 0, 81.325 - 81.33], atol=1e-9)
    assert "KNN" not in set(comp["published_row"])  # unmapped rows are not compared


def test_check_bands_use_tolerance_or_two_sd(metrics: pd.DataFrame, published: Path) -> None:
    comp = paper_table(metrics, published, ROWS, headline_distance="dists")
    check = check_table(comp, "t2", tolerance={"auroc": 0.05, "fpr95": 0.05}, sd_factor=2.0)
    row = check[(check["published_row"] == "Ours(GDM)") & (check["dataset"] == "species")]
    row = row[row["metric"] == "AUROC"].iloc[0]
    sd = np.std([v[0] for v in GDM_SEEDS.values()], ddof=1)
    assert row["band"] == pytest.approx(2 * max(sd, 0.18))
    assert row["status"] == ("pass" if abs(row["delta"]) <= row["band"] else "fail")
    # Ours(GDM) FPR (80 vs 83.68) is far outside a 0.05 band: fail
    fpr = check[(check["published_row"] == "Ours(GDM)") & (check["metric"] == "FPR@95 (a)")]
    assert set(fpr["status"]) == {"fail"}
    assert overall_status(check) == "fail"
    ebo = check[check["published_row"] == "EBO"]
    assert set(ebo["status"]) == {"pass"}


def test_missing_experiment_is_missing_not_pass(metrics: pd.DataFrame, published: Path) -> None:
    rows = {**ROWS, "KNN": {"baseline": "knn"}}  # the run has no KNN baseline
    comp = paper_table(metrics, published, rows, headline_distance="dists")
    knn = comp[comp["published_row"] == "KNN"]
    assert knn["reproduced"].isna().all()
    check = check_table(comp[comp["published_row"].isin(["EBO", "KNN"])], "t2")
    assert set(check[check["published_row"] == "KNN"]["status"]) == {"missing"}
    assert overall_status(check) == "incomplete"


def test_render_check_and_gate(metrics: pd.DataFrame, published: Path, tmp_path: Path) -> None:
    metrics_csv = tmp_path / "metrics.csv"
    metrics.to_csv(metrics_csv, index=False)
    out = {k: tmp_path / f"t2.{k}" for k in ("csv", "md", "tex")}
    render_paper_tables_stage(
        metrics_csv,
        {"t2": {"published": published.stem, "rows": ROWS, "title": "Table 2"}},
        {"t2": out},
        published_dir=published.parent,
        headline_distance="dists",
        run="unit",
    )
    md = out["md"].read_text()
    assert "| Ours(GDM) |" in md and "(73.19 ± 0.18, " in md
    tex = out["tex"].read_text()
    assert r"\label{tab:t2}" in tex and r"$\pm$" in tex
    check_out = {k: tmp_path / f"check.{k}" for k in ("csv", "md", "tex")}
    status = reproduction_check_stage(
        {"t2": out["csv"]}, {"tolerance": {"auroc": 1.0}}, check_out, run="unit"
    )
    assert status == "fail"  # the GDM FPR cells are 3.68 and 1.23 off; fpr95 band is 3.0
    metrics_seen = set(pd.read_csv(check_out["csv"])["metric"])
    assert metrics_seen == {"AUROC", "FPR@95 (a)"}  # CSV round trip: no "AUROC (nan)"
    assert "FAIL" in check_out["md"].read_text().splitlines()[0]
    with pytest.raises(RuntimeError, match=r"Ours\(GDM\)/species/FPR@95 \(a\): fail"):
        reproduction_gate_stage(check_out["csv"], tmp_path / "gate.txt", allow=["pass"])
    assert not (tmp_path / "gate.txt").exists()
    # a wider per-table FPR band passes every reproduced cell
    status = reproduction_check_stage(
        {"t2": out["csv"]},
        {"tables": {"t2": {"tolerance": {"fpr95": 5.0}}}},
        check_out,
        run="unit",
    )
    assert status == "pass"
    assert (
        reproduction_gate_stage(check_out["csv"], tmp_path / "gate.txt", allow=["pass"]) == "pass"
    )
    with pytest.raises(ValueError, match="not paper tables"):
        reproduction_check_stage({"t2": out["csv"]}, {"tables": {"t9": {}}}, check_out, run="unit")


def _with_far_sets(metrics: pd.DataFrame) -> pd.DataFrame:
    """The fixture's sets as near-OOD plus a far-OOD set, with the evaluate rule's near/far
    average rows (OpenOOD v1.5's layout)."""
    per_set = metrics[metrics["dataset"] != "average"].copy()
    far = per_set[per_set["dataset"] == "inaturalist"].copy()
    far["dataset"], far["role"] = "textures", "far"
    far[["auroc", "fpr95_id_recall"]] -= 10.0
    per_set = pd.concat([per_set, far], ignore_index=True)
    keys = ["method", "seed"]
    frames = [per_set]
    for role, name in (("near", "average_near"), ("far", "average_far"), (None, "average")):
        part = per_set if role is None else per_set[per_set["role"] == role]
        means = part.groupby(keys, dropna=False, sort=False)[EVAL_COLUMNS[-5:]].mean()
        first = part.groupby(keys, dropna=False, sort=False)[EVAL_COLUMNS[:-5]].first()
        group = first.join(means).reset_index(drop=True)
        group["dataset"], group["role"] = name, role or "all"
        frames.append(group[EVAL_COLUMNS])
    return pd.concat(frames, ignore_index=True)[EVAL_COLUMNS]


def test_reproduced_only_table_near_far_averages_and_no_check(
    metrics: pd.DataFrame, tmp_path: Path
) -> None:
    """`published: null` (OpenOOD v1.5): reproduced cells of every set, the near/far averages
    and the average; no published column; the check skips it (not applicable)."""
    frame = _with_far_sets(metrics)
    metrics_csv = tmp_path / "metrics.csv"
    frame.to_csv(metrics_csv, index=False)
    out = {k: tmp_path / f"v15.{k}" for k in ("csv", "md", "tex")}
    spec = {"published": None, "rows": ROWS, "metrics": ["auroc", "fpr95_ood_recall"]}
    render_paper_tables_stage(
        metrics_csv,
        {"v15": spec},
        {"v15": out},
        published_dir=tmp_path / "nowhere",
        headline_distance="dists",
        run="unit",
    )
    table = pd.read_csv(out["csv"])
    assert table["published"].isna().all() and table["delta"].isna().all()
    sets = list(dict.fromkeys(table["dataset"]))
    assert sets == ["species", "inaturalist", "textures", "average_near", "average_far", "average"]
    assert set(table["convention"].fillna("")) == {"", "b"}
    cell = table.set_index(["published_row", "dataset", "metric"])["reproduced"]
    gdm = {d: np.mean([v[0] if d == "species" else v[1] for v in GDM_SEEDS.values()]) for d in SETS}
    assert cell[("Ours(GDM)", "average_near", "AUROC")] == pytest.approx(
        np.mean(list(gdm.values()))
    )
    assert cell[("Ours(GDM)", "average_far", "AUROC")] == pytest.approx(gdm["inaturalist"] - 10)
    ebo_sets = [72.04, 90.61, 80.61]
    assert cell[("EBO", "average", "AUROC")] == pytest.approx(np.mean(ebo_sets))
    sd = table.set_index(["published_row", "dataset", "metric"])["reproduced_sd"]
    assert sd[("Ours(GDM)", "species", "AUROC")] == pytest.approx(
        np.std([v[0] for v in GDM_SEEDS.values()], ddof=1)
    )
    md = out["md"].read_text()
    assert "| Method |" in md and "Near avg. AUROC" in md and "Far avg. FPR@95 (b)" in md
    assert "(--, --)" not in md and "no published counterpart" in md
    assert "nothing was published" in out["tex"].read_text()
    # the main results table keeps its layout unless asked for the group averages
    assert not [c for c in metrics_table(frame).columns if "average_" in c and "_near" in c]
    grouped = metrics_table(frame, group_averages=True)
    assert "average_far_auroc" in grouped and "average_near_fpr95_id_recall" in grouped
    check_out = {k: tmp_path / f"check.{k}" for k in ("csv", "md", "tex")}
    assert (
        reproduction_check_stage({"v15": out["csv"]}, {}, check_out, run="unit") == "not applicable"
    )
    assert "v15" in pd.read_csv(check_out["csv"])["published_row"].iloc[0]


def test_no_published_tables_is_not_applicable(tmp_path: Path) -> None:
    out = {k: tmp_path / f"check.{k}" for k in ("csv", "md", "tex")}
    assert reproduction_check_stage({}, {}, out, run="embedded") == "not applicable"
    assert "NOT APPLICABLE" in out["md"].read_text()
    with pytest.raises(RuntimeError, match="not applicable"):
        reproduction_gate_stage(out["csv"], tmp_path / "gate.txt", allow=["pass"])
    assert reproduction_gate_stage(
        out["csv"], tmp_path / "gate.txt", allow=["pass", "not applicable"]
    ) == ("not applicable")
    assert (tmp_path / "gate.txt").read_text() == "not applicable\n"


def test_paper_table_and_check_latex_compile(
    metrics: pd.DataFrame, published: Path, tmp_path: Path
) -> None:
    """pdfLaTeX accepts the paper-shaped table (a row name with an accent, ± cells) and the
    check table, as ms.tex inputs them."""
    metrics_csv = tmp_path / "metrics.csv"
    metrics.to_csv(metrics_csv, index=False)
    frame = pd.read_csv(published)
    frame.loc[0, "method"] = "w/o x̂0, w/o aug"
    frame.to_csv(published, index=False)
    rows = {"w/o x̂0, w/o aug": {"baseline": "ebo"}, "Ours(GDM)": {"experiment": "gdm_main"}}
    out = {k: tmp_path / f"t2.{k}" for k in ("csv", "md", "tex")}
    render_paper_tables_stage(
        metrics_csv,
        {"t2": {"published": published.stem, "rows": rows, "note": "50% & more_notes"}},
        {"t2": out},
        published_dir=published.parent,
        headline_distance="dists",
        run="unit_run",
    )
    check_out = {k: tmp_path / f"check.{k}" for k in ("csv", "md", "tex")}
    reproduction_check_stage({"t2": out["csv"]}, {}, check_out, run="unit_run")
    assert_compiles(out["tex"].read_text() + check_out["tex"].read_text(), tmp_path)


SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "report.schema.yaml"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_load_report_section_sources_and_defaults(tmp_path: Path) -> None:
    from diffguard.report_config import load_report_section

    experiments = {"gdm_main": {}, "ldm_main": {}}
    none = load_report_section(
        {"run": "x"}, default=tmp_path / "absent.yaml", schema=SCHEMA, experiments=experiments
    )
    assert none["tables"] == {} and none["check"]["allow"] == ["pass", "not applicable"]
    assert none["check"]["sd_factor"] == 2.0 and none["published_dir"] == "config/published"
    path = tmp_path / "r.yaml"
    path.write_text("report:\n  tables:\n    t: {rows: {EBO: {baseline: ebo}}}\n")
    named = load_report_section(
        {"report_config": str(path)}, default="x", schema=SCHEMA, experiments=experiments
    )
    assert named["tables"]["t"]["best_of_distances"] == []
    inline = load_report_section(
        {"report": {"check": {"allow": ["pass", "fail"]}}, "report_config": str(path)},
        default="x",
        schema=SCHEMA,
        experiments=experiments,
    )
    assert inline["tables"] == {} and inline["check"]["allow"] == ["pass", "fail"]
    with pytest.raises(ValueError, match="does not exist"):
        load_report_section(
            {"report_config": str(tmp_path / "nope.yaml")},
            default="x",
            schema=SCHEMA,
            experiments=experiments,
        )
    path.write_text("tables: {}\n")
    with pytest.raises(ValueError, match="top-level key `report`"):
        load_report_section(
            {"report_config": str(path)}, default="x", schema=SCHEMA, experiments=experiments
        )
    path.write_text("report:\n  figures: {ablation_grid: {rows: {a: nope}}}\n")
    with pytest.raises(ValueError, match="'nope' does not exist"):
        load_report_section(
            {"report_config": str(path)}, default="x", schema=SCHEMA, experiments=experiments
        )


@pytest.mark.parametrize("name", ["imagenet", "cifar10", "embedded", "tiny", "imagenet_v15"])
def test_shipped_report_configs_match_published_rows(name: str) -> None:
    """Every configured published row exists in its CSV (a typo would fail the paper build)."""
    import yaml

    from diffguard.config import resolve_all
    from diffguard.paper_tables import _published_key_columns, _row_keys
    from diffguard.report_config import load_report_section

    configfile = CONFIG_DIR / f"{'config' if name == 'embedded' else name}.yaml"
    config = yaml.safe_load(configfile.read_text())
    experiments = resolve_all(config["experiments"])
    section = load_report_section(
        config,
        default=CONFIG_DIR / "report" / f"{name}.yaml",
        schema=SCHEMA,
        experiments=experiments,
    )
    for spec in section["tables"].values():  # every selected experiment/baseline is configured
        named = {sel["experiment"] for sel in spec["rows"].values() if "experiment" in sel}
        assert named <= set(experiments), named - set(experiments)
        baselines = {sel["baseline"] for sel in spec["rows"].values() if "baseline" in sel}
        assert baselines <= set(config["baselines"]), baselines - set(config["baselines"])
    for table, spec in section["tables"].items():
        if "published" in spec and spec["published"] is None:
            continue  # a reproduced-only table (nothing published)
        published = pd.read_csv(CONFIG_DIR / "published" / f"{spec.get('published', table)}.csv")
        keys = _row_keys(published, _published_key_columns(published))
        assert set(spec["rows"]) <= set(keys), (table, set(spec["rows"]) - set(keys))
