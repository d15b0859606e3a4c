"""OOD metrics: sklearn agreement, hand-computed FPR@95 conventions with ties, averages, best-of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

from diffguard.metrics import (
    METRIC_DEFINITIONS,
    METRIC_KEYS,
    METRIC_LABELS,
    evaluate,
    ood_metrics,
    take_best_over,
)


def test_matches_sklearn_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    id_s = rng.normal(1.0, 1.0, 300)
    ood_s = rng.normal(0.0, 1.5, 200)
    m = ood_metrics(id_s, ood_s)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_s, ood_s]
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(y, s), abs=1e-10)
    p, r, _ = precision_recall_curve(y, s)
    assert m["aupr_in"] == pytest.approx(100 * auc(r, p), abs=1e-10)
    p, r, _ = precision_recall_curve(1 - y, -s)
    assert m["aupr_out"] == pytest.approx(100 * auc(r, p), abs=1e-10)
    # no ties: sklearn's default ROC (drop_intermediate=True) gives the same FPR@95
    fpr, tpr, _ = roc_curve(y, s)
    assert m["fpr95_id_recall"] == pytest.approx(100 * fpr[np.argmax(tpr >= 0.95)], abs=1e-10)
    fpr, tpr, _ = roc_curve(1 - y, -s)
    assert m["fpr95_ood_recall"] == pytest.approx(100 * fpr[np.argmax(tpr >= 0.95)], abs=1e-10)
    # the two FPR conventions are different quantities on this asymmetric example
    assert abs(m["fpr95_id_recall"] - m["fpr95_ood_recall"]) > 1.0


def test_fpr95_by_counting_thresholds() -> None:
    """Both FPR@95 equal a direct sweep (largest threshold with TPR >= 0.95)."""
    rng = np.random.default_rng(1)
    id_s = np.round(rng.normal(1.0, 1.0, 97), 1)  # rounding creates many ties
    ood_s = np.round(rng.normal(0.0, 1.0, 61), 1)

    def sweep(pos: np.ndarray, neg: np.ndarray) -> float:
        for t in np.unique(np.r_[pos, neg])[::-1]:
            if (pos >= t).mean() >= 0.95:
                return 100 * (neg >= t).mean()
        raise AssertionError

    m = ood_metrics(id_s, ood_s)
    assert m["fpr95_id_recall"] == pytest.approx(sweep(id_s, ood_s))
    assert m["fpr95_ood_recall"] == pytest.approx(sweep(-ood_s, -id_s))


def test_all_equal_scores() -> None:
    # a single threshold: everything accepted (TPR = FPR = 1) -> both FPRs 100 %, AUROC chance
    m = ood_metrics(np.full(4, 0.3), np.full(6, 0.3))
    assert m["auroc"] == pytest.approx(50.0)
    assert m["fpr95_id_recall"] == pytest.approx(100.0)
    assert m["fpr95_ood_recall"] == pytest.approx(100.0)
    # precision is the class prior at the only point; with sklearn's (recall 0, precision 1)
    # end point the trapezoid is (1 + prior) / 2
    assert m["aupr_in"] == pytest.approx(100 * (1 + 0.4) / 2)
    assert m["aupr_out"] == pytest.approx(100 * (1 + 0.6) / 2)


def test_ties_straddling_the_threshold() -> None:
    # 20 ID: 18 at 10 and 2 at 1; 5 OOD: 5, 1, 1, 0, 0.
    id_s = np.array([10.0] * 18 + [1.0, 1.0])
    ood_s = np.array([5.0, 1.0, 1.0, 0.0, 0.0])
    m = ood_metrics(id_s, ood_s)
    # ID recall: t=10 -> 18/20 = 0.90; t=5 -> 0.90; t=1 -> 20/20. The tie block at 1 must be
    # taken whole: OOD accepted at t=1 are {5, 1, 1} -> 3/5.
    assert m["fpr95_id_recall"] == pytest.approx(60.0)
    # OOD recall (score -s): t=0 catches {0,0} 2/5; t=-1 adds {1,1} 4/5 while rejecting the two
    # ID at 1; t=-5 catches 5/5 and still rejects only those 2 of 20 ID -> 10 %.
    assert m["fpr95_ood_recall"] == pytest.approx(10.0)
    # AUROC = P(ID > OOD) + P(tie)/2 over 100 pairs: 18*5 + 2*2 wins (vs 0s) + 0.5*2*2 ties = 96
    assert m["auroc"] == pytest.approx(96.0)


def test_fpr95_keeps_collinear_operating_point() -> None:
    # 20 ID: 18 at 10, one at 3, one at 2; 5 OOD: 3, 2, 0, 0, 0. Thresholds (FPR, TPR):
    # 10 -> (0, .90), 3 -> (.2, .95), 2 -> (.4, 1), 0 -> (1, 1). The point at t=3 is collinear
    # with its neighbours, which sklearn's default drop_intermediate=True removes (-> 40 %).
    id_s = np.array([10.0] * 18 + [3.0, 2.0])
    ood_s = np.array([3.0, 2.0, 0.0, 0.0, 0.0])
    assert ood_metrics(id_s, ood_s)["fpr95_id_recall"] == pytest.approx(20.0)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(20), np.zeros(5)], np.r_[id_s, ood_s])
    assert fpr[np.argmax(tpr >= 0.95)] == pytest.approx(0.4)  # the released code's value


def test_perfect_and_reversed() -> None:
    id_s = np.linspace(1.0, 2.0, 50)
    ood_s = np.linspace(-2.0, 0.5, 30)
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(100.0)
    assert m["aupr_in"] == pytest.approx(100.0)
    assert m["aupr_out"] == pytest.approx(100.0)
    assert m["fpr95_id_recall"] == 0.0
    assert m["fpr95_ood_recall"] == 0.0
    r = ood_metrics(-id_s, -ood_s)
    assert r["auroc"] == pytest.approx(0.0)
    assert r["fpr95_id_recall"] == pytest.approx(100.0)
    assert r["fpr95_ood_recall"] == pytest.approx(100.0)


def test_invariant_to_increasing_transform_and_shuffling() -> None:
    rng = np.random.default_rng(2)
    id_s, ood_s = rng.normal(1, 1, 120), rng.normal(0, 1, 80)
    base = ood_metrics(id_s, ood_s)
    moved = ood_metrics(np.exp(3 * id_s) + 7, rng.permutation(np.exp(3 * ood_s) + 7))
    for key in METRIC_KEYS:
        assert moved[key] == pytest.approx(base[key], abs=1e-9)


@pytest.mark.parametrize(
    ("id_s", "ood_s", "message"),
    [
        ([0.1, np.nan], [0.0], "id_scores"),
        ([0.1, 0.2], [0.0, np.inf], "ood_scores"),
        ([], [0.0], "id_scores is empty"),
        ([[0.1, 0.2]], [0.0], "1-D"),
    ],
)
def test_bad_input_raises(id_s: list, ood_s: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ood_metrics(id_s, ood_s)


def test_nan_message_names_index() -> None:
    with pytest.raises(ValueError, match=r"ood_scores contains 1 non-finite.*index 2"):
        ood_metrics([1.0, 2.0], [0.0, 0.5, np.nan])


def test_labels_name_definition_and_openood_commits() -> None:
    """Each convention by its positive class and OpenOOD's commit range, not a release name:
    OpenOOD's v1.5 tag (8d44375) still computed the ID-positive FPR@95; 873e8c2 made OOD the
    positive class and swapped AUPR_IN/OUT until 4a72488."""
    assert set(METRIC_LABELS) == set(METRIC_KEYS) == set(METRIC_DEFINITIONS)
    id_pos, ood_pos = METRIC_DEFINITIONS["fpr95_id_recall"], METRIC_DEFINITIONS["fpr95_ood_recall"]
    assert id_pos.startswith("FPR@95TPR, ID positive") and "DiffGuard" in id_pos
    assert "8d44375" in id_pos and "v1.5 tag" in id_pos and "873e8c2" not in id_pos
    assert ood_pos.startswith("FPR@95TPR, OOD positive") and "873e8c2" in ood_pos
    assert "v1.5" not in ood_pos and "DiffGuard" not in ood_pos
    assert METRIC_DEFINITIONS["aupr_in"].startswith("AUPR-IN, ID positive")
    assert METRIC_DEFINITIONS["aupr_out"].startswith("AUPR-OUT, OOD positive")
    for key in ("aupr_in", "aupr_out"):
        assert "873e8c2" in METRIC_DEFINITIONS[key] and "4a72488" in METRIC_DEFINITIONS[key]
    for label in METRIC_LABELS.values():
        assert "OpenOOD v1" not in label  # a release name does not say which convention


def test_labels_match_what_is_computed() -> None:
    """ID positive: OOD accepted at 95% ID recall; OOD positive: ID rejected at 95% OOD recall."""
    id_s = np.arange(100, dtype=float)  # 95% ID recall: threshold 5 keeps ids 5..99
    ood_s = np.array([-1.0, 2.0, 6.0, 50.0] * 5)  # 10 of 20 OOD >= 5 are accepted
    ood_rejected = np.sort(ood_s)[: int(np.ceil(0.95 * ood_s.size))].max()  # 95% OOD recall
    metrics = ood_metrics(id_s, ood_s)
    assert metrics["fpr95_id_recall"] == pytest.approx(100 * np.mean(ood_s >= 5))
    assert metrics["fpr95_ood_recall"] == pytest.approx(100 * np.mean(id_s <= ood_rejected))


def test_evaluate_rows_and_average() -> None:
    rng = np.random.default_rng(3)
    scores = {
        "cifar10": rng.normal(2, 1, 100),
        "cifar100": rng.normal(1, 1, 80),
        "tin": rng.normal(0, 1, 90),
    }
    frame = evaluate(scores, "cifar10")
    assert list(frame.index) == ["cifar100", "tin", "average"]
    assert list(frame.columns) == list(METRIC_KEYS)
    for name in ("cifar100", "tin"):
        expected = ood_metrics(scores["cifar10"], scores[name])
        assert frame.loc[name].to_dict() == pytest.approx(expected)
    assert frame.loc["average", "auroc"] == pytest.approx(
        (frame.loc["cifar100", "auroc"] + frame.loc["tin", "auroc"]) / 2
    )
    with pytest.raises(KeyError, match="imagenet"):
        evaluate(scores, "imagenet")
    with pytest.raises(ValueError, match="need an OOD set"):
        evaluate({"cifar10": scores["cifar10"]}, "cifar10")
    with pytest.raises(ValueError, match=r"scores_by_set\['tin'\]"):
        evaluate({**scores, "tin": np.array([np.nan])}, "cifar10")


def _long_frame() -> pd.DataFrame:
    rows = []
    values = {  # (dataset, distance) -> (auroc, fpr95_id_recall)
        ("a", "l2"): (80.0, 50.0),
        ("a", "ssim"): (70.0, 40.0),
        ("b", "l2"): (60.0, 70.0),
        ("b", "ssim"): (90.0, 80.0),
    }
    roles = {"a": "near", "b": "far"}
    for dist in ("l2", "ssim"):
        per_set = []
        for ds in ("a", "b"):
            au, fp = values[(ds, dist)]
            row = {
                "method": f"DiffGuard (x, {dist})",
                "kind": "diffguard",
                "distance": dist,
                "seed": 1,
                "dataset": ds,
                "role": roles[ds],
                "auroc": au,
                "fpr95_id_recall": fp,
            }
            per_set.append(row)
        rows += per_set
        rows.append(
            {
                **per_set[0],
                "dataset": "average",
                "role": "all",
                "auroc": np.mean([r["auroc"] for r in per_set]),
                "fpr95_id_recall": np.mean([r["fpr95_id_recall"] for r in per_set]),
            }
        )
    rows.append(
        {
            "method": "KNN",
            "kind": "baseline",
            "distance": "",
            "seed": "",
            "dataset": "a",
            "role": "near",
            "auroc": 99.0,
            "fpr95_id_recall": 1.0,
        }
    )
    return pd.DataFrame(rows)


def test_take_best_over_per_set_per_metric() -> None:
    frame = _long_frame()
    out = take_best_over(frame)
    assert len(out) == len(frame) + 3  # a, b and the recomputed average
    assert out.iloc[: len(frame)].equals(frame)  # inputs kept as they were
    best = out[out["distance"] == "best"].set_index("dataset")
    # per set and metric separately: AUROC max, FPR min (from different distances on set a)
    assert best.loc["a", "auroc"] == 80.0 and best.loc["a", "fpr95_id_recall"] == 40.0
    assert best.loc["b", "auroc"] == 90.0 and best.loc["b", "fpr95_id_recall"] == 70.0
    # average of the per-set bests (85, 55), not the best of the averages (80, 60)
    assert best.loc["average", "auroc"] == pytest.approx(85.0)
    assert best.loc["average", "fpr95_id_recall"] == pytest.approx(55.0)
    assert best.loc["a", "method"] == "DiffGuard (x, best)"
    # baseline rows are left alone
    assert (out["kind"] == "baseline").sum() == 1


def test_take_best_over_recomputes_group_averages() -> None:
    # pipeline layout: per-set rows with role near/far plus average_near / average rows
    rows = []
    table = {"l2": {"a": 80.0, "c": 60.0, "b": 50.0}, "ssim": {"a": 70.0, "c": 75.0, "b": 55.0}}
    roles = {"a": "near", "c": "near", "b": "far"}
    for dist, per_set in table.items():
        meta = {"method": f"DG ({dist})", "kind": "diffguard", "experiment": "e", "distance": dist}
        for ds, au in per_set.items():
            rows.append({**meta, "dataset": ds, "role": roles[ds], "auroc": au})
        rows.append(
            {
                **meta,
                "dataset": "average_near",
                "role": "near",
                "auroc": (per_set["a"] + per_set["c"]) / 2,
            }
        )
        rows.append(
            {
                **meta,
                "dataset": "average",
                "role": "all",
                "auroc": float(np.mean(list(per_set.values()))),
            }
        )
    out = take_best_over(pd.DataFrame(rows))
    best = out[out["distance"] == "best"].set_index("dataset")["auroc"]
    assert best.to_dict() == pytest.approx(
        {"a": 80.0, "c": 75.0, "b": 55.0, "average_near": 77.5, "average": 70.0}
    )
    with pytest.raises(KeyError, match="distance"):
        take_best_over(pd.DataFrame(rows).drop(columns="distance"))
