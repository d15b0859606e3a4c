"""Noise schedules and DDIM timestep grids, computed the way the released code computes them.

guided-diffusion (GDM) and the DDIM/DiffNB code work in float64 numpy and cast the per-step
coefficients to float32 when they are used; CompVis latent-diffusion (LDM) does the same with
its own "uniform" DDIM grid (timesteps offset by +1). Keeping those arithmetic forms lets the
tests reproduce the released trajectories to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def linear_betas(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """ADM / DDPM "linear" schedule (guided-diffusion scales the ends by 1000 / T)."""
    scale = 1000 / num_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def scaled_linear_betas(
    num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195
) -> np.ndarray:
    """CompVis "linear" schedule (diffusers calls it ``scaled_linear``): linear in sqrt(beta)."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def make_betas(name: str, num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Dispatch on the schedule name used in configs (``linear`` or ``scaled_linear``)."""
    if name == "linear":
        return linear_betas(num_steps, beta_start, beta_end)
    if name == "scaled_linear":
        return scaled_linear_betas(num_steps, beta_start, beta_end)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear' or 'scaled_linear'")


def respaced_timesteps(num_steps: int, respacing: str) -> list[int]:
    """Original timesteps kept by guided-diffusion's ``space_timesteps`` for ``ddimN``.

    ``ddimN`` keeps ``0, s, 2s, ...`` with the integer stride ``s`` that yields exactly N steps.
    A plain integer string ``"N"`` keeps N evenly spaced steps (guided-diffusion's section rule
    for a single section).
    """
    if respacing.startswith("ddim"):
        desired = int(respacing[len("ddim") :])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot create exactly {desired} DDIM steps from {num_steps} steps")
    count = int(respacing)
    if count <= 1 or count > num_steps:
        raise ValueError(f"timestep_respacing {respacing!r} must be in [2, {num_steps}]")
    frac = (num_steps - 1) / (count - 1)
    return sorted({round(i * frac) for i in range(count)})


@dataclass(frozen=True)
class RespacedSchedule:
    """Per-index coefficients of a respaced DDIM schedule (guided-diffusion conventions).

    Index ``i`` runs over the respaced grid; ``timesteps[i]`` is the original timestep the UNet is
    called with. Arrays are float64 numpy, as in the released code; :meth:`coef` casts to float32.
    """

    timesteps: np.ndarray  # int64, original timesteps
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def coef(self, name: str, index: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """A float64 coefficient at ``index``, cast to float32 and shaped for broadcasting."""
        table = torch.from_numpy(getattr(self, name)).to(index.device)
        value = table[index].float()
        return value.reshape(-1, *([1] * (ndim - 1)))

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The DDIM step's clean-image estimate ``sqrt(1/a) x - sqrt(1/a - 1) eps`` (unclipped)."""
        sr = self.coef("sqrt_recip_alphas_cumprod", index, x.ndim)
        return sr * x - self.coef("sqrt_recipm1_alphas_cumprod", index, x.ndim) * eps

    def predict_eps(self, x: torch.Tensor, x0: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The epsilon an estimate ``x0`` implies: ``(sqrt(1/a) x - x0) / sqrt(1/a - 1)``."""
        sr = self.coef("sqrt_recip_alphas_cumprod", index, x.ndim)
        return (sr * x - x0) / self.coef("sqrt_recipm1_alphas_cumprod", index, x.ndim)


def gdm_schedule(
    respacing: str,
    num_train_steps: int = 1000,
    schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> RespacedSchedule:
    """Respaced schedule as guided-diffusion's ``SpacedDiffusion`` builds it."""
    betas = make_betas(schedule, num_train_steps, beta_start, beta_end)
    base_cumprod = np.cumprod(1.0 - betas, axis=0)
    kept = respaced_timesteps(num_train_steps, respacing)
    new_betas = []
    last = 1.0
    for t in kept:
        new_betas.append(1 - base_cumprod[t] / last)
        last = base_cumprod[t]
    betas_r = np.array(new_betas, dtype=np.float64)
    cumprod = np.cumprod(1.0 - betas_r, axis=0)
    return RespacedSchedule(
        timesteps=np.array(kept, dtype=np.int64),
        alphas_cumprod=cumprod,
        alphas_cumprod_prev=np.append(1.0, cumprod[:-1]),
        alphas_cumprod_next=np.append(cumprod[1:], 0.0),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / cumprod - 1),
    )


def compvis_ddim_timesteps(num_ddim_steps: int, num_train_steps: int = 1000) -> np.ndarray:
    """CompVis ``make_ddim_timesteps`` with the "uniform" method: ``range(0, T, T//S) + 1``."""
    stride = num_train_steps // num_ddim_steps
    return np.asarray(list(range(0, num_train_steps, stride)), dtype=np.int64) + 1


@dataclass(frozen=True)
class CfgSchedule:
    """DDIM grid for the classifier-free-guidance models (LDM and DiffNB), eta = 0.

    ``alphas[i]`` is the cumulative alpha at ``timesteps[i]`` and ``alphas_prev[i]`` the one of the
    previous grid point (``alphas_cumprod[0]`` for i = 0), as in CompVis
    ``make_ddim_sampling_parameters``.
    """

    timesteps: np.ndarray
    alphas: np.ndarray
    alphas_prev: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def cfg_schedule(
    num_ddim_steps: int,
    schedule: str = "scaled_linear",
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
    num_train_steps: int = 1000,
    timestep_offset: int = 1,
    first_alpha_prev_one: bool = False,
) -> CfgSchedule:
    """DDIM sampling parameters for a class-conditional model.

    ``timestep_offset=1`` is CompVis's uniform grid (1, 41, ..., 961 for 25 steps); 0 gives
    0, 40, ..., 960 (the DDIM repository's convention, used for DiffNB). The DDIM repository
    also takes alpha_prev = 1 before the first grid point (``first_alpha_prev_one``), where CompVis
    takes ``alphas_cumprod[0]``.
    """
    betas = make_betas(schedule, num_train_steps, beta_start, beta_end)
    cumprod = np.cumprod(1.0 - betas, axis=0)
    stride = num_train_steps // num_ddim_steps
    steps = np.asarray(list(range(0, num_train_steps, stride)), dtype=np.int64) + timestep_offset
    steps = steps[steps < num_train_steps]
    alphas = cumprod[steps]
    first = 1.0 if first_alpha_prev_one else cumprod[0]
    alphas_prev = np.asarray([first] + cumprod[steps[:-1]].tolist())
    return CfgSchedule(timesteps=steps, alphas=alphas, alphas_prev=alphas_prev)
