"""The released DiffGuard code's *execution* of GDM and CFG, for the speed benchmark.

The maths is the project's own (:mod:`diffguard.gdm`, :mod:`diffguard.cfg`, checked against the
released trajectories by ``tests/unit/test_gdm_fixture.py``), written out again here in the
arithmetic forms of those modules so that a run of this port and a run of ours differ only in
float rounding from batch composition. What is ported is how the released code runs that maths
(``ood_tester/guided_diffusion_model.py``, ``guided_diffusion/gaussian_diffusion.py`` and
``respace.py``, ``ood_tester/latent_diffusion_model.py``, ``ldm/models/diffusion/ddim.py``):

GDM (classifier guidance)
  * Inversion over the whole loader batch: every row goes through the UNet at every step, and
    every early-stop metric is computed on every row, until *all* rows have stopped.
  * Denoising with batch size 1 whenever adaptive early stop is on (the released constructor
    overrides ``batch_size``). With ``uncond_aux`` the unguided twin rides along in the same batch
    of 2 with label -1; with early stop off, splits of ``denoise_batch_size`` images are
    denoised and the twins are a second, unguided pass.
  * The crop generator is reset before every denoising call.
  * ``cond_fn`` maps the timestep back to the respaced index with a host sync
    (``timestep_map.index(t[0].item())``), runs the UNet *again* on the guided rows at the same
    ``(x_t, t)`` with autograd on, builds the blend ``x~`` from that graph and takes the gradient
    with respect to ``x~`` itself, so the graph through the UNet is built, kept alive until
    ``cond_fn`` returns, and never used. Its debug log line formats every row's cross-entropy
    (an f-string is evaluated whatever the log level): a host sync per step.
  * Every UNet call goes through ``p_mean_variance``, whose posterior mean is computed and then
    ignored by DDIM; every sampling step draws ``randn_like(x)`` and multiplies it by sigma = 0.

CFG (latent diffusion, classifier-free guidance)
  * Inversion over the loader batch with the null label; guidance scale 1 disables the
    unconditional branch, so one UNet call of N rows per step.
  * Per denoising split (the loader batch by default): the CAM mask, then one UNet call of 2N
    rows per step with ``[uncond; cond]``; a fresh ``randn`` times sigma = 0 per step;
    ``uncond_aux`` as a second, unguided pass over the split (one call of N rows per step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from diffguard.cfg import CfgResult, CfgSettings, CondEpsModel, _coef, depth
from diffguard.gdm import (
    CallCounter,
    CropSampler,
    EpsModel,
    GdmResult,
    GdmSettings,
    Similarity,
    early_stop_similarities,
)
from diffguard.schedules import RespacedSchedule

log = logging.getLogger(__name__)

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``mask_fn(x0_in_minus1_1, labels) -> N x 1 x H x W`` binary mask (the CAM mask of CFG)."""


class _Posterior:
    """guided-diffusion's posterior-mean coefficients; DDIM ignores the mean it computes."""

    def __init__(self, sched: RespacedSchedule) -> None:
        a = sched.alphas_cumprod
        a_prev = sched.alphas_cumprod_prev
        betas = 1.0 - a / a_prev
        self.coef1 = torch.from_numpy(betas * np.sqrt(a_prev) / (1.0 - a))
        self.coef2 = torch.from_numpy((1.0 - a_prev) * np.sqrt(1.0 - betas) / (1.0 - a))

    def mean(self, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (x_t.ndim - 1)))
        c1 = self.coef1.to(index.device)[index].float().reshape(shape)
        c2 = self.coef2.to(index.device)[index].float().reshape(shape)
        return c1 * x0 + c2 * x_t


class _WrappedEps:
    """``respace._WrappedModel``: respaced index -> original timestep on every call."""

    def __init__(self, eps_model: EpsModel, timestep_map: list[int], counter: CallCounter | None):
        self.eps_model = eps_model
        self.timestep_map = timestep_map
        self.counter = counter

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        map_tensor = torch.tensor(self.timestep_map, device=index.device, dtype=index.dtype)
        eps = self.eps_model(x, map_tensor[index])
        if self.counter is not None:
            self.counter.add_unet(x.shape[0])
        return eps


# ------------------------------------------------------------------------------------------ GDM
# Mirrors upstream gaussian_diffusion.py ddim_reverse_sample_loop + early stop (ours: gdm.invert)
@torch.no_grad()
def invert_released(
    eps_model: EpsModel,
    x0: torch.Tensor,
    settings: GdmSettings,
    similarities: Mapping[str, Similarity] | None = None,
    counter: CallCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM inversion of the whole batch until every image has met its early-stop criterion.

    Same semantics as :func:`diffguard.gdm.invert` (``similarities=None`` disables early stop),
    but stopped images keep being inverted and measured until the last one stops.
    """
    sched = settings.schedule()
    model = _WrappedEps(eps_model, sched.timesteps.tolist(), counter)
    post = _Posterior(sched)
    sims = early_stop_similarities(settings, similarities) if similarities is not None else {}
    thresholds = dict(zip(settings.early_stop_metrics, settings.early_stop_thresholds, strict=True))
    last_index = sched.num_steps - 1 - settings.early_stop_steps
    if last_index < 0:
        raise ValueError(
            f"early_stop_steps={settings.early_stop_steps} leaves no inversion step for "
            f"{settings.respacing}"
        )
    n, device = x0.shape[0], x0.device
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out = torch.zeros_like(x0)
    out_t = torch.zeros(n, dtype=torch.long)
    img = x0
    x_next = x0
    i = 0
    for i in range(last_index + 1):
        index = torch.full((n,), i, dtype=torch.long, device=device)
        eps = model(img, index)
        sr = sched.coef("sqrt_recip_alphas_cumprod", index, img.ndim)
        srm1 = sched.coef("sqrt_recipm1_alphas_cumprod", index, img.ndim)
        x0_hat = sr * img - srm1 * eps
        post.mean(x0_hat, img, index)  # p_mean_variance's posterior mean, unused by DDIM
        if i > 0 or settings.clip_first_inversion_step:
            x0_hat = x0_hat.clamp(-1, 1)
        eps = (sr * img - x0_hat) / srm1
        alpha_next = sched.coef("alphas_cumprod_next", index, img.ndim)
        x_next = x0_hat * torch.sqrt(alpha_next) + torch.sqrt(1 - alpha_next) * eps
        if sims:
            stop = torch.zeros(n, dtype=torch.bool, device=device)
            for name, fn in sims.items():
                stop |= fn(x_next, x0) < thresholds[name]
            if stop.any():
                new = stop & ~done
                out[new] = x_next[new]
                out_t[new.cpu()] = i
                done |= new
                if bool(done.all()):
                    break
        img = x_next
    out[~done] = x_next[~done]
    out_t[(~done).cpu()] = i
    return out, out_t


# Mirrors upstream ood_tester/guided_diffusion_model.py cond_fn (ours: gdm.classifier_guidance)
def cond_fn_released(
    model: _WrappedEps,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    sched: RespacedSchedule,
    post: _Posterior,
    settings: GdmSettings,
    crops: CropSampler | None,
    local_step: int,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """The released guidance function: ``s * d/dx~ sum log p(y | crops)``, zero for label -1.

    ``t`` holds original timesteps (the released ``cond_fn`` is wrapped like the model). With
    ``no_x0_hat`` off it re-runs the UNet on the guided rows with autograd on.
    """
    holder = torch.zeros_like(x)
    if labels is None:
        return holder
    place = torch.tensor([int(y) != -1 for y in labels], device=x.device)
    if not bool(place.any()):
        return holder
    params = classifier.parameters() if isinstance(classifier, torch.nn.Module) else iter(())
    clf_dtype = next(params, torch.empty(0)).dtype
    y = labels[place]
    with torch.enable_grad():
        x_in = x[place].detach().requires_grad_(True)
        n = x_in.shape[0]
        cur = model.timestep_map.index(int(t[0].item()))  # _unscale_timesteps: a host sync
        if not settings.no_x0_hat:
            index = torch.full((n,), cur, dtype=torch.long, device=x.device)
            eps = model(x_in, index)  # the second forward, graph through the UNet kept
            sr = sched.coef("sqrt_recip_alphas_cumprod", index, x.ndim)
            srm1 = sched.coef("sqrt_recipm1_alphas_cumprod", index, x.ndim)
            x0_hat = sr * x_in - srm1 * eps  # clip_denoised=False
            post.mean(x0_hat, x_in, index)
            fac = torch.sqrt(1 - sched.coef("alphas_cumprod", index, x.ndim))
            x_in = x0_hat * fac + x_in * (1 - fac)  # the reassigned tensor the gradient is for
        images = (x_in.to(clf_dtype) + 1) / 2
        if crops is not None:
            images = crops(images, local_step)
        logits = classifier(images)
        gt = y.repeat(images.shape[0] // n)
        ce_loss = F.cross_entropy(logits, gt, reduction="none")
        log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        selected = log_probs[torch.arange(len(gt), device=x.device), gt]
        final_loss = selected.sum()
        ce_loss.tolist()  # the released debug line formats each row's loss (host sync)
    (grad,) = torch.autograd.grad(final_loss, x_in)
    if counter is not None:
        counter.classifier_forward_rows += images.shape[0]
        counter.classifier_backward_rows += images.shape[0]
    holder[place] = (grad * settings.classifier_scale).to(holder.dtype)
    return holder


# Mirrors upstream guided_diffusion/gaussian_diffusion.py ddim_sample_loop (ours: gdm.guided_sample)
@torch.no_grad()
def denoise_released(
    eps_model: EpsModel,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None,
    x_t: torch.Tensor,
    labels: torch.Tensor | None,
    rev_t: torch.Tensor,
    settings: GdmSettings,
    crops: CropSampler | None,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """``ddim_sample_loop`` over one denoising split, guided by ``cond_fn_released``.

    Every row of a split starts at the same index (the released code asserts one ``rev_t`` per
    split when ``forback_skip_diff > 0``).
    """
    sched = settings.schedule()
    model = _WrappedEps(eps_model, sched.timesteps.tolist(), counter)
    post = _Posterior(sched)
    if settings.forback_skip_diff > 0:
        if len(torch.unique(rev_t)) != 1:
            raise ValueError(f"one denoising split needs one rev_t, got {rev_t.tolist()}")
        skip = max(0, sched.num_steps - int(rev_t[0]) - settings.forback_skip_diff)
    else:
        skip = settings.skip_first_steps
    indices = list(range(sched.num_steps))[::-1][skip:]
    if not indices:
        raise ValueError(f"skip_first_steps={skip} leaves no denoising step")
    n, device = x_t.shape[0], x_t.device
    timesteps = torch.tensor(sched.timesteps.tolist(), device=device)
    img = x_t
    for k, i in enumerate(indices):
        index = torch.full((n,), i, dtype=torch.long, device=device)
        eps = model(img, index)
        sr = sched.coef("sqrt_recip_alphas_cumprod", index, img.ndim)
        srm1 = sched.coef("sqrt_recipm1_alphas_cumprod", index, img.ndim)
        alpha = sched.coef("alphas_cumprod", index, img.ndim)
        alpha_prev = sched.coef("alphas_cumprod_prev", index, img.ndim)
        x0_raw = sr * img - srm1 * eps
        x0_hat = x0_raw.clamp(-1, 1) if settings.clip_denoised else x0_raw
        post.mean(x0_hat, img, index)
        # condition_score
        eps = (sr * img - x0_hat) / srm1
        one_minus_alpha_sqrt = torch.sqrt(1 - alpha)
        grad = (
            cond_fn_released(
                model,
                classifier,
                img,
                timesteps[index],
                labels,
                sched,
                post,
                settings,
                crops,
                k,
                counter,
            )
            if classifier is not None and settings.classifier_scale != 0
            else torch.zeros_like(img)
        )
        eps = eps - one_minus_alpha_sqrt * grad
        x0_guided = sr * img - srm1 * eps
        post.mean(x0_guided, img, index)
        # ddim_sample, eta = 0
        eps = (sr * img - x0_guided) / srm1
        sigma = torch.zeros_like(alpha)
        noise = torch.randn_like(img)
        mean_pred = x0_guided * torch.sqrt(alpha_prev) + torch.sqrt(1 - alpha_prev - sigma**2) * eps
        nonzero = (index != 0).to(img.dtype).view(-1, *([1] * (img.ndim - 1)))
        img = mean_pred + nonzero * sigma * noise
    return img


# Mirrors upstream guided_diffusion_model.py GuidedDiffusionModel.__call__ (ours: gdm.reconstruct)
def gdm_reconstruct_released(
    eps_model: EpsModel,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    labels: torch.Tensor,
    settings: GdmSettings,
    similarities: Mapping[str, Similarity] | None = None,
    counter: CallCounter | None = None,
    denoise_batch_size: int = 5,
) -> GdmResult:
    """GDM on one loader batch, executed as the released ``GuidedDiffusionModel.__call__``.

    Returns the same :class:`~diffguard.gdm.GdmResult` as :func:`diffguard.gdm.reconstruct`
    (``psnr_trace`` is empty: the released code does not record it). ``denoise_batch_size`` is
    the released ``denoise_batch_size`` (5), used only when adaptive early stop is off.
    """
    sched = settings.schedule()
    x_t, rev_t = invert_released(eps_model, x0, settings, similarities, counter)
    aes = similarities is not None and bool(early_stop_similarities(settings, similarities))
    batch_size = 1 if aes else int(denoise_batch_size)
    if batch_size < 1:
        raise ValueError(f"denoise_batch_size must be >= 1, got {denoise_batch_size}")
    twice = batch_size != 1 and settings.uncond_aux
    in_batch = settings.uncond_aux and not twice
    labels = labels.to(torch.long).to(x0.device)
    recons: list[torch.Tensor] = []
    uncond: list[torch.Tensor] = []
    for first in range(0, x0.shape[0], batch_size):
        xs = x_t[first : first + batch_size]
        ys = labels[first : first + batch_size]
        rs = rev_t[first : first + batch_size]
        crops = (
            CropSampler(settings.cutouts_num, settings.cutouts_size, settings.cutouts_seed)
            if settings.cutouts_num > 0
            else None
        )  # a fresh generator: the released local_rand_gen.reset()
        if in_batch:
            out = denoise_released(
                eps_model,
                classifier,
                xs.repeat(2, 1, 1, 1),
                torch.cat([ys, torch.full_like(ys, -1)]),
                rs,
                settings,
                crops,
                counter,
            )
            recons.append(out[:1])
            uncond.append(out[1:])
        else:
            recons.append(
                denoise_released(eps_model, classifier, xs, ys, rs, settings, crops, counter)
            )
            if twice:
                uncond.append(
                    denoise_released(eps_model, None, xs, None, rs, settings, None, counter)
                )
    n = x0.shape[0]
    start = torch.as_tensor(
        [
            min(sched.num_steps - 1, int(r) + settings.forback_skip_diff - 1)
            if settings.forback_skip_diff > 0
            else max(0, sched.num_steps - 1 - settings.skip_first_steps)
            for r in rev_t
        ],
        dtype=torch.long,
    )
    return GdmResult(
        x_t=x_t.cpu(),
        rev_t=rev_t,
        start_index=start,
        recon=torch.cat(recons).cpu(),
        recon_uncond=torch.cat(uncond).cpu() if settings.uncond_aux else None,
        psnr_trace=torch.zeros((n, 0)),
    )


# ------------------------------------------------------------------------------------------ CFG
# Mirrors upstream DiffGuard's DDIMForward.sample, the LDM inversion (ours: cfg.invert)
@torch.no_grad()
def cfg_invert_released(
    eps_model: CondEpsModel,
    z0: torch.Tensor,
    null_label: int,
    settings: CfgSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """``DDIMForward.sample`` with the null label and guidance scale 1: one call per step.

    Our ``inversion_steps`` (not released) cuts this loop and the denoising one at the same
    depth as :mod:`diffguard.cfg`, so the speed benchmark compares like with like.
    """
    sched = settings.schedule()
    z = z0
    n = z.shape[0]
    c = torch.full((n,), null_label, dtype=torch.long, device=z.device)
    prev_timesteps = [0, *sched.timesteps[:-1].tolist()]
    for i in range(depth(settings, sched.num_steps)):
        t_eval = sched.timesteps[i] if settings.inversion_variant == "next_t" else prev_timesteps[i]
        t = torch.full((n,), int(t_eval), dtype=torch.long, device=z.device)
        eps = eps_model(z, t, c)
        if counter is not None:
            counter.add_unet(n)
        a_prev = float(sched.alphas_prev[i])
        a_next = float(sched.alphas[i])
        x0_hat = (z - _coef((1 - a_prev) ** 0.5, z) * eps) / _coef(a_prev**0.5, z)
        z = _coef(a_next**0.5, z) * x0_hat + _coef((1 - a_next) ** 0.5, z) * eps
    return z


# Mirrors upstream ldm/models/diffusion/ddim.py DDIMSampler.p_sample_ddim (ours: cfg.guided_sample)
@torch.no_grad()
def cfg_denoise_released(
    eps_model: CondEpsModel,
    z_t: torch.Tensor,
    labels: torch.Tensor | None,
    null_label: int,
    activation_map: torch.Tensor | None,
    settings: CfgSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """``DDIMSampler.sample``: ``[uncond; cond]`` in one call per step, or one plain call.

    ``labels=None`` is the released unguided pass (the null class, no unconditional branch).
    """
    sched = settings.schedule()
    z = z_t
    n = z.shape[0]
    null = torch.full((n,), null_label, dtype=torch.long, device=z.device)
    guided = labels is not None and settings.guidance_scale != 1.0
    c = null if labels is None else labels.to(torch.long).to(z.device)
    for i in range(depth(settings, sched.num_steps) - 1, -1, -1):
        t = torch.full((n,), int(sched.timesteps[i]), dtype=torch.long, device=z.device)
        if not guided:
            e_t = eps_model(z, t, c)
            if counter is not None:
                counter.add_unet(n)
        else:
            out = eps_model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null, c]))
            if counter is not None:
                counter.add_unet(2 * n)
            e_u, e_c = out.chunk(2)
            e_g = e_u + settings.guidance_scale * (e_c - e_u)
            if activation_map is None:
                e_t = e_g
            else:
                amap = F.interpolate(
                    activation_map.float().to(z.device), size=e_u.shape[-2:], mode="nearest"
                )
                e_t = torch.where(amap > 0.5, e_g, e_u)
        a_t = float(sched.alphas[i])
        a_prev = float(sched.alphas_prev[i])
        pred_x0 = (z - _coef((1 - a_t) ** 0.5, z) * e_t) / _coef(a_t**0.5, z)
        noise = torch.randn_like(z)  # noise_like(...) * sigma with sigma = 0 (eta = 0)
        z = _coef(a_prev**0.5, pred_x0) * pred_x0 + _coef((1 - a_prev) ** 0.5, z) * e_t
        z = z + 0.0 * noise
    return z


# Mirrors upstream ood_tester/latent_diffusion_model.py LDMWrapper.__call__ (ours: cfg.reconstruct)
def cfg_reconstruct_released(
    eps_model: CondEpsModel,
    x0: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    settings: CfgSettings,
    mask_fn: MaskFn | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    counter: CallCounter | None = None,
    denoise_batch_size: int | None = None,
) -> CfgResult:
    """CFG on one loader batch, executed as the released ``LDMWrapper.__call__``.

    ``mask_fn(x0_split, labels_split)`` gives the CAM mask per denoising split (called only with
    ``use_cam``); ``denoise_batch_size`` defaults to the whole loader batch.
    """
    encode = encode or (lambda x: x)
    decode = decode or (lambda z: z)
    with torch.no_grad():
        z0 = encode(x0)
    z_t = cfg_invert_released(eps_model, z0, null_label, settings, counter)
    labels = labels.to(torch.long).to(z_t.device)
    batch_size = int(denoise_batch_size or x0.shape[0])
    recons: list[torch.Tensor] = []
    uncond: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for first in range(0, x0.shape[0], batch_size):
        xs = x0[first : first + batch_size]
        zs = z_t[first : first + batch_size]
        ys = labels[first : first + batch_size]
        amap = mask_fn(xs, ys) if settings.use_cam and mask_fn is not None else None
        if amap is not None:
            masks.append(amap.cpu())
        out = cfg_denoise_released(eps_model, zs, ys, null_label, amap, settings, counter)
        with torch.no_grad():
            recons.append(decode(out).clamp(-1, 1).cpu())
        if settings.uncond_aux:
            out_u = cfg_denoise_released(eps_model, zs, None, null_label, None, settings, counter)
            with torch.no_grad():
                uncond.append(decode(out_u).clamp(-1, 1).cpu())
    return CfgResult(
        z_t=z_t.cpu(),
        recon=torch.cat(recons),
        recon_uncond=torch.cat(uncond) if settings.uncond_aux else None,
        mask=torch.cat(masks) if masks else None,
    )
