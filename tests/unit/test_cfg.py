"""Classifier-free-guidance DiffGuard (LDM / DiffNB / embedded CFG) on toy models."""

from __future__ import annotations

import pytest
import torch

from diffguard import cfg
from diffguard.cfg import CfgSettings

NULL = 5


def constant_eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, 0.1)


def label_eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Epsilon that depends on the label, so guidance changes the result."""
    return 0.05 * x + 0.02 * y.float().view(-1, 1, 1, 1) + 1e-4 * t.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("variant", ["next_t", "standard"])
def test_inversion_then_unguided_sampling_is_exact_for_constant_eps(variant: str) -> None:
    settings = CfgSettings(ddim_steps=10, inversion_variant=variant, guidance_scale=0.0)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    out = cfg.reconstruct(constant_eps, x0, torch.tensor([1, 2]), NULL, settings)
    torch.testing.assert_close(out.recon, x0.clamp(-1, 1), atol=1e-4, rtol=0)


def test_next_t_variant_evaluates_at_target_timestep() -> None:
    seen: list[int] = []

    def spy(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        assert torch.all(y == NULL)
        return torch.zeros_like(x)

    cfg.invert(spy, torch.zeros(1, 3, 4, 4), NULL, CfgSettings(ddim_steps=25))
    assert seen[:3] == [1, 41, 81] and seen[-1] == 961
    seen.clear()
    cfg.invert(
        spy, torch.zeros(1, 3, 4, 4), NULL, CfgSettings(ddim_steps=25, inversion_variant="standard")
    )
    assert seen[:3] == [0, 1, 41]


def test_empty_mask_means_no_guidance_and_full_mask_means_global() -> None:
    z = torch.rand(2, 3, 8, 8)
    labels = torch.tensor([1, 3])
    settings = CfgSettings(ddim_steps=5, guidance_scale=4.0)
    unguided = cfg.guided_sample(label_eps, z, torch.full((2,), NULL), NULL, None, settings)
    none_mask = cfg.guided_sample(
        label_eps, z, labels, NULL, torch.zeros(2, 1, 16, 16, dtype=torch.bool), settings
    )
    full_mask = cfg.guided_sample(
        label_eps, z, labels, NULL, torch.ones(2, 1, 16, 16, dtype=torch.bool), settings
    )
    global_cfg = cfg.guided_sample(label_eps, z, labels, NULL, None, settings)
    torch.testing.assert_close(none_mask, unguided)
    torch.testing.assert_close(full_mask, global_cfg)
    assert (global_cfg - unguided).abs().max() > 1e-3


def test_guidance_formula_eps_u_plus_w_times_difference() -> None:
    settings = CfgSettings(ddim_steps=1, guidance_scale=3.0)
    z = torch.zeros(1, 1, 2, 2)
    out = cfg.guided_sample(label_eps, z, torch.tensor([2]), NULL, None, settings)
    sched = settings.schedule()
    a_t, a_prev = float(sched.alphas[0]), float(sched.alphas_prev[0])
    t = float(sched.timesteps[0])
    eps_u = 0.02 * NULL + 1e-4 * t
    eps_c = 0.02 * 2 + 1e-4 * t
    eps = eps_u + 3.0 * (eps_c - eps_u)
    x0 = (0 - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    expected = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    torch.testing.assert_close(out, torch.full_like(out, expected), atol=1e-6, rtol=0)


def test_uncond_twin_and_encode_decode_hooks() -> None:
    settings = CfgSettings(ddim_steps=4, guidance_scale=2.0, uncond_aux=True, use_cam=False)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    calls = {"enc": 0, "dec": 0}

    def enc(x: torch.Tensor) -> torch.Tensor:
        calls["enc"] += 1
        return x[:, :, ::2, ::2]

    def dec(z: torch.Tensor) -> torch.Tensor:
        calls["dec"] += 1
        return z.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    out = cfg.reconstruct(
        label_eps, x0, torch.tensor([0, 1]), NULL, settings, encode=enc, decode=dec
    )
    assert calls == {"enc": 1, "dec": 1}
    assert out.recon.shape == x0.shape and out.recon_uncond is not None
    assert out.z_t.shape == (2, 3, 4, 4)
    assert not torch.allclose(out.recon, out.recon_uncond)


def test_bad_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="inversion_variant"):
        CfgSettings(inversion_variant="reverse")
