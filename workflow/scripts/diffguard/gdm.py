"""GDM: DDIM inversion + classifier-guided DDIM regeneration (DiffGuard, classifier guidance).

Faithful to the released code (see shared/reference/README.md items 1-7), but batched: every image
keeps its own adaptive-early-stop step and its own denoising start, handled by masking the rows
that are not active at a given step instead of running one image at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffguard.method_api import (
    MethodBatch,
    MethodJob,
    MethodOutput,
    finish,
    to_model_size,
    unconditional_eps,
)
from diffguard.settings import GdmSettings  # defined torch-free for parsing; re-exported here

log = logging.getLogger(__name__)

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_model(x, original_timesteps) -> epsilon`` (first image channels of the UNet output)."""

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``similarity(x_noisy, x0) -> per-image similarity``; early stop fires below a threshold."""


@dataclass
class CallCounter:
    """Counts network evaluations, for the speed benchmark (per image = total / images)."""

    unet_rows: int = 0
    unet_calls: int = 0
    classifier_forward_rows: int = 0
    classifier_backward_rows: int = 0

    def add_unet(self, rows: int) -> None:
        self.unet_rows += rows
        self.unet_calls += 1


@dataclass
class GdmResult:
    """Outputs of :func:`reconstruct`; tensors are on the CPU, images in [-1, 1]."""

    x_t: torch.Tensor
    rev_t: torch.Tensor
    start_index: torch.Tensor
    recon: torch.Tensor
    recon_uncond: torch.Tensor | None
    psnr_trace: torch.Tensor = field(repr=False)


def psnr_code_units(x: torch.Tensor, x0: torch.Tensor, peak: float = 255.0) -> torch.Tensor:
    """Per-image PSNR as the released code computes it: ``20 log10(peak / sqrt(MSE))`` on [-1, 1].

    With ``peak=255`` this is the paper's PSNR (peak 2) plus 20 log10(127.5) = 42.11 dB.
    """
    mse = ((x - x0) ** 2).flatten(1).mean(dim=1)
    return 20 * torch.log10(peak / torch.sqrt(mse))


def _psnr_similarity(peak: float) -> Similarity:
    return lambda x, x0: psnr_code_units(x, x0, peak)


def early_stop_similarities(
    settings: GdmSettings, extra: Mapping[str, Similarity] | None = None
) -> dict[str, Similarity]:
    """Similarity functions of the enabled early-stop metrics (``psnr`` built in)."""
    available: dict[str, Similarity] = {"psnr": _psnr_similarity(settings.psnr_peak)}
    available.update(extra or {})
    missing = [m for m in settings.early_stop_metrics if m not in available]
    if missing:
        raise KeyError(
            f"early-stop metric(s) {missing} need a similarity function; "
            f"available: {sorted(available)}"
        )
    return {m: available[m] for m in settings.early_stop_metrics}


@torch.no_grad()
def invert(
    eps_model: EpsModel,
    x0: torch.Tensor,
    settings: GdmSettings,
    similarities: Mapping[str, Similarity] | None = None,
    counter: CallCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic DDIM inversion with per-image adaptive early stop.

    Returns ``(x_t, rev_t, psnr_trace)``: the latent of each image (at level ``rev_t + 1``), the
    index of the step that produced it, and the paper-unit PSNR (peak 2) of every computed
    ``x_{i+1}`` against the input (NaN after an image stopped), for the PSNR-along-inversion figure.
    """
    sched = settings.schedule()
    sims = early_stop_similarities(settings, similarities) if similarities is not None else {}
    thresholds = dict(zip(settings.early_stop_metrics, settings.early_stop_thresholds, strict=True))
    last_index = sched.num_steps - 1 - settings.early_stop_steps
    if last_index < 0:
        raise ValueError(
            f"early_stop_steps={settings.early_stop_steps} leaves no inversion step for "
            f"{settings.respacing}"
        )
    n = x0.shape[0]
    x = x0.clone()
    rev_t = torch.full((n,), last_index, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool)
    trace = torch.full((n, last_index + 1), float("nan"))
    device = x0.device
    for i in range(last_index + 1):
        rows = active.nonzero().squeeze(1).to(device)
        x_a = x[rows]
        index = torch.full((len(rows),), i, dtype=torch.long, device=device)
        t = torch.from_numpy(sched.timesteps).to(device)[index]
        eps = eps_model(x_a, t)
        if counter is not None:
            counter.add_unet(len(rows))
        x0_hat = sched.predict_x0(x_a, eps, index)
        if i > 0 or settings.clip_first_inversion_step:
            x0_hat = x0_hat.clamp(-1, 1)
        eps = sched.predict_eps(x_a, x0_hat, index)
        alpha_next = sched.coef("alphas_cumprod_next", index, x.ndim)
        x_next = x0_hat * torch.sqrt(alpha_next) + torch.sqrt(1 - alpha_next) * eps
        x[rows] = x_next
        trace[rows.cpu(), i] = psnr_code_units(x_next, x0[rows], peak=2.0).float().cpu()
        if sims and i < last_index:
            stop = torch.zeros(len(rows), dtype=torch.bool, device=device)
            for name, fn in sims.items():
                stop |= fn(x_next, x0[rows]) < thresholds[name]
            stopped_rows = rows[stop].cpu()
            rev_t[stopped_rows] = i
            active[stopped_rows] = False
        if not active.any():
            break
    return x, rev_t, trace


def full_inversion_settings(settings: GdmSettings) -> GdmSettings:
    """``settings`` inverting over every step of the respaced grid, early stop off (Fig. 4)."""
    return dataclasses.replace(
        settings, early_stop_steps=0, early_stop_metrics=(), early_stop_thresholds=()
    )


def psnr_threshold(settings: GdmSettings) -> float | None:
    """The PSNR early-stop threshold (units of ``psnr_peak``), None when PSNR is not used."""
    thresholds = dict(zip(settings.early_stop_metrics, settings.early_stop_thresholds, strict=True))
    return None if "psnr" not in thresholds else float(thresholds["psnr"])


def inversion_levels(settings: GdmSettings) -> np.ndarray:
    """Original timestep of each level ``1..S`` a full inversion reaches (the last is ``T``,
    where the respaced schedule's next alpha_bar is 0)."""
    sched = settings.schedule()
    return np.append(sched.timesteps[1:], settings.num_train_steps).astype(np.int64)


def inversion_trace(
    eps_model: EpsModel,
    x0: torch.Tensor,
    settings: GdmSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """PSNR(x_t, x0) after every step of the full DDIM inversion (no early stop, no sampling).

    The paper's Fig. 4. Runs :func:`invert` with :func:`full_inversion_settings` and returns an
    N x S tensor in the units of ``settings.psnr_peak`` (the released code's early-stop PSNR;
    column ``k`` is level ``k + 1``, at original timestep ``inversion_levels(settings)[k]``).
    """
    _, _, trace = invert(eps_model, x0, full_inversion_settings(settings), None, counter)
    # ``invert`` records peak 2 (paper units): PSNR = 20 log10(peak) - 10 log10(MSE)
    return trace + 20 * math.log10(settings.psnr_peak / 2.0)


def denoise_start_index(rev_t: torch.Tensor, settings: GdmSettings, num_steps: int) -> torch.Tensor:
    """First respaced index of guided sampling (released code's ``forback_skip_diff`` rule)."""
    if settings.forback_skip_diff > 0:
        start = rev_t + settings.forback_skip_diff - 1
    else:
        start = torch.full_like(rev_t, num_steps - 1 - settings.skip_first_steps)
    return start.clamp(0, num_steps - 1)


class CropSampler:
    """Random square crops ("cutouts") drawn from one generator reset for every image.

    Each crop side is ``int(U * (min(H, W) - cut) + cut)``, the offsets are uniform, and the crop
    is nearest-resized to ``cut``. The k-th denoising step of any image uses the same crops, as
    in the released code, where the generator is reset before every (single-image) denoising call.
    """

    def __init__(self, cutn: int, cut_size: int, seed: int) -> None:
        self.cutn = cutn
        self.cut_size = cut_size
        self.seed = seed
        self._params: list[list[tuple[int, int, int]]] = []
        self._shape: tuple[int, int] | None = None
        self._generator = torch.Generator()

    def params(self, step: int, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(size, offset_x, offset_y)`` of every crop at local denoising step ``step``."""
        if self._shape != (height, width):
            self._shape = (height, width)
            self._params = []
            self._generator.manual_seed(self.seed)
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        while len(self._params) <= step:
            crops = []
            for _ in range(self.cutn):
                u = torch.rand([], generator=self._generator)
                size = int(u * (max_size - min_size) + min_size)
                ox = int(torch.randint(0, width - size + 1, (), generator=self._generator))
                oy = int(torch.randint(0, height - size + 1, (), generator=self._generator))
                crops.append((size, ox, oy))
            self._params.append(crops)
        return self._params[step]

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """All crops of ``images`` (N x C x H x W), crop-major: (cutn * N) x C x cut x cut."""
        _, _, height, width = images.shape
        crops = [
            F.interpolate(images[:, :, oy : oy + s, ox : ox + s], size=self.cut_size)
            for s, ox, oy in self.params(step, height, width)
        ]
        return torch.cat(crops)


def classifier_guidance(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    one_minus_alpha_sqrt: torch.Tensor,
    labels: torch.Tensor,
    local_steps: torch.Tensor,
    settings: GdmSettings,
    crops: CropSampler | None,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """The released code's "clean grad": ``s * d/dx~ sum_crops log p(y | crop((x~ + 1) / 2))``.

    ``x~ = f x0_hat + (1 - f) x_t`` with ``f = sqrt(1 - alpha_bar_t)`` (or ``x~ = x_t`` with
    ``no_x0_hat``), detached: the gradient is taken with respect to ``x~`` itself, never through
    the UNet. Rows with label -1 (the unguided twin) get zero.
    """
    grad = torch.zeros_like(x_t)
    guided = labels >= 0
    if settings.classifier_scale == 0 or not guided.any():
        return grad
    if settings.no_x0_hat:
        blend = x_t
    else:
        blend = one_minus_alpha_sqrt * x0_hat + (1 - one_minus_alpha_sqrt) * x_t
    use_crops = crops is not None and settings.cutouts_num > 0
    params = classifier.parameters() if isinstance(classifier, torch.nn.Module) else iter(())
    clf_dtype = next(params, torch.empty(0)).dtype
    groups = local_steps[guided].unique() if use_crops else torch.zeros(1, dtype=torch.long)
    for step in groups.tolist():
        rows = guided & (local_steps == step) if use_crops else guided
        with torch.enable_grad():
            x_in = blend[rows].detach().to(clf_dtype).requires_grad_(True)
            images = (x_in + 1) / 2
            if use_crops:
                assert crops is not None
                images = crops(images, step)
            logits = classifier(images)
            target = labels[rows].repeat(images.shape[0] // x_in.shape[0])
            log_probs = F.log_softmax(
                logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1
            )
            selected = log_probs[torch.arange(len(target)), target]
            (g,) = torch.autograd.grad(selected.sum(), x_in)
        if counter is not None:
            counter.classifier_forward_rows += images.shape[0]
            counter.classifier_backward_rows += images.shape[0]
        grad[rows] = (g * settings.classifier_scale).to(grad.dtype)
    return grad


@torch.no_grad()
def guided_sample(
    eps_model: EpsModel,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    labels: torch.Tensor,
    start_index: torch.Tensor,
    settings: GdmSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """Classifier-guided DDIM sampling (eta = 0), every row from its own start index down to 0."""
    sched = settings.schedule()
    device = x_t.device
    x = x_t.clone()
    start_index = start_index.to(device)
    labels = labels.to(device)
    crops = (
        CropSampler(settings.cutouts_num, settings.cutouts_size, settings.cutouts_seed)
        if settings.cutouts_num > 0
        else None
    )
    timesteps = torch.from_numpy(sched.timesteps).to(device)
    for i in range(int(start_index.max()), -1, -1):
        rows = (start_index >= i).nonzero().squeeze(1)
        x_a = x[rows]
        index = torch.full((len(rows),), i, dtype=torch.long, device=device)
        eps = eps_model(x_a, timesteps[index])
        if counter is not None:
            counter.add_unet(len(rows))
        alpha = sched.coef("alphas_cumprod", index, x.ndim)
        alpha_prev = sched.coef("alphas_cumprod_prev", index, x.ndim)
        x0_raw = sched.predict_x0(x_a, eps, index)
        x0_hat = x0_raw.clamp(-1, 1) if settings.clip_denoised else x0_raw
        eps = sched.predict_eps(x_a, x0_hat, index)
        one_minus_alpha_sqrt = torch.sqrt(1 - alpha)
        grad = classifier_guidance(
            classifier,
            x_a,
            x0_raw,
            one_minus_alpha_sqrt,
            labels[rows],
            start_index[rows] - i,
            settings,
            crops,
            counter,
        )
        eps = eps - one_minus_alpha_sqrt * grad
        x0_guided = sched.predict_x0(x_a, eps, index)
        eps = sched.predict_eps(x_a, x0_guided, index)
        x[rows] = x0_guided * torch.sqrt(alpha_prev) + torch.sqrt(1 - alpha_prev) * eps
    return x


def reconstruct(
    eps_model: EpsModel,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    labels: torch.Tensor,
    settings: GdmSettings,
    similarities: Mapping[str, Similarity] | None = None,
    counter: CallCounter | None = None,
) -> GdmResult:
    """Invert ``x0`` (N x C x H x W in [-1, 1]) and regenerate it guided towards ``labels``.

    With ``uncond_aux`` the latent is also regenerated without guidance (label -1) from the same
    start step, in the same batch; DiffGuard's GDM score compares the two.
    """
    sched = settings.schedule()
    x_t, rev_t, trace = invert(eps_model, x0, settings, similarities, counter)
    start = denoise_start_index(rev_t, settings, sched.num_steps)
    n = x0.shape[0]
    labels = labels.to(torch.long).cpu()
    if settings.uncond_aux:
        batch_x = torch.cat([x_t, x_t])
        batch_labels = torch.cat([labels, torch.full_like(labels, -1)])
        batch_start = torch.cat([start, start])
    else:
        batch_x, batch_labels, batch_start = x_t, labels, start
    out = guided_sample(
        eps_model, classifier, batch_x, batch_labels, batch_start, settings, counter
    )
    recon = out[:n]
    recon_uncond = out[n:] if settings.uncond_aux else None
    return GdmResult(
        x_t=x_t.cpu(),
        rev_t=rev_t,
        start_index=start,
        recon=recon.cpu(),
        recon_uncond=None if recon_uncond is None else recon_uncond.cpu(),
        psnr_trace=trace,
    )


# ------------------------------------------------------------------------- the batch entry point
EARLY_STOP_PERCEPTUAL = ("dists", "lpips")
"""Perceptual early-stop metrics (``psnr`` is built in: :func:`early_stop_similarities`)."""


def perceptual_similarity(name: str, torch_hub_dir: str | None, device: torch.device) -> Similarity:
    """Early-stop similarity ``1 - DISTS`` or ``-LPIPS`` of ``(x/2 + 0.5, x0/2 + 0.5)``.

    As the released ``CombinedMetrics``: unlike the final score, the noisy sample is not
    clamped to [0, 1]. The transform is the tester's (PAPER.md C.4), so an ``lpips`` threshold
    is negative (stop when ``-LPIPS < threshold``).
    """
    import piq

    from diffguard.distances import require_perceptual_weights

    if name not in EARLY_STOP_PERCEPTUAL:
        raise ValueError(f"perceptual early-stop metric {name!r}: expected {EARLY_STOP_PERCEPTUAL}")
    require_perceptual_weights(name, torch_hub_dir)
    metric = (piq.DISTS if name == "dists" else piq.LPIPS)(reduction="none").to(device).eval()

    @torch.no_grad()
    def similarity(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a, b = x.float() / 2 + 0.5, x0.float() / 2 + 0.5
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        dist = metric(a, b)
        return 1 - dist if name == "dists" else -dist

    return similarity


def check_model(model: Any, where: str) -> None:
    """GDM inverts and regenerates in pixel space: a latent model is refused."""
    if model.latent:
        raise ValueError(
            f"{where}: method gdm needs a pixel-space model, got a latent ({model.source}) one"
        )


def prepare(settings: GdmSettings, torch_hub_dir: str | None, device: Any) -> dict[str, Any]:
    """The perceptual early-stop similarities the settings enable (built once per job)."""
    similarities = {
        name: perceptual_similarity(name, torch_hub_dir, device)
        for name in EARLY_STOP_PERCEPTUAL
        if name in settings.early_stop_metrics
    }
    return {"similarities": similarities}


def run_batch(
    job: MethodJob, batch: MethodBatch, counter: CallCounter | None = None
) -> MethodOutput:
    """GDM on one batch: :func:`reconstruct` at the model's size (twin with ``uncond_aux``)."""
    return run_with(reconstruct, job, batch, counter)


def run_with(
    fn: Callable[..., GdmResult],
    job: MethodJob,
    batch: MethodBatch,
    counter: CallCounter | None,
    *args: Any,
) -> MethodOutput:
    """``fn`` (:func:`reconstruct`, or the released execution's port of it, which takes
    ``args`` more) on one batch at the model's size, the outputs back at the batch's size."""
    res = fn(
        unconditional_eps(job.model),
        job.classifier,
        to_model_size(job, batch.x),
        batch.labels,
        job.settings,
        job.extras.get("similarities", {}),
        counter,
        *args,
    )
    return finish(
        job, batch, res.recon, res.recon_uncond, res.rev_t, res.start_index, res.psnr_trace
    )


def trace_batch(
    job: MethodJob, batch: MethodBatch, counter: CallCounter | None = None
) -> torch.Tensor:
    """Fig. 4 on one batch: :func:`inversion_trace` of the images at the model's size."""
    return inversion_trace(
        unconditional_eps(job.model), to_model_size(job, batch.x), job.settings, counter
    )
