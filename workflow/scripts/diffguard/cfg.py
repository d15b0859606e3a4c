"""Classifier-free-guidance DiffGuard (LDM on ImageNet, DiffNB on CIFAR-10, our small model).

Inversion runs with the null label (guidance scale 1, i.e. the unconditional epsilon) over the
whole DDIM grid (or its first ``inversion_steps`` steps); regeneration runs the same steps back
and applies ``eps_u + w (eps_c - eps_u)`` inside a binary Grad-CAM mask of the predicted class
and plain ``eps_u`` elsewhere (mask off = global guidance).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from diffguard.gdm import CallCounter
from diffguard.method_api import MethodBatch, MethodJob, MethodOutput, finish, to_model_size
from diffguard.settings import CfgSettings  # defined torch-free for parsing; re-exported here

log = logging.getLogger(__name__)

CondEpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_model(x, original_timesteps, labels) -> epsilon``; label ``null_label`` = unconditional."""


def _coef(values: list[float] | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).to(like.device).float()


def depth(settings: CfgSettings, num_steps: int) -> int:
    """Steps inverted and regenerated: ``inversion_steps`` (None: all ``num_steps`` of the grid)."""
    return num_steps if settings.inversion_steps is None else settings.inversion_steps


@torch.no_grad()
def invert(
    eps_model: CondEpsModel,
    z0: torch.Tensor,
    null_label: int,
    settings: CfgSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion with the null label over the first :func:`depth` steps of
    the grid (every step by default); the latent sits at the level of the last step inverted.

    ``next_t`` (released code): at step i the model is evaluated at the target timestep tau_i on
    the sample at the previous level; ``standard`` evaluates it at the current level's timestep.
    """
    sched = settings.schedule()
    z = z0.clone()
    labels = torch.full((z.shape[0],), null_label, dtype=torch.long, device=z.device)
    prev_timesteps = [0, *sched.timesteps[:-1].tolist()]
    for i in range(depth(settings, sched.num_steps)):
        t_eval = sched.timesteps[i] if settings.inversion_variant == "next_t" else prev_timesteps[i]
        t = torch.full((z.shape[0],), int(t_eval), dtype=torch.long, device=z.device)
        eps = eps_model(z, t, labels)
        if counter is not None:
            counter.add_unet(z.shape[0])
        a_prev = float(sched.alphas_prev[i])
        a_next = float(sched.alphas[i])
        x0_hat = (z - _coef((1 - a_prev) ** 0.5, z) * eps) / _coef(a_prev**0.5, z)
        z = _coef(a_next**0.5, z) * x0_hat + _coef((1 - a_next) ** 0.5, z) * eps
    return z


@torch.no_grad()
def guided_sample(
    eps_model: CondEpsModel,
    z_t: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    mask: torch.Tensor | None,
    settings: CfgSettings,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """DDIM sampling (eta = 0) with masked classifier-free guidance.

    ``mask`` is N x 1 x H x W (any resolution, nearest-resized to the latent grid) or None for
    global guidance. Rows whose label is the null label are plain unconditional reconstructions.
    Sampling starts at the level :func:`invert` stops at (the top of the grid by default).
    """
    sched = settings.schedule()
    z = z_t.clone()
    n = z.shape[0]
    labels = labels.to(z.device)
    if mask is not None:
        mask = F.interpolate(mask.float().to(z.device), size=z.shape[-2:], mode="nearest") > 0.5
    guided = labels != null_label
    null = torch.full_like(labels, null_label)
    for i in range(depth(settings, sched.num_steps) - 1, -1, -1):
        t = torch.full((n,), int(sched.timesteps[i]), dtype=torch.long, device=z.device)
        if guided.any():
            rows = guided.nonzero().squeeze(1)
            both = eps_model(
                torch.cat([z, z[rows]]), torch.cat([t, t[rows]]), torch.cat([null, labels[rows]])
            )
            if counter is not None:
                counter.add_unet(n + len(rows))
            eps = both[:n].clone()
            eps_u, eps_c = both[:n][rows], both[n:]
            eps_g = eps_u + settings.guidance_scale * (eps_c - eps_u)
            if mask is not None:
                eps_g = torch.where(mask[rows], eps_g, eps_u)
            eps[rows] = eps_g
        else:
            eps = eps_model(z, t, null)
            if counter is not None:
                counter.add_unet(n)
        a_t = float(sched.alphas[i])
        a_prev = float(sched.alphas_prev[i])
        x0_hat = (z - _coef((1 - a_t) ** 0.5, z) * eps) / _coef(a_t**0.5, z)
        z = _coef(a_prev**0.5, z) * x0_hat + _coef((1 - a_prev) ** 0.5, z) * eps
    return z


@dataclass
class CfgResult:
    """Outputs of :func:`reconstruct` (images in [-1, 1], on the CPU)."""

    z_t: torch.Tensor
    recon: torch.Tensor
    recon_uncond: torch.Tensor | None
    mask: torch.Tensor | None


def reconstruct(
    eps_model: CondEpsModel,
    x0: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    settings: CfgSettings,
    mask: torch.Tensor | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    counter: CallCounter | None = None,
) -> CfgResult:
    """Invert ``x0`` (pixels in [-1, 1]) and regenerate it under ``labels`` with masked CFG.

    ``encode``/``decode`` map pixels to the diffusion space and back (the VQ autoencoder for the
    LDM; identity for pixel-space models). ``mask`` is ignored unless ``settings.use_cam``.
    With ``uncond_aux`` the same latent is also regenerated with the null label, i.e. plain
    ``eps_u`` with no guidance and no mask, in the same batch: the twin ``recon_uncond``.
    """
    encode = encode or (lambda x: x)
    decode = decode or (lambda z: z)
    with torch.no_grad():
        z0 = encode(x0)
    z_t = invert(eps_model, z0, null_label, settings, counter)
    n = x0.shape[0]
    labels = labels.to(torch.long).to(z_t.device)
    use_mask = mask if settings.use_cam else None
    if settings.uncond_aux:
        batch_z = torch.cat([z_t, z_t])
        batch_labels = torch.cat([labels, torch.full_like(labels, null_label)])
        batch_mask = None if use_mask is None else torch.cat([use_mask, use_mask])
    else:
        batch_z, batch_labels, batch_mask = z_t, labels, use_mask
    out = guided_sample(eps_model, batch_z, batch_labels, null_label, batch_mask, settings, counter)
    with torch.no_grad():
        images = decode(out).clamp(-1, 1)
    return CfgResult(
        z_t=z_t.cpu(),
        recon=images[:n].cpu(),
        recon_uncond=images[n:].cpu() if settings.uncond_aux else None,
        mask=None if use_mask is None else use_mask.cpu(),
    )


# ------------------------------------------------------------------------- the batch entry point
def grad_cam_mask(
    classifier: torch.nn.Module,
    x01: torch.Tensor,
    labels: torch.Tensor,
    cam_cut: float,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """Binary Grad-CAM mask of ``x01`` (images in [0, 1]) for ``labels``, cut at ``cam_cut``.

    Counted as one classifier forward and backward per image.
    """
    from diffguard.cam import cam_mask

    if counter is not None:
        counter.classifier_forward_rows += len(x01)
        counter.classifier_backward_rows += len(x01)
    layer = classifier.cam_layer  # type: ignore[attr-defined]
    return cam_mask(classifier, layer, x01, labels, cam_cut)


def check_model(model: Any, where: str) -> None:
    """CFG needs the conditional and the unconditional epsilon: a class-conditional model."""
    if not model.conditional:
        raise ValueError(
            f"{where}: method cfg needs a class-conditional model, "
            f"got an unconditional {model.source} one"
        )


def prepare(settings: CfgSettings, torch_hub_dir: str | None, device: Any) -> dict[str, Any]:
    """Nothing is built per job (the mask depends on each batch)."""
    return {}


def run_batch(
    job: MethodJob, batch: MethodBatch, counter: CallCounter | None = None
) -> MethodOutput:
    """CFG on one batch: the Grad-CAM mask of the input (``use_cam``), :func:`reconstruct` at
    the model's size (in its latent space for the LDM), the twin with ``uncond_aux``."""
    s = job.settings
    mask = (
        grad_cam_mask(job.classifier, batch.images01(), batch.labels, s.cam_cut, counter)
        if s.use_cam
        else None
    )
    return run_with(reconstruct, job, batch, counter, mask)


def run_with(
    fn: Callable[..., CfgResult],
    job: MethodJob,
    batch: MethodBatch,
    counter: CallCounter | None,
    mask: Any,
) -> MethodOutput:
    """``fn`` (:func:`reconstruct` with a ``mask``, or the released execution's port of it with
    a mask function) on one batch at the model's size, the outputs back at the batch's size."""
    s, model = job.settings, job.model
    res = fn(
        model.eps,
        to_model_size(job, batch.x),
        batch.labels,
        int(model.null_label),
        s,
        mask,
        lambda v: model.encode(v, quantize=s.encode_quantize),
        lambda z: model.decode(z, quantize=s.decode_quantize),
        counter,
    )
    n = batch.x.shape[0]
    # no early stop: the whole grid, or the fixed partial depth inversion_steps
    rev_t = torch.full((n,), (s.inversion_steps or s.ddim_steps) - 1)
    return finish(
        job, batch, res.recon, res.recon_uncond, rev_t, rev_t.clone(), torch.zeros((n, 0))
    )
