"""Score combination rules: ID-CDF normalisation, limits, monotone invariance, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffguard.combine import COMBINATION_RULES, align_by_image, cascade, combine, id_cdf
from diffguard.evaluation import evaluate_stage
from diffguard.metrics import METRIC_KEYS, ood_metrics

RULE_PARAMS = [
    ("cascade", {}),
    ("cascade", {"q_low": 0.1, "q_high": 0.7}),
    ("rank_average", {}),
    ("rank_average", {"weight": 0.3}),
]


def _scores(seed: int = 0) -> dict[str, np.ndarray]:
    """ID and OOD scores of two partly informative, correlated detectors."""
    rng = np.random.default_rng(seed)
    n_id, n_ood = 200, 150
    z_id, z_ood = rng.normal(size=n_id), rng.normal(size=n_ood)
    return {
        "dg_id": 1.0 + z_id + rng.normal(size=n_id),
        "dg_ood": z_ood + rng.normal(size=n_ood),
        "bl_id": 1.2 + 0.5 * z_id + rng.normal(size=n_id),
        "bl_ood": 0.5 * z_ood + rng.normal(size=n_ood),
    }


def _combined(s: dict[str, np.ndarray], rule: str, **params: float) -> tuple[np.ndarray, ...]:
    c_id = combine(s["dg_id"], s["dg_id"], s["bl_id"], s["bl_id"], rule, **params)
    c_ood = combine(s["dg_id"], s["dg_ood"], s["bl_id"], s["bl_ood"], rule, **params)
    return c_id, c_ood


def _same_order(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` order every pair identically (including ties)."""
    return bool((np.sign(a[:, None] - a[None, :]) == np.sign(b[:, None] - b[None, :])).all())


def test_id_cdf_values() -> None:
    ref = np.array([1.0, 2.0, 2.0, 3.0])
    got = id_cdf(ref, np.array([0.0, 1.0, 1.5, 2.0, 3.0, 9.0]))
    # mid-rank CDF (#below + #at-or-below) / (2 n)
    assert got == pytest.approx([0.0, 1 / 8, 2 / 8, 4 / 8, 7 / 8, 1.0])


@pytest.mark.parametrize(("rule", "params"), RULE_PARAMS)
def test_monotone_invariance(rule: str, params: dict[str, float]) -> None:
    s = _scores()
    base = np.concatenate(_combined(s, rule, **params))
    # strictly increasing transforms, applied to ID reference and test alike
    moved = {
        "dg_id": np.exp(2 * s["dg_id"]),
        "dg_ood": np.exp(2 * s["dg_ood"]),
        "bl_id": s["bl_id"] ** 3 - 4,
        "bl_ood": s["bl_ood"] ** 3 - 4,
    }
    assert _same_order(base, np.concatenate(_combined(moved, rule, **params)))


@pytest.mark.parametrize(("rule", "params"), RULE_PARAMS)
def test_fitted_on_id_only(rule: str, params: dict[str, float]) -> None:
    """The score of a sample does not depend on which other test samples are scored with it."""
    s = _scores()
    full = combine(s["dg_id"], s["dg_ood"], s["bl_id"], s["bl_ood"], rule, **params)
    one = combine(s["dg_id"], s["dg_ood"][7:8], s["bl_id"], s["bl_ood"][7:8], rule, **params)
    assert one[0] == full[7]


def _assert_ranking_of(
    s: dict[str, np.ndarray], c_id: np.ndarray, c_ood: np.ndarray, key: str, strict: bool = True
) -> None:
    """The combination ranks like the raw score ``key`` (``dg`` or ``bl``)."""
    raw = np.r_[s[f"{key}_id"], s[f"{key}_ood"]]
    comb = np.r_[c_id, c_ood]
    # never contradicts the raw order ...
    if strict:
        order = np.argsort(raw, kind="stable")
        assert (np.diff(comb[order]) >= 0).all()
    # ... and loses no ID-vs-OOD order: the metrics are identical
    got, want = ood_metrics(c_id, c_ood), ood_metrics(s[f"{key}_id"], s[f"{key}_ood"])
    for metric in ("auroc", "fpr95_id_recall", "fpr95_ood_recall"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-9)


def test_cascade_limits() -> None:
    s = _scores()
    _assert_ranking_of(s, *_combined(s, "cascade", q_low=0.0, q_high=1.0), "dg")
    # with n = 200 ID-CDF values are multiples of 1/400: q = 0.3001 is never hit, so the order is
    # exactly the baseline's; at an attainable q = 0.3, test samples with a == q are ordered by
    # DiffGuard, which can reorder OOD samples among themselves but no ID-vs-OOD pair
    _assert_ranking_of(s, *_combined(s, "cascade", q_low=0.3001, q_high=0.3001), "bl")
    _assert_ranking_of(s, *_combined(s, "cascade", q_low=0.3, q_high=0.3), "bl", strict=False)
    # the defaults are in between: neither input's ranking
    c_id, c_ood = _combined(s, "cascade")
    auroc = ood_metrics(c_id, c_ood)["auroc"]
    assert auroc != pytest.approx(ood_metrics(s["dg_id"], s["dg_ood"])["auroc"])
    assert auroc != pytest.approx(ood_metrics(s["bl_id"], s["bl_ood"])["auroc"])


def test_rank_average_limits() -> None:
    s = _scores()
    _assert_ranking_of(s, *_combined(s, "rank_average", weight=1.0), "dg")
    _assert_ranking_of(s, *_combined(s, "rank_average", weight=0.0), "bl")


def test_cascade_strata_by_hand() -> None:
    # ID reference 1..10 for both; CDF of an ID value i is (2i - 1) / 20
    ref = np.arange(1.0, 11.0)
    bl_test = np.array([0.5, 5.0, 5.0, 10.0, 3.0])  # CDF 0, .45, .45, .95, .25
    dg_test = np.array([10.0, 1.0, 8.0, 0.0, 4.0])  # CDF .95, .05, .75, 0, .35
    got = cascade(ref, dg_test, ref, bl_test, q_low=0.1, q_high=0.9)
    # confident OOD: a - 1; hard: d; confident ID: 1 + a
    assert got == pytest.approx([-1.0, 0.05, 0.75, 1.95, 0.35])
    # a confident-OOD sample stays below every hard case however ID-like DiffGuard finds it,
    # a confident-ID one above every hard case however OOD-like
    assert got[0] < got[1:3].min() and got[3] > got[[1, 2, 4]].max()


def test_rank_average_by_hand() -> None:
    ref = np.arange(1.0, 11.0)
    got = combine(
        ref, np.array([10.0, 1.0]), ref, np.array([2.0, 20.0]), "rank_average", weight=0.25
    )
    assert got == pytest.approx([0.25 * 0.95 + 0.75 * 0.15, 0.25 * 0.05 + 0.75 * 1.0])


def test_errors() -> None:
    a, b = np.arange(5.0), np.arange(3.0)
    with pytest.raises(KeyError, match=r"valid: \['cascade', 'rank_average'\]"):
        combine(a, b, a, b, "max")
    with pytest.raises(TypeError, match="unknown parameters \\['weight'\\]"):
        combine(a, b, a, b, "cascade", weight=0.5)
    with pytest.raises(ValueError, match="q_low <= q_high"):
        combine(a, b, a, b, "cascade", q_low=0.6, q_high=0.5)
    with pytest.raises(ValueError, match="weight"):
        combine(a, b, a, b, "rank_average", weight=1.5)
    with pytest.raises(ValueError, match="baseline_test"):
        combine(a, b, a, np.arange(4.0), "cascade")
    with pytest.raises(ValueError, match="diffguard_id contains NaN"):
        combine(np.r_[a[:-1], np.nan], b, a, b, "cascade")
    assert set(COMBINATION_RULES) == {"cascade", "rank_average"}


def _write_tables(
    root: Path, s: dict[str, np.ndarray], order: dict[str, np.ndarray]
) -> dict[str, list[Path]]:
    """Per-image DiffGuard and baseline CSVs as the workflow writes them; the baseline rows of
    each set in ``order`` (a permutation), the DiffGuard rows in image order."""
    score_files, baseline_files = [], []
    for dataset, dg, bl in (("test_id", s["dg_id"], s["bl_id"]), ("ood", s["dg_ood"], s["bl_ood"])):
        ids = [f"{dataset}/img_{i:04d}" for i in range(dg.size)]
        score = root / "scores" / "exp" / dataset / "seed-0.csv"
        score.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"image_id": ids, "score_l2": dg}).to_csv(score, index=False)
        base = root / "baselines" / f"{dataset}.csv"
        base.parent.mkdir(parents=True, exist_ok=True)
        perm = order[dataset]
        pd.DataFrame({"image_id": np.array(ids)[perm], "msp": bl[perm]}).to_csv(base, index=False)
        score_files.append(score)
        baseline_files.append(base)
    return {"score_files": score_files, "baseline_files": baseline_files}


def _combined_metrics(
    root: Path, s: dict[str, np.ndarray], order: dict[str, np.ndarray]
) -> dict[str, float]:
    """Metrics of the DiffGuard + MSP cascade on the OOD set, by the evaluate stage."""
    out = root / "metrics.csv"
    evaluate_stage(
        **_write_tables(root, s, order),
        id_set="test_id",
        ood_sets={"ood": "far"},
        experiments={"exp": "gdm"},
        seeds=[0],
        distances=["l2"],
        baselines=["msp"],
        combinations=[{"experiment": "exp", "baseline": "msp", "rule": "cascade"}],
        headline_distance="l2",
        take_best=False,
        run="t",
        out=out,
    )
    frame = pd.read_csv(out)
    row = frame[(frame["kind"] == "combined") & (frame["dataset"] == "ood")]
    return row[list(METRIC_KEYS)].iloc[0].to_dict()


def test_combination_joins_on_image_id_not_row_position(tmp_path: Path) -> None:
    s = _scores(3)
    rng = np.random.default_rng(1)
    identity = {"test_id": np.arange(s["dg_id"].size), "ood": np.arange(s["dg_ood"].size)}
    shuffled = {k: rng.permutation(v) for k, v in identity.items()}
    in_order = _combined_metrics(tmp_path / "ordered", s, identity)
    assert in_order == pytest.approx(ood_metrics(*_combined(s, "cascade")))
    # the baseline rows of another job in another order: same pairs, same metrics ...
    assert _combined_metrics(tmp_path / "shuffled", s, shuffled) == pytest.approx(in_order)
    # ... which a positional join would not give (this test can fail)
    positional = {
        **s,
        "bl_id": s["bl_id"][shuffled["test_id"]],
        "bl_ood": s["bl_ood"][shuffled["ood"]],
    }
    assert ood_metrics(*_combined(positional, "cascade")) != pytest.approx(in_order)


def test_join_names_files_and_missing_ids() -> None:
    dg = pd.DataFrame({"image_id": ["a", "b", "c"], "score_l2": [1.0, 2.0, 3.0]})
    bl = pd.DataFrame({"image_id": ["c", "a", "d"], "msp": [0.3, 0.1, 0.4]})
    reordered = pd.DataFrame({"image_id": ["b", "c", "a"], "msp": [0.2, 0.3, 0.1]})
    aligned = align_by_image(dg, reordered, diffguard_file="dg.csv", baseline_file="b.csv")
    assert aligned["image_id"].tolist() == ["a", "b", "c"]
    assert aligned["msp"].tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"dg.csv .*b.csv.*missing from the baseline file.*'b'"):
        align_by_image(dg, bl, diffguard_file="dg.csv", baseline_file="b.csv")
    with pytest.raises(ValueError, match=r"b.csv: repeated image_id \['a'\]"):
        align_by_image(dg, pd.concat([bl, bl.iloc[[1]]]), diffguard_file="d", baseline_file="b.csv")
