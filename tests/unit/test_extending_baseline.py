"""README "Extending": a new baseline is a class in ``diffguard/baselines.py`` plus the schema's
``baselines`` enum (two files).

A toy baseline, registered here as README says, is built by name, fitted, scored and labelled
in the metrics rows exactly as the shipped ones are (``diffguard.evaluation`` reads the label
from the class, never from a separate table). The schema half is checked for every baseline by
``tests/unit/test_schema_registries.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffguard import baselines, evaluation
from diffguard.baselines import Baseline, CachedOutputs, make_baseline


class NegativeEntropy(Baseline):
    """Toy baseline: the negative softmax entropy (higher = more ID)."""

    name = "neg_entropy"
    label = "Neg. entropy"
    score_fields = ("logits",)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        z = test.logits - test.logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return (p * np.log(p + 1e-12)).sum(axis=1)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> type[Baseline]:
    monkeypatch.setitem(baselines.BASELINES, NegativeEntropy.name, NegativeEntropy)
    return NegativeEntropy


def test_a_registered_baseline_is_built_scored_and_labelled(registered: type[Baseline]) -> None:
    rng = np.random.default_rng(0)
    confident = np.eye(3)[rng.integers(0, 3, 40)] * 8.0  # ID: one large logit
    flat = rng.normal(0.0, 0.1, (40, 3))  # OOD: near-uniform softmax
    baseline = make_baseline(registered.name).fit(CachedOutputs(logits=confident))
    id_scores = baseline.score(CachedOutputs(logits=confident))
    ood_scores = baseline.score(CachedOutputs(logits=flat))
    assert id_scores.min() > ood_scores.max()  # the toy score separates the two

    frames = {
        "test_id": pd.DataFrame({registered.name: id_scores}),
        "far": pd.DataFrame({registered.name: ood_scores}),
    }
    rows = evaluation._baseline_rows(frames, [registered.name], "test_id", {"far": "far"})
    assert {r["method"] for r in rows} == {registered.label}
    far = next(r for r in rows if r["dataset"] == "far")
    assert far["auroc"] == pytest.approx(100.0)


def test_an_unregistered_baseline_is_refused_by_name() -> None:
    with pytest.raises(KeyError, match="neg_entropy.*valid"):
        make_baseline("neg_entropy")
