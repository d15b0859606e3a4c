"""The claims table (diffguard.claims): every claim on hand-made score tables, pass, fail,
ties and `not run`; the tune file; the rendered table and paragraph; the plan's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from diffguard import claims as C
from diffguard.combine import combine
from diffguard.config import ConfigError
from diffguard.metrics import ood_metrics
from diffguard.paper import claims_section

REPO = Path(__file__).resolve().parents[2]
SECTION = {
    "diffguard": "dg",
    "distance": "l2",
    "change_distance": "ssim",
    "baselines": ["msp", "ebo"],
    "combination": {"baseline": "ebo", "rule": "rank_average", "params": {}},
    "x0_ablation": {"with": "x0", "without": "nox0", "distance": "ssim"},
    "oracle": {"predicted": "dg", "oracle": "orc"},
    "sets": "near",
    "tie_fraction": 0.01,
    "tune": None,
}


def write_scores(
    root: Path, exp: str, seed: int, tables: dict[str, dict[str, np.ndarray]]
) -> list[Path]:
    paths = []
    for dataset, columns in tables.items():
        n = len(next(iter(columns.values())))
        frame = pd.DataFrame({"image_id": [f"{dataset}/{i:03d}" for i in range(n)]})
        for name, values in columns.items():
            frame[f"score_{name}"] = values
        path = root / "scores" / exp / dataset / f"seed-{seed}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_baselines(root: Path, tables: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    paths = []
    for dataset, columns in tables.items():
        n = len(next(iter(columns.values())))
        frame = pd.DataFrame({"image_id": [f"{dataset}/{i:03d}" for i in range(n)], **columns})
        frame = frame.iloc[::-1]  # another row order than the DiffGuard tables: joined by id
        path = root / "baselines" / f"{dataset}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


RNG = np.random.default_rng(0)
ID_SSIM = np.array([0.95, 0.9, 0.97, 0.92, 0.99, 0.93])
OOD_SSIM = np.array([0.5, 0.6, 0.4, 0.7])
ID_L2 = np.array([-1.0, -1.2, -0.8, -1.1, -0.9, -1.3])
OOD_L2 = np.array([-1.05, -2.0, -3.0, -2.5])  # one OOD image inside the ID range
MSP = {
    "test_id": np.array([0.9, 0.95, 0.8, 0.99, 0.97, 0.85]),
    "near": np.array([0.96, 0.5, 0.98, 0.6]),
}
EBO = {"test_id": np.array([5.0, 6.0, 4.0, 7.0, 6.5, 4.5]), "near": np.array([6.2, 3.0, 6.8, 3.5])}


def make_scores(
    root: Path, *, experiments: tuple[str, ...] = ("dg", "x0", "nox0", "orc")
) -> C.Scores:
    files: list[Path] = []
    for exp in experiments:
        shift = {"dg": 0.0, "x0": 0.0, "nox0": 0.35, "orc": 0.0}[exp]
        files += write_scores(
            root,
            exp,
            0,
            {
                "test_id": {"ssim": ID_SSIM, "l2": ID_L2},
                "near": {
                    "ssim": OOD_SSIM + shift,
                    "l2": OOD_L2 + (1.0 if exp == "orc" else 0.0) * 0,
                },
            },
        )
    bases = write_baselines(root, {d: {"msp": MSP[d], "ebo": EBO[d]} for d in ("test_id", "near")})
    return C.Scores.from_files(files, bases, "test_id", ["near"])


def auroc(id_scores: np.ndarray, ood: np.ndarray) -> float:
    return ood_metrics(id_scores, ood)["auroc"]


def row(frame: pd.DataFrame, claim: str, contains: str = "") -> pd.Series:
    rows = frame[(frame["claim"] == claim) & frame["statement"].str.contains(contains, regex=False)]
    assert len(rows) == 1, frame
    return rows.iloc[0]


def test_change_claim_passes_with_its_numbers_and_no_ties(tmp_path: Path) -> None:
    frame = C.evaluate_claims(make_scores(tmp_path), C.claims_spec(SECTION))
    a = row(frame, "a")
    assert a["status"] == C.PASS and a["seed"] == 0
    assert a["value"] == pytest.approx(np.mean(1 - OOD_SSIM))
    assert a["reference"] == pytest.approx(np.mean(1 - ID_SSIM))
    assert f"0.00 % of {ID_SSIM.size * OOD_SSIM.size} ID-OOD pairs tied" in a["detail"]


def test_change_claim_fails_on_ties_even_with_a_positive_gap(tmp_path: Path) -> None:
    saturated_id = np.array([1.0, 1.0, 0.9, 1.0])
    saturated_ood = np.array([1.0, 0.2])  # 3 of 8 pairs tied at SSIM = 1
    files = write_scores(
        tmp_path,
        "dg",
        0,
        {
            "test_id": {"ssim": saturated_id, "l2": -saturated_id},
            "near": {"ssim": saturated_ood, "l2": -saturated_ood},
        },
    )
    scores = C.Scores.from_files(files, [], "test_id", ["near"])
    (a,) = C.change_claim(scores, C.claims_spec(SECTION))
    assert a["difference"] > 0
    assert C.tied_pairs(1 - saturated_id, 1 - saturated_ood) == 3
    assert a["status"] == C.FAIL and "37.50 % of 8" in a["detail"]
    loose = C.claims_spec({**SECTION, "tie_fraction": 0.5})
    assert C.change_claim(scores, loose)[0]["status"] == C.PASS


def test_change_claim_fails_when_ood_changes_less(tmp_path: Path) -> None:
    files = write_scores(
        tmp_path, "dg", 0, {"test_id": {"ssim": OOD_SSIM}, "near": {"ssim": ID_SSIM}}
    )
    scores = C.Scores.from_files(files, [], "test_id", ["near"])
    (a,) = C.change_claim(scores, C.claims_spec(SECTION))
    assert a["status"] == C.FAIL and a["difference"] < 0


def test_change_of_an_unbounded_distance_is_the_distance() -> None:
    assert C.change(np.array([-2.0, -0.5]), "l2").tolist() == [2.0, 0.5]
    assert C.change(np.array([0.25]), "ssim").tolist() == [0.75]


def test_baseline_claims_pass_and_fail_per_baseline(tmp_path: Path) -> None:
    frame = C.evaluate_claims(make_scores(tmp_path), C.claims_spec(SECTION))
    dg = auroc(ID_L2, OOD_L2)
    for name, label in (("msp", "MSP"), ("ebo", "EBO")):
        b = row(frame, "b", label)
        assert b["value"] == pytest.approx(dg)
        assert b["reference"] == pytest.approx(
            auroc(
                MSP["test_id"] if name == "msp" else EBO["test_id"],
                MSP["near"] if name == "msp" else EBO["near"],
            )
        )
        assert b["status"] == (C.PASS if b["value"] > b["reference"] else C.FAIL)
    statuses = set(frame.loc[frame["claim"] == "b", "status"])
    assert statuses == {C.PASS}  # the baselines' OOD images inside the ID range lose to DiffGuard
    worse = C.claims_spec({**SECTION, "distance": "ssim"})
    files = write_scores(
        tmp_path / "w", "dg", 0, {"test_id": {"ssim": OOD_SSIM[:4]}, "near": {"ssim": ID_SSIM[:4]}}
    )
    bases = write_baselines(
        tmp_path / "w",
        {
            "test_id": {"msp": MSP["test_id"][:4], "ebo": EBO["test_id"][:4]},
            "near": {"msp": MSP["near"], "ebo": EBO["near"]},
        },
    )
    failing = C.baseline_claims(C.Scores.from_files(files, bases, "test_id", ["near"]), worse)
    assert {r["status"] for r in failing} == {C.FAIL}


def test_combination_claim_uses_the_workflow_combination_on_aligned_images(tmp_path: Path) -> None:
    frame = C.evaluate_claims(make_scores(tmp_path), C.claims_spec(SECTION))
    c = row(frame, "c")
    # by hand, in the DiffGuard tables' order (the baseline files are written reversed)
    combined_id = combine(ID_L2, ID_L2, EBO["test_id"], EBO["test_id"], "rank_average")
    combined_ood = combine(ID_L2, OOD_L2, EBO["test_id"], EBO["near"], "rank_average")
    assert c["value"] == pytest.approx(auroc(combined_id, combined_ood))
    assert c["reference"] == pytest.approx(auroc(EBO["test_id"], EBO["near"]))
    assert c["status"] == (C.PASS if c["value"] > c["reference"] else C.FAIL)
    assert "[rank_average]" in c["comparison"]


def test_pair_claims_per_common_seed_and_not_run(tmp_path: Path) -> None:
    scores = make_scores(tmp_path)
    frame = C.evaluate_claims(scores, C.claims_spec(SECTION))
    d = row(frame, "d")
    assert d["status"] == C.PASS  # without the blend the OOD images stay closer
    assert d["value"] == pytest.approx(auroc(ID_SSIM, OOD_SSIM))
    assert d["reference"] == pytest.approx(auroc(ID_SSIM, OOD_SSIM + 0.35))
    e = row(frame, "e")  # oracle = predicted scores: not larger, so it fails
    assert e["status"] == C.FAIL and e["difference"] == 0
    missing = C.evaluate_claims(
        make_scores(tmp_path / "m", experiments=("dg",)), C.claims_spec(SECTION)
    )
    for claim, name in (("d", "x0, nox0"), ("e", "orc")):
        r = row(missing, claim)
        assert r["status"] == C.NOT_RUN and name in r["detail"] and r["seed"] == ""
    off = C.claims_spec({**SECTION, "x0_ablation": None, "combination": None})
    nulls = C.evaluate_claims(scores, off)
    assert row(nulls, "d")["status"] == row(nulls, "c")["status"] == C.NOT_RUN


def test_pair_claim_rows_per_seed(tmp_path: Path) -> None:
    files = []
    for seed, gap in ((0, 0.3), (1, -0.3)):
        files += write_scores(
            tmp_path, "x0", seed, {"test_id": {"ssim": ID_SSIM}, "near": {"ssim": OOD_SSIM}}
        )
        files += write_scores(
            tmp_path,
            "nox0",
            seed,
            {"test_id": {"ssim": ID_SSIM - gap}, "near": {"ssim": OOD_SSIM + 0.5}},
        )
    files += write_scores(
        tmp_path, "nox0", 2, {"test_id": {"ssim": ID_SSIM}, "near": {"ssim": OOD_SSIM}}
    )
    scores = C.Scores.from_files(files, [], "test_id", ["near"])
    rows = C.pair_claim(scores, ("d", "x"), ("x0", "nox0"), "ssim", "near")
    assert [r["seed"] for r in rows] == [0, 1]  # seed 2: only one side ran


def test_several_sets_are_averaged(tmp_path: Path) -> None:
    near2 = np.array([0.3, 0.96, 0.2])
    files = write_scores(
        tmp_path,
        "x0",
        0,
        {"test_id": {"ssim": ID_SSIM}, "a": {"ssim": OOD_SSIM}, "b": {"ssim": near2}},
    )
    files += write_scores(
        tmp_path,
        "nox0",
        0,
        {"test_id": {"ssim": ID_SSIM}, "a": {"ssim": ID_SSIM}, "b": {"ssim": ID_SSIM}},
    )
    scores = C.Scores.from_files(files, [], "test_id", ["a", "b"])
    (r,) = C.pair_claim(scores, ("d", "x"), ("x0", "nox0"), "ssim", "near")
    assert r["value"] == pytest.approx((auroc(ID_SSIM, OOD_SSIM) + auroc(ID_SSIM, near2)) / 2)


def test_tune_file_sets_distance_and_rule(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"tune": "t", "distance": "ssim", "combination_rule": "cascade"}))
    spec = C.claims_spec({**SECTION, "tune": "t"}, chosen)
    assert spec.distance == "ssim" and spec.combination["rule"] == "cascade"
    assert spec.chosen_by == "tune t"
    chosen.write_text(json.dumps({"distance": "l2", "combination_rule": None}))
    assert C.claims_spec({**SECTION, "tune": "t"}, chosen).combination["rule"] == "rank_average"
    chosen.write_text(json.dumps({"distance": "l2"}))
    with pytest.raises(ValueError, match=r"chosen.json: no key\(s\) \['combination_rule'\]"):
        C.claims_spec(SECTION, chosen)
    chosen.write_text("{")
    with pytest.raises(ValueError, match="chosen.json: not JSON"):
        C.read_chosen(chosen)


def test_missing_distance_column_names_the_file(tmp_path: Path) -> None:
    scores = make_scores(tmp_path)
    with pytest.raises(KeyError, match=r"dg/test_id/seed-0.csv.*'score_gmsd'"):
        scores.column("dg", "test_id", 0, "gmsd")


def test_stage_writes_the_rendered_table_and_the_paper_section(tmp_path: Path) -> None:
    scores = make_scores(tmp_path)
    outputs = {k: tmp_path / f"claims.{k}" for k in ("csv", "md", "tex")}
    C.check_claims_stage(
        score_files=list(scores.files.values()),
        baseline_files=list(scores.baseline_files.values()),
        section={**SECTION, "oracle": {"predicted": "dg", "oracle": "absent"}},
        chosen_file=None,
        id_set="test_id",
        ood_sets=["near"],
        run="r",
        outputs=outputs,
    )
    md = outputs["md"].read_text()
    assert "| Claim | Seed | Compared | Measured | Threshold | Result |" in md
    assert "| pass |" in md and "| not run |" in md and "fixed in the `claims` config" in md
    tex = outputs["tex"].read_text()
    assert r"\label{tab:claims}" in tex and r"\^{x}0" in tex and "Δ" not in tex and "−" not in tex
    frame = C.read_claims(outputs["csv"])
    assert list(frame.columns) == list(C.COLUMNS)
    text = claims_section(frame)
    assert r"\input{tables/claims.tex}" in text and "not run (experiment(s) absent" in text
    assert "(e) oracle labels beat predicted labels: not run" in text
    failed = frame.assign(status=C.FAIL)
    assert "does not hold on this run" in C.claims_paragraph(failed)
    assert "does not reproduce it" in C.claims_paragraph(failed)
    assert claims_section(None) == ""


# ---------------------------------------------------------------------------------- the plan
def plan_of(config: dict):
    from types import SimpleNamespace

    from diffguard.plan import run_plan

    workflow = SimpleNamespace(basedir=str(REPO), modifier=SimpleNamespace(skip_validation=False))
    return run_plan(config, workflow)


def tiny() -> dict:
    return yaml.safe_load((REPO / "config/tiny.yaml").read_text())


def test_plan_fills_defaults_and_lists_only_test_inputs() -> None:
    config = tiny()
    config["claims"] = {}
    plan = plan_of(config)
    assert (
        plan.claims["baselines"] == ["msp", "ebo"]
        and plan.claims["x0_ablation"]["with"] == "gdm_main"
    )
    inputs = plan.claims_inputs()
    # tiny has gdm_main but no gdm_no_x0_hat or cfg_oracle: (d) and (e) are reported not run
    assert plan.claim_experiments() == ["cfg_main", "gdm_main"]
    assert all(f"/{plan.id_set}/" in p or "/near_digits/" in p for p in inputs["scores"])
    assert inputs["chosen"] == []


def test_plan_errors_name_the_key() -> None:
    config = tiny()
    config["claims"] = {"distance": "gmsd"}
    with pytest.raises(ConfigError, match=r"claims.distance: 'gmsd' is not one of `distances`"):
        _ = plan_of(config).claims
    config = tiny()
    config["claims"] = {"sets": "far"}
    config["datasets"]["far_photos"]["role"] = "near"
    with pytest.raises(ConfigError, match="claims.sets: 'far', but the run has no far OOD"):
        _ = plan_of(config).claim_sets


def test_plan_claims_tune_must_name_a_tune() -> None:
    config = tiny()
    config["claims"] = {"tune": "nope"}
    with pytest.raises(ConfigError, match="claims.tune: 'nope' is not a key of `tune`"):
        _ = plan_of(config).claims
