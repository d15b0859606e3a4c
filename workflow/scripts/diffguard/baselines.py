"""OpenOOD-style post-hoc OOD scores on cached classifier outputs (higher = more in-distribution).

Every baseline works on a :class:`CachedOutputs` (logits, penultimate features, labels and, for
the sampling baselines, logits of several ensemble members or dropout passes) and, where it needs
the final linear layer ``logits = features @ W.T + b``, on ``W`` (K x D) and ``b`` (K,).

Registry: ``BASELINES[name]`` is a class with ``fit(train) -> self`` and ``score(test) -> (N,)``;
:func:`make_baseline` builds one, passing ``W``/``b`` only to those that use them.

- ``msp``: max softmax probability (Hendrycks & Gimpel).
- ``mls``: max logit.
- ``ebo``: energy ``T * logsumexp(logits / T)`` (Liu et al.), ``T = 1``.
- ``odin``: max softmax of ``logits / T`` after input perturbation (Liang et al.); needs the model,
  see :func:`odin_scores`. On cached outputs only the ``noise = 0`` case can be computed.
- ``react``: energy of ``W @ min(f, c) + b``, ``c`` = ``percentile`` of all train feature entries.
- ``knn``: minus the cosine distance to the k-th nearest (L2-normalised) train feature.
- ``vim``: ``energy - alpha * ||residual||`` of features centred at ``u = -pinv(W) b`` outside the
  principal subspace of the train features; ``alpha`` = mean train max logit / mean train residual.
- ``mahalanobis``: ``max_c -(f - mu_c)^T P (f - mu_c)`` with class means and one tied covariance.
- ``deep_ensemble``: max softmax of the mean logits of ensemble members (OpenOOD v1).
- ``mc_dropout``: max softmax of the mean logits of stochastic (dropout) passes (OpenOOD v1).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import logsumexp, softmax

log = logging.getLogger(__name__)

_HINTS = {
    "logits": "(N, K) classifier logits",
    "features": "(N, D) penultimate features",
    "labels": "(N,) integer class labels",
    "ensemble_logits": "(M, N, K) logits of M ensemble members",
    "mc_logits": "(T, N, K) logits of T dropout passes",
    "odin_scores": "(N,) scores from diffguard.baselines.odin_scores(model, images)",
}


# ------------------------------------------------------------------------------- cached outputs
@dataclass(frozen=True, eq=False)
class CachedOutputs:
    """Classifier outputs of one dataset; every field is optional but sizes must agree.

    Attributes:
        logits: ``(N, K)`` logits.
        features: ``(N, D)`` penultimate features (input of the final linear layer).
        labels: ``(N,)`` integer labels (class indices for ID data; anything for OOD data).
        ensemble_logits: ``(M, N, K)`` logits of ``M`` independently trained classifiers.
        mc_logits: ``(T, N, K)`` logits of ``T`` forward passes with dropout on.
        odin_scores: ``(N,)`` precomputed ODIN scores (they need gradients w.r.t. the input).
    """

    logits: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    ensemble_logits: np.ndarray | None = None
    mc_logits: np.ndarray | None = None
    odin_scores: np.ndarray | None = None

    _NDIM: ClassVar[dict[str, int]] = {
        "logits": 2,
        "features": 2,
        "labels": 1,
        "ensemble_logits": 3,
        "mc_logits": 3,
        "odin_scores": 1,
    }
    _SAMPLE_AXIS: ClassVar[dict[str, int]] = {"ensemble_logits": 1, "mc_logits": 1}

    def __post_init__(self) -> None:
        sizes: dict[str, int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            arr = np.asarray(value)
            if f.name == "labels":
                if not np.issubdtype(arr.dtype, np.integer):
                    raise TypeError(f"CachedOutputs.labels must be integers, got {arr.dtype}")
            else:
                if not np.issubdtype(arr.dtype, np.floating):
                    arr = arr.astype(np.float64)
                if not np.isfinite(arr).all():
                    raise ValueError(f"CachedOutputs.{f.name} contains NaN or inf values")
            if arr.ndim != self._NDIM[f.name]:
                raise ValueError(
                    f"CachedOutputs.{f.name} must be {_HINTS[f.name]}, got shape {arr.shape}"
                )
            object.__setattr__(self, f.name, arr)
            sizes[f.name] = arr.shape[self._SAMPLE_AXIS.get(f.name, 0)]
        if not sizes:
            raise ValueError("CachedOutputs needs at least one field")
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"CachedOutputs fields disagree on the number of samples N: {sizes} (ensemble "
                "and MC logits are (members/passes, N, K))"
            )
        k = {
            n: getattr(self, n).shape[-1]
            for n in ("logits", "ensemble_logits", "mc_logits")
            if getattr(self, n) is not None
        }
        if len(set(k.values())) > 1:
            raise ValueError(f"CachedOutputs fields disagree on the number of classes K: {k}")

    def __len__(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return int(value.shape[self._SAMPLE_AXIS.get(f.name, 0)])
        return 0  # unreachable: __post_init__ requires a field

    def subset(self, index: ArrayLike) -> CachedOutputs:
        """The samples selected by ``index`` (integer indices or a boolean mask)."""
        idx = np.asarray(index)
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value = value[:, idx] if f.name in self._SAMPLE_AXIS else value[idx]
            kwargs[f.name] = value
        return CachedOutputs(**kwargs)


# ------------------------------------------------------------------------- functional scores
def _as_2d(logits: ArrayLike, name: str = "logits") -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, K), got shape {arr.shape}")
    return arr


def msp_scores(logits: ArrayLike) -> np.ndarray:
    """Maximum softmax probability of each row of ``(N, K)`` logits."""
    return softmax(_as_2d(logits), axis=1).max(axis=1)


def max_logit_scores(logits: ArrayLike) -> np.ndarray:
    """Maximum logit of each row."""
    return _as_2d(logits).max(axis=1)


def energy_scores(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` of each row."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    return temperature * logsumexp(_as_2d(logits) / temperature, axis=1)


def mean_softmax_scores(
    stacked_logits: ArrayLike | list[ArrayLike], average: str = "softmax"
) -> np.ndarray:
    """MSP of the averaged prediction of several ``(N, K)`` logit arrays stacked as ``(S, N, K)``.

    Args:
        stacked_logits: ``(S, N, K)`` array or a list of ``S`` arrays ``(N, K)`` (ensemble members
            or MC-dropout passes).
        average: ``"softmax"`` (default; the predictive mean of Gal & Ghahramani and of Deep
            Ensembles) or ``"logits"`` (softmax of the mean logits, as OpenOOD's dropout
            postprocessor does).
    """
    arr = np.asarray(stacked_logits, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"stacked logits must be (S>=1, N, K), got shape {arr.shape}")
    if average == "softmax":
        return softmax(arr, axis=2).mean(axis=0).max(axis=1)
    if average == "logits":
        return msp_scores(arr.mean(axis=0))
    raise ValueError(f"average must be 'softmax' or 'logits', got {average!r}")


def odin_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    temperature: float = 1000.0,
    noise: float = 0.0014,
    batch_size: int | None = None,
) -> np.ndarray:
    """ODIN: max softmax of ``model(x') / T``, ``x' = x - noise * sign(grad_x CE(model(x)/T, y))``.

    ``y`` is the model's prediction on ``x``; the step lowers that loss, i.e. raises the
    tempered confidence (more for ID than OOD inputs). The step is taken in the space the model
    takes as input; the original ODIN code divides the gradient sign by the normalisation std
    because its model takes normalised tensors, which equals a step of ``noise`` in [0, 1] pixel
    space, so pass [0, 1] images to a model that normalises internally to match it. The model is
    put in eval mode for the call and its mode restored afterwards; no parameter gradients are
    accumulated.

    Args:
        model: Classifier returning ``(N, K)`` logits.
        images: ``(N, ...)`` input batch on the model's device.
        temperature: ``T`` (1000 in ODIN / OpenOOD).
        noise: Perturbation magnitude (0.0014 in ODIN / OpenOOD for CIFAR).
        batch_size: Process this many images at a time (default: all at once).

    Returns:
        ``(N,)`` float64 scores.
    """
    if temperature <= 0 or noise < 0:
        raise ValueError(f"ODIN needs temperature > 0 and noise >= 0, got {temperature}, {noise}")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (N, ...) batch, got shape {tuple(images.shape)}"
        )
    step = images.shape[0] if batch_size is None else batch_size
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, images.shape[0], step):
            x = images[start : start + step].detach().clone().requires_grad_(noise > 0)
            with torch.set_grad_enabled(noise > 0):
                logits = model(x)
                if noise > 0:
                    pred = logits.argmax(dim=1)
                    loss = torch.nn.functional.cross_entropy(
                        logits / temperature, pred, reduction="sum"
                    )
                    (grad,) = torch.autograd.grad(loss, x)
            if noise > 0:
                with torch.no_grad():
                    logits = model(x.detach() - noise * torch.sign(grad))
            with torch.no_grad():
                probs = torch.softmax(logits.detach().double() / temperature, dim=1)
            out.append(probs.max(dim=1).values.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


# -------------------------------------------------------------------------------- baselines
class Baseline(ABC):
    """A post-hoc OOD score: ``fit(train)`` once, then ``score(test)`` (higher = more ID)."""

    name: ClassVar[str]
    label: ClassVar[str]  # display label: metrics' method column, tables, figure legends
    fit_fields: ClassVar[tuple[str, ...]] = ()
    score_fields: ClassVar[tuple[str, ...]] = ()
    needs_linear: ClassVar[bool] = False

    _fitted: bool = False

    def _require(self, data: CachedOutputs, names: tuple[str, ...], stage: str) -> None:
        if not isinstance(data, CachedOutputs):
            raise TypeError(
                f"baseline {self.name!r}: {stage}() expects CachedOutputs, got {type(data)}"
            )
        for name in names:
            if getattr(data, name) is None:
                raise ValueError(
                    f"baseline {self.name!r} needs CachedOutputs.{name} ({_HINTS[name]}) for "
                    f"{stage}(), but it is missing"
                )

    def fit(self, train: CachedOutputs) -> Self:
        """Fit on the ID training outputs; baselines without parameters only check the input."""
        self._require(train, self.fit_fields, "fit")
        self._fit(train)
        self._fitted = True
        return self

    def _fit(self, train: CachedOutputs) -> None:  # noqa: B027 (optional hook)
        """Estimate the baseline's statistics (no-op for parameter-free baselines)."""

    def score(self, test: CachedOutputs) -> np.ndarray:
        """``(N,)`` float64 InD-ness scores of ``test``."""
        if not self._fitted:
            raise RuntimeError(f"baseline {self.name!r}: call fit(train) before score(test)")
        self._require(test, self.score_fields, "score")
        return np.asarray(self._score(test), dtype=np.float64)

    @abstractmethod
    def _score(self, test: CachedOutputs) -> np.ndarray:
        """Scores of ``test`` (inputs already checked)."""


class _LinearHead(Baseline):
    """Baselines that recompute logits from features with the final layer ``W``, ``b``."""

    needs_linear = True

    def __init__(self, weight: ArrayLike, bias: ArrayLike) -> None:
        w = np.asarray(weight, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(
                f"baseline {self.name!r}: weight must be (K, D) and bias (K,), got {w.shape} "
                f"and {b.shape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError(f"baseline {self.name!r}: weight or bias has NaN/inf")
        self.weight, self.bias = w, b

    def _features(self, data: CachedOutputs) -> np.ndarray:
        f = np.asarray(data.features, dtype=np.float64)
        if f.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"baseline {self.name!r}: features have D={f.shape[1]} but weight is "
                f"{self.weight.shape} (K, D)"
            )
        return f

    def _logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


class MSP(Baseline):
    """Maximum softmax probability."""

    name = "msp"
    label = "MSP"
    score_fields = ("logits",)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        return msp_scores(test.logits)


class MLS(Baseline):
    """Maximum logit."""

    name = "mls"
    label = "MLS"
    score_fields = ("logits",)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        return max_logit_scores(test.logits)


class EBO(Baseline):
    """Energy score ``T * logsumexp(logits / T)``."""

    name = "ebo"
    label = "EBO"
    score_fields = ("logits",)

    def __init__(self, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"baseline 'ebo': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        return energy_scores(test.logits, self.temperature)


class ODIN(Baseline):
    """ODIN from precomputed ``odin_scores``; with ``noise == 0`` it is computable from logits.

    Input perturbation needs gradients through the model, so the scores must come from
    :func:`odin_scores` at prediction time and be stored in ``CachedOutputs.odin_scores``
    (then ``temperature``/``noise`` here are not used). Without them, only ``noise = 0``
    (temperature-scaled MSP) is computed, and any other ``noise`` is an error.
    """

    name = "odin"
    label = "ODIN"

    def __init__(self, temperature: float = 1000.0, noise: float = 0.0014) -> None:
        if temperature <= 0 or noise < 0:
            raise ValueError(
                "baseline 'odin': temperature must be > 0 and noise >= 0, got "
                f"{temperature}, {noise}"
            )
        self.temperature, self.noise = float(temperature), float(noise)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        if test.odin_scores is not None:
            return test.odin_scores
        if self.noise == 0 and test.logits is not None:
            return msp_scores(test.logits / self.temperature)
        raise ValueError(
            f"baseline 'odin' needs CachedOutputs.odin_scores ({_HINTS['odin_scores']}) when "
            f"noise={self.noise} > 0 (or logits when noise=0), but they are missing"
        )


class ReAct(_LinearHead):
    """Energy after clipping features at the ``percentile``-th percentile of train features."""

    name = "react"
    label = "ReAct"
    fit_fields = ("features",)
    score_fields = ("features",)

    def __init__(self, weight: ArrayLike, bias: ArrayLike, percentile: float = 90.0) -> None:
        super().__init__(weight, bias)
        if not 0 <= percentile <= 100:
            raise ValueError(f"baseline 'react': percentile must be in [0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.threshold: float | None = None

    def _fit(self, train: CachedOutputs) -> None:
        # OpenOOD/ReAct: one scalar threshold over all entries of all train activations.
        self.threshold = float(np.percentile(self._features(train), self.percentile))
        log.info("react: clip threshold %.4g (percentile %g)", self.threshold, self.percentile)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        clipped = np.minimum(self._features(test), self.threshold)
        return energy_scores(self._logits(clipped))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)


class KNN(Baseline):
    """Minus the cosine distance ``1 - cos`` to the k-th nearest train feature.

    OpenOOD ranks by the squared L2 distance of normalised features, ``2 - 2 cos``, which gives
    the same order. Brute force in chunks of test rows (exact).
    """

    name = "knn"
    label = "KNN"
    fit_fields = ("features",)
    score_fields = ("features",)

    def __init__(self, k: int = 50, chunk_elements: int = 2**24) -> None:
        if int(k) < 1:
            raise ValueError(f"baseline 'knn': k must be >= 1, got {k}")
        self.k = int(k)
        self.chunk_elements = int(chunk_elements)
        self.bank: np.ndarray | None = None

    def _fit(self, train: CachedOutputs) -> None:
        bank = _normalise_rows(np.asarray(train.features, dtype=np.float64))
        if self.k > bank.shape[0]:
            raise ValueError(
                f"baseline 'knn': k={self.k} > number of train features {bank.shape[0]}"
            )
        self.bank = bank

    def _score(self, test: CachedOutputs) -> np.ndarray:
        assert self.bank is not None
        f = _normalise_rows(np.asarray(test.features, dtype=np.float64))
        if f.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"baseline 'knn': test features have D={f.shape[1]}, train D={self.bank.shape[1]}"
            )
        rows = max(1, self.chunk_elements // self.bank.shape[0])
        out = np.empty(f.shape[0])
        for start in range(0, f.shape[0], rows):
            sim = f[start : start + rows] @ self.bank.T
            # k-th largest similarity = k-th smallest cosine distance
            kth = -np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
            out[start : start + rows] = -(1.0 - kth)
        return out


def default_vim_dim(feature_dim: int) -> int:
    """Principal-subspace size when none is given: ``min(D // 2, 1000)`` (1000 for D = 2048)."""
    return max(1, min(feature_dim // 2, 1000))


class ViM(_LinearHead):
    """Virtual-logit matching: ``energy(W f + b) - alpha * ||P_perp (f - u)||``."""

    name = "vim"
    label = "ViM"
    fit_fields = ("features",)
    score_fields = ("features",)

    def __init__(self, weight: ArrayLike, bias: ArrayLike, dim: int | None = None) -> None:
        super().__init__(weight, bias)
        d = self.weight.shape[1]
        self.dim = default_vim_dim(d) if dim is None else int(dim)
        if not 1 <= self.dim < d:
            raise ValueError(f"baseline 'vim': dim must be in [1, D={d}), got {self.dim}")
        # origin of the feature space: the point the linear head maps to all-zero logits
        self.origin = -np.linalg.pinv(self.weight) @ self.bias
        self.null_space: np.ndarray | None = None
        self.alpha: float | None = None

    def _residual_norm(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm((features - self.origin) @ self.null_space, axis=1)

    def _fit(self, train: CachedOutputs) -> None:
        f = self._features(train)
        centred = f - self.origin
        cov = centred.T @ centred / centred.shape[0]
        eigval, eigvec = np.linalg.eigh(cov)  # ascending
        order = np.argsort(eigval)[::-1]
        self.null_space = eigvec[:, order[self.dim :]]
        residual = self._residual_norm(f)
        if residual.mean() <= 0:
            raise ValueError("baseline 'vim': train features have no residual outside the subspace")
        self.alpha = float(self._logits(f).max(axis=1).mean() / residual.mean())
        log.info("vim: dim %d of %d, alpha %.4g", self.dim, f.shape[1], self.alpha)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        f = self._features(test)
        return energy_scores(self._logits(f)) - self.alpha * self._residual_norm(f)


class Mahalanobis(Baseline):
    """``max_c -(f - mu_c)^T P (f - mu_c)`` with class means ``mu_c`` and tied precision ``P``.

    The covariance is the pooled within-class covariance of the train features (OpenOOD MDS);
    ``P`` is its pseudo-inverse, so degenerate feature dimensions do not break it. Squared
    distances are used; the order equals that of the distances.
    """

    name = "mahalanobis"
    label = "Mahalanobis"
    fit_fields = ("features", "labels")
    score_fields = ("features",)

    def __init__(self) -> None:
        self.means: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def _fit(self, train: CachedOutputs) -> None:
        f = np.asarray(train.features, dtype=np.float64)
        labels = train.labels
        if (labels < 0).any():
            raise ValueError("baseline 'mahalanobis': train labels must be class indices >= 0")
        classes = np.unique(labels)
        self.means = np.stack([f[labels == c].mean(axis=0) for c in classes])
        centred = f - self.means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / f.shape[0]
        self.precision = np.linalg.pinv(cov, hermitian=True)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        f = np.asarray(test.features, dtype=np.float64)
        if f.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"baseline 'mahalanobis': test features have D={f.shape[1]}, train "
                f"D={self.means.shape[1]}"
            )
        fp = f @ self.precision
        quad_f = np.einsum("nd,nd->n", fp, f)
        quad_mu = np.einsum("kd,de,ke->k", self.means, self.precision, self.means)
        dist2 = quad_f[:, None] - 2.0 * fp @ self.means.T + quad_mu[None, :]
        return -dist2.min(axis=1)


def _check_average(name: str, average: str) -> str:
    if average not in ("softmax", "logits"):
        raise ValueError(f"baseline {name!r}: average must be softmax|logits, got {average!r}")
    return average


class _AveragedPasses(Baseline):
    """MSP of the averaged prediction over the ``(S, N, K)`` logits in ``score_fields[0]``
    (:func:`mean_softmax_scores`)."""

    def __init__(self, average: str = "logits") -> None:
        self.average = _check_average(self.name, average)

    def _score(self, test: CachedOutputs) -> np.ndarray:
        return mean_softmax_scores(getattr(test, self.score_fields[0]), self.average)


class DeepEnsemble(_AveragedPasses):
    """MSP of the members' averaged prediction over ``ensemble_logits`` (M, N, K).

    ``average="logits"`` (default) is OpenOOD v1's EnsemblePostprocessor, which produced the
    published Deep Ensemble numbers: softmax of the mean logits; ``"softmax"`` is the mean
    softmax of Lakshminarayanan et al.
    """

    name = "deep_ensemble"
    label = "Deep Ensemble"
    score_fields = ("ensemble_logits",)


class MCDropout(_AveragedPasses):
    """MSP of the averaged prediction over ``mc_logits`` (T, N, K) from dropout-on passes.

    ``average="logits"`` (default) is OpenOOD v1's DropoutPostProcessor (softmax of the mean
    logits of its ``dropout_times`` passes); ``"softmax"`` is Gal & Ghahramani's predictive mean.
    """

    name = "mc_dropout"
    label = "MC-Dropout"
    score_fields = ("mc_logits",)


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (MSP, MLS, EBO, ODIN, ReAct, KNN, ViM, Mahalanobis, DeepEnsemble, MCDropout)
}
"""Baseline classes by config name."""

BASELINE_LABELS = {name: cls.label for name, cls in BASELINES.items()}
"""Display label of each baseline, by config name (from the classes)."""


def make_baseline(
    name: str, *, weight: ArrayLike | None = None, bias: ArrayLike | None = None, **params: Any
) -> Baseline:
    """Build baseline ``name``; ``weight``/``bias`` of the final layer go only to those using them.

    Args:
        name: A key of :data:`BASELINES`.
        weight: ``(K, D)`` final-layer weight (needed by ``react`` and ``vim``).
        bias: ``(K,)`` final-layer bias.
        **params: Constructor parameters of that baseline (e.g. ``k`` for ``knn``).
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; valid: {sorted(BASELINES)}")
    cls = BASELINES[name]
    if cls.needs_linear:
        if weight is None or bias is None:
            raise ValueError(f"baseline {name!r} needs the final layer's weight and bias")
        return cls(weight, bias, **params)
    return cls(**params)
