"""Schedules and DDIM grids against diffusers and the released code's conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffguard.schedules import (
    cfg_schedule,
    compvis_ddim_timesteps,
    gdm_schedule,
    make_betas,
    respaced_timesteps,
)


@pytest.mark.parametrize(
    ("name", "start", "end"), [("linear", 1e-4, 0.02), ("scaled_linear", 0.0015, 0.0195)]
)
def test_betas_match_diffusers(name: str, start: float, end: float) -> None:
    ours = np.cumprod(1 - make_betas(name, 1000, start, end))
    ref = DDIMScheduler(beta_schedule=name, beta_start=start, beta_end=end).alphas_cumprod
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5)


def test_ddim_respacing_keeps_strided_original_steps() -> None:
    assert respaced_timesteps(1000, "ddim100") == list(range(0, 1000, 10))
    assert respaced_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    with pytest.raises(ValueError, match="exactly 400"):
        respaced_timesteps(1000, "ddim400")


def test_respaced_alphas_are_original_alphas_at_kept_steps() -> None:
    sched = gdm_schedule("ddim10")
    base = np.cumprod(1 - make_betas("linear", 1000, 1e-4, 0.02))
    np.testing.assert_allclose(sched.alphas_cumprod, base[sched.timesteps], rtol=1e-12)
    assert sched.alphas_cumprod[0] == pytest.approx(1 - 1e-4)  # level 0 is not 1
    assert sched.alphas_cumprod_next[-1] == 0.0
    assert sched.alphas_cumprod_prev[0] == 1.0


def test_compvis_uniform_grid_offsets_by_one() -> None:
    steps = compvis_ddim_timesteps(25)
    assert steps[0] == 1 and steps[1] == 41 and steps[-1] == 961 and len(steps) == 25
    sched = cfg_schedule(25)
    np.testing.assert_array_equal(sched.timesteps, steps)
    base = np.cumprod(1 - make_betas("scaled_linear", 1000, 0.0015, 0.0195))
    assert sched.alphas_prev[0] == base[0]
    assert sched.alphas_prev[3] == base[steps[2]]


def test_ddim_repo_grid_starts_at_zero_with_unit_alpha_prev() -> None:
    sched = cfg_schedule(20, "linear", 1e-4, 0.02, timestep_offset=0, first_alpha_prev_one=True)
    assert sched.timesteps[0] == 0 and sched.timesteps[-1] == 950
    assert sched.alphas_prev[0] == 1.0


def test_coefficients_cast_to_float32() -> None:
    sched = gdm_schedule("ddim10")
    value = sched.coef("sqrt_recip_alphas_cumprod", torch.tensor([0, 3]))
    assert value.dtype == torch.float32 and value.shape == (2, 1, 1, 1)
