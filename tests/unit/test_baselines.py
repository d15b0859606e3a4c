"""Post-hoc baselines: hand-checked values, synthetic separation, equivalences and invariances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from diffguard.baselines import (
    BASELINES,
    EBO,
    KNN,
    MLS,
    MSP,
    ODIN,
    CachedOutputs,
    DeepEnsemble,
    Mahalanobis,
    MCDropout,
    ReAct,
    ViM,
    make_baseline,
    mean_softmax_scores,
    odin_scores,
)
from diffguard.metrics import ood_metrics

K, D, BLOCK = 4, 48, 8


@dataclass
class Problem:
    """ID: K Gaussian classes, each mean spread over its own block of BLOCK feature dims;
    OOD: two clusters on the remaining dims (far from every class, unseen by the head)."""

    weight: np.ndarray
    bias: np.ndarray
    train: CachedOutputs
    test_id: CachedOutputs
    test_ood: CachedOutputs


def _outputs(
    f: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, rng: np.random.Generator
) -> CachedOutputs:
    logits = f @ w.T + b
    members = np.stack([f @ (w + rng.normal(0, 0.025, w.shape)).T + b for _ in range(3)])
    # MC dropout on the penultimate features (p = 0.1, inverted scaling)
    masks = rng.random((8, *f.shape)) > 0.1
    mc = np.stack([(f * m / 0.9) @ w.T + b for m in masks])
    return CachedOutputs(logits=logits, features=f, labels=y, ensemble_logits=members, mc_logits=mc)


def _problem(seed: int = 0, n_train: int = 400, n_test: int = 150) -> Problem:
    rng = np.random.default_rng(seed)
    means = np.zeros((K, D))
    ood_centres = np.zeros((2, D))
    for k in range(K):
        means[k, k * BLOCK : (k + 1) * BLOCK] = 2.0
    for j in range(2):
        ood_centres[j, (K + j) * BLOCK : (K + j + 1) * BLOCK] = 2.0
    # half the linear discriminant of unit-covariance Gaussians: mu_k . f - |mu_k|^2 / 2
    w = 0.5 * means
    b = -0.25 * (means**2).sum(axis=1)

    def draw(n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, centres.shape[0], n)
        return centres[y] + rng.normal(size=(n, D)), y

    f_tr, y_tr = draw(n_train, means)
    f_id, y_id = draw(n_test, means)
    f_ood, _ = draw(n_test, ood_centres)
    return Problem(
        weight=w,
        bias=b,
        train=_outputs(f_tr, y_tr, w, b, rng),
        test_id=_outputs(f_id, y_id, w, b, rng),
        test_ood=_outputs(f_ood, -np.ones(n_test, dtype=int), w, b, rng),
    )


@pytest.fixture(scope="module")
def problem() -> Problem:
    return _problem()


def _fit(name: str, p: Problem, **params: object) -> object:
    return make_baseline(name, weight=p.weight, bias=p.bias, **params).fit(p.train)


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "odin"] + ["odin"])
def test_every_baseline_separates_clusters(name: str, problem: Problem) -> None:
    params = {"noise": 0.0} if name == "odin" else {}
    baseline = _fit(name, problem, **params)
    s_id = baseline.score(problem.test_id)
    s_ood = baseline.score(problem.test_ood)
    assert s_id.shape == (len(problem.test_id),) and s_id.dtype == np.float64
    assert ood_metrics(s_id, s_ood)["auroc"] > 90.0


def test_hand_checked_msp_mls_ebo() -> None:
    logits = np.array([[0.0, 0.0, 0.0], [0.0, np.log(2.0), np.log(3.0)]])
    data = CachedOutputs(logits=logits)
    # row 0: softmax 1/3 each, energy log 3; row 1: softmax (1, 2, 3) / 6, energy log 6
    assert MSP().fit(data).score(data) == pytest.approx([1 / 3, 0.5])
    assert MLS().fit(data).score(data) == pytest.approx([0.0, np.log(3.0)])
    assert EBO().fit(data).score(data) == pytest.approx([np.log(3.0), np.log(6.0)])
    # T = 2: 2 * log(sum exp(l / 2)) = 2 log 3 and 2 log(1 + sqrt 2 + sqrt 3)
    expected = [2 * np.log(3.0), 2 * np.log(1 + np.sqrt(2) + np.sqrt(3))]
    assert EBO(temperature=2.0).fit(data).score(data) == pytest.approx(expected)
    # ODIN without perturbation = MSP of logits / T; T = 1 -> MSP
    assert ODIN(temperature=1.0, noise=0.0).fit(data).score(data) == pytest.approx([1 / 3, 0.5])


def test_react_with_huge_percentile_equals_ebo(problem: Problem) -> None:
    react = ReAct(problem.weight, problem.bias, percentile=100.0).fit(problem.train)
    # every train entry is <= the 100th percentile, so nothing is clipped
    got = react.score(problem.train)
    assert got == pytest.approx(EBO().fit(problem.train).score(problem.train), rel=1e-12)
    # the default percentile does clip and changes the scores
    clipped = ReAct(problem.weight, problem.bias).fit(problem.train).score(problem.train)
    assert np.abs(clipped - got).max() > 1.0


def test_deep_ensemble_of_one_equals_msp(problem: Problem) -> None:
    one = CachedOutputs(ensemble_logits=problem.test_id.logits[None])
    for average in ("logits", "softmax"):
        got = DeepEnsemble(average).fit(one).score(one)
        assert got == pytest.approx(MSP().fit(problem.test_id).score(problem.test_id), rel=1e-12)


def test_deep_ensemble_averages_logits_as_openood() -> None:
    # members [2, 0] and [0, 0]: OpenOOD's softmax of the mean logits is softmax([1, 0]);
    # the mean softmax of Lakshminarayanan et al. differs
    members = np.stack([np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]])])
    data = CachedOutputs(ensemble_logits=members)
    assert DeepEnsemble().fit(data).score(data) == pytest.approx([np.e / (np.e + 1)])
    p = np.exp(2) / (np.exp(2) + 1)
    assert DeepEnsemble("softmax").fit(data).score(data) == pytest.approx([(p + 0.5) / 2])
    with pytest.raises(ValueError, match="average must be softmax|logits"):
        DeepEnsemble("median")


def test_mc_dropout_averages() -> None:
    passes = [np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]])]
    p = np.exp(2) / (np.exp(2) + 1)
    assert mean_softmax_scores(passes) == pytest.approx([(p + 0.5) / 2])
    # OpenOOD's variant averages logits first: softmax([1, 0])
    assert mean_softmax_scores(passes, "logits") == pytest.approx([np.e / (np.e + 1)])
    data = CachedOutputs(mc_logits=np.stack(passes))
    # the baseline's default is OpenOOD's DropoutPostProcessor
    assert MCDropout().fit(data).score(data) == pytest.approx([np.e / (np.e + 1)])
    assert MCDropout("softmax").fit(data).score(data) == pytest.approx([(p + 0.5) / 2])


def test_scores_are_per_sample(problem: Problem) -> None:
    """Scoring a subset gives the same values as scoring everything (no batch coupling)."""
    idx = np.array([5, 0, 17, 3])
    for name in BASELINES:
        params = {"noise": 0.0} if name == "odin" else {}
        baseline = _fit(name, problem, **params)
        full = baseline.score(problem.test_ood)
        part = baseline.score(problem.test_ood.subset(idx))
        assert part == pytest.approx(full[idx], rel=1e-9, abs=1e-9), name


def test_logit_shift_invariances(problem: Problem) -> None:
    data = problem.test_id
    shift = np.random.default_rng(1).normal(size=(len(data), 1))
    moved = CachedOutputs(logits=data.logits + shift)
    assert MSP().fit(moved).score(moved) == pytest.approx(MSP().fit(data).score(data))
    base = MLS().fit(data).score(data)
    assert MLS().fit(moved).score(moved) == pytest.approx(base + shift[:, 0])
    base = EBO().fit(data).score(data)
    assert EBO().fit(moved).score(moved) == pytest.approx(base + shift[:, 0])


def test_knn_invariant_to_feature_scale_and_exact(problem: Problem) -> None:
    knn = KNN(k=5).fit(problem.train)
    got = knn.score(problem.test_ood)
    scaled = KNN(k=5).fit(CachedOutputs(features=3.0 * problem.train.features))
    assert scaled.score(CachedOutputs(features=0.5 * problem.test_ood.features)) == pytest.approx(
        got
    )

    # brute-force reference: 5th smallest cosine distance, small chunks to cover the loop
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cos = unit(problem.test_ood.features) @ unit(problem.train.features).T
    expected = -np.sort(1.0 - cos, axis=1)[:, 4]
    chunked = KNN(k=5, chunk_elements=1000).fit(problem.train)
    # (scores normalise with |f| + 1e-10 as OpenOOD, hence the 1e-9 tolerance)
    assert chunked.score(problem.test_ood) == pytest.approx(expected, abs=1e-9)
    assert got == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="k=1000"):
        KNN(k=1000).fit(problem.train)


def test_mahalanobis_affine_invariance_and_value(problem: Problem) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(D, D)) + 3 * np.eye(D)
    c = rng.normal(size=D)
    base = Mahalanobis().fit(problem.train).score(problem.test_ood)
    tr = CachedOutputs(features=problem.train.features @ a.T + c, labels=problem.train.labels)
    te = CachedOutputs(features=problem.test_ood.features @ a.T + c)
    assert Mahalanobis().fit(tr).score(te) == pytest.approx(base, rel=1e-6)
    # direct formula on one sample
    f, y = problem.train.features, problem.train.labels
    means = np.stack([f[y == k].mean(0) for k in range(K)])
    resid = f - means[y]
    prec = np.linalg.inv(resid.T @ resid / len(f))
    x = problem.test_ood.features[0]
    expected = max(-(x - m) @ prec @ (x - m) for m in means)
    assert base[0] == pytest.approx(expected, rel=1e-9)


def test_vim_rotation_invariance_and_formula(problem: Problem) -> None:
    vim = ViM(problem.weight, problem.bias, dim=8).fit(problem.train)
    base = vim.score(problem.test_ood)
    # rotate the feature space and the head together: logits unchanged, scores unchanged
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(D, D)))
    rot = ViM(problem.weight @ q.T, problem.bias, dim=8).fit(
        CachedOutputs(features=problem.train.features @ q.T)
    )
    got = rot.score(CachedOutputs(features=problem.test_ood.features @ q.T))
    assert got == pytest.approx(base, rel=1e-8, abs=1e-8)
    # formula: energy - alpha * residual norm outside the top-8 principal directions about u
    w, b, f = problem.weight, problem.bias, problem.train.features
    u = -np.linalg.pinv(w) @ b
    _, _, vt = np.linalg.svd(f - u, full_matrices=True)
    null = vt[8:].T
    res_tr = np.linalg.norm((f - u) @ null, axis=1)
    alpha = (f @ w.T + b).max(1).mean() / res_tr.mean()
    x = problem.test_ood.features
    energy = np.log(np.exp(x @ w.T + b).sum(1))
    expected = energy - alpha * np.linalg.norm((x - u) @ null, axis=1)
    assert base == pytest.approx(expected, rel=1e-8)
    assert vim.alpha == pytest.approx(alpha)
    assert ViM(np.zeros((10, 2048)), np.zeros(10)).dim == 1000
    with pytest.raises(ValueError, match="dim"):
        ViM(problem.weight, problem.bias, dim=D)


class _Linear(torch.nn.Module):
    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(w))
            self.fc.bias.copy_(torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_odin_matches_closed_form_for_linear_model(problem: Problem) -> None:
    w, b = problem.weight, problem.bias
    model = _Linear(w, b).train()
    x_np = problem.test_ood.features[:20]
    x = torch.from_numpy(x_np.reshape(20, 1, 6, 8))
    t, eps = 10.0, 0.05
    got = odin_scores(model, x, temperature=t, noise=eps, batch_size=7)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    # gradient of CE(l / T, y) wrt x for l = W x + b is W^T (softmax(l / T) - onehot(y)) / T
    logits = x_np @ w.T + b
    prob = np.exp(logits / t - (logits / t).max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    onehot = np.eye(K)[logits.argmax(1)]
    grad = (prob - onehot) @ w / t
    x2 = x_np - eps * np.sign(grad)
    l2 = (x2 @ w.T + b) / t
    expected = np.exp(l2 - l2.max(1, keepdims=True))
    expected = (expected / expected.sum(1, keepdims=True)).max(1)
    assert got == pytest.approx(expected, rel=1e-10)
    # the perturbation raises the tempered confidence; noise 0 is temperature-scaled MSP
    plain = odin_scores(model, x, temperature=t, noise=0.0)
    assert (got > plain).all()
    assert plain == pytest.approx(
        MSP().fit(CachedOutputs(logits=logits / t)).score(CachedOutputs(logits=logits / t))
    )
    # ODIN baseline returns precomputed scores when present
    cached = CachedOutputs(logits=logits, odin_scores=got)
    assert ODIN().fit(cached).score(cached) == pytest.approx(got)


def test_missing_field_errors_name_baseline_and_field(problem: Problem) -> None:
    logits_only = CachedOutputs(logits=problem.test_id.logits)
    with pytest.raises(ValueError, match=r"'knn' needs CachedOutputs.features"):
        KNN().fit(logits_only)
    with pytest.raises(ValueError, match=r"'mahalanobis' needs CachedOutputs.labels"):
        Mahalanobis().fit(CachedOutputs(features=problem.train.features))
    with pytest.raises(ValueError, match=r"'deep_ensemble' needs CachedOutputs.ensemble_logits"):
        DeepEnsemble().fit(logits_only).score(logits_only)
    with pytest.raises(ValueError, match=r"'mc_dropout' needs CachedOutputs.mc_logits"):
        MCDropout().fit(logits_only).score(logits_only)
    with pytest.raises(ValueError, match=r"'odin' needs CachedOutputs.odin_scores"):
        ODIN().fit(logits_only).score(logits_only)
    with pytest.raises(RuntimeError, match="before score"):
        KNN().score(problem.test_id)
    with pytest.raises(KeyError, match="valid"):
        make_baseline("gram")
    with pytest.raises(ValueError, match="'vim' needs the final layer"):
        make_baseline("vim")
    with pytest.raises(ValueError, match="features have D=16"):
        ViM(problem.weight, problem.bias).fit(CachedOutputs(features=np.ones((5, 16))))


def test_cached_outputs_validation() -> None:
    with pytest.raises(ValueError, match="features contains NaN"):
        CachedOutputs(logits=np.zeros((2, 3)), features=np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="number of samples"):
        CachedOutputs(logits=np.zeros((2, 3)), features=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"mc_logits must be \(T, N, K\)"):
        CachedOutputs(mc_logits=np.zeros((2, 3)))
    # (N, T, K) by mistake: N disagrees with the logits
    with pytest.raises(ValueError, match="number of samples"):
        CachedOutputs(logits=np.zeros((5, 3)), mc_logits=np.zeros((5, 10, 3)))
    with pytest.raises(ValueError, match="number of classes"):
        CachedOutputs(logits=np.zeros((5, 3)), ensemble_logits=np.zeros((2, 5, 4)))
    with pytest.raises(TypeError, match="labels must be integers"):
        CachedOutputs(labels=np.array([0.5]))
    assert len(CachedOutputs(mc_logits=np.zeros((10, 5, 3)))) == 5
