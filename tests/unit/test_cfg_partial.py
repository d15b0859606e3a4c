"""CFG options of issue 15: partial inversion depth (``cfg.inversion_steps``) and the unguided
twin (``cfg.uncond_aux``) with ``score_reference``; both off by default."""

from __future__ import annotations

import pytest
import torch

from diffguard import cfg
from diffguard.cfg import CfgSettings
from diffguard.config import ConfigError, method_settings, resolve_experiment
from diffguard.gdm import CallCounter

NULL = 5
N = 2


def label_eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise epsilon depending on the sample, the timestep and the label."""
    y = y.float().view(-1, 1, 1, 1)
    return 0.05 * x + 0.02 * y + 1e-4 * t.float().view(-1, 1, 1, 1) + 0.01 * torch.sin(3 * x)


def _c(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64).float()


def full_grid_reference(x0: torch.Tensor, labels: torch.Tensor, s: CfgSettings) -> torch.Tensor:
    """The procedure before the options existed, written out: next_t null-label inversion over
    the whole grid, then DDIM sampling with global guidance over the whole grid."""
    sched = s.schedule()
    z = x0.clone()
    null = torch.full((N,), NULL)
    for i in range(sched.num_steps):
        eps = label_eps(z, torch.full((N,), int(sched.timesteps[i])), null)
        a_prev, a_next = float(sched.alphas_prev[i]), float(sched.alphas[i])
        x0_hat = (z - _c((1 - a_prev) ** 0.5) * eps) / _c(a_prev**0.5)
        z = _c(a_next**0.5) * x0_hat + _c((1 - a_next) ** 0.5) * eps
    for i in range(sched.num_steps - 1, -1, -1):
        t = torch.full((N,), int(sched.timesteps[i]))
        eps_u, eps_c = label_eps(z, t, null), label_eps(z, t, labels)
        eps = eps_u + s.guidance_scale * (eps_c - eps_u)
        a_t, a_prev = float(sched.alphas[i]), float(sched.alphas_prev[i])
        x0_hat = (z - _c((1 - a_t) ** 0.5) * eps) / _c(a_t**0.5)
        z = _c(a_prev**0.5) * x0_hat + _c((1 - a_prev) ** 0.5) * eps
    return z.clamp(-1, 1)


X0 = torch.rand(N, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
LABELS = torch.tensor([1, 3])


def test_defaults_are_off_and_reproduce_the_full_grid_procedure() -> None:
    settings = CfgSettings(ddim_steps=6, guidance_scale=3.0, use_cam=False)
    assert settings.inversion_steps is None and not settings.uncond_aux
    out = cfg.reconstruct(label_eps, X0, LABELS, NULL, settings)
    assert out.recon_uncond is None
    torch.testing.assert_close(
        out.recon, full_grid_reference(X0, LABELS, settings), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("ddim_steps", [1, 6, 10, 30, 25])
def test_grid_steps_is_the_schedule_length(ddim_steps: int) -> None:
    # 1000 // 6 = 166: CompVis's grid 1, 167, ..., 997 has 7 steps, not 6
    for offset in (0, 1):
        s = CfgSettings(ddim_steps=ddim_steps, timestep_offset=offset)
        assert s.grid_steps() == s.schedule().num_steps


@pytest.mark.parametrize(("ddim_steps", "uncond_aux"), [(10, False), (10, True), (6, True)])
def test_k_equal_to_the_grid_is_the_full_run(ddim_steps: int, uncond_aux: bool) -> None:
    base = CfgSettings(
        ddim_steps=ddim_steps, guidance_scale=3.0, use_cam=False, uncond_aux=uncond_aux
    )
    full = cfg.reconstruct(label_eps, X0, LABELS, NULL, base)
    k = base.schedule().num_steps
    whole = CfgSettings(**{**base.__dict__, "inversion_steps": k})
    k_run = cfg.reconstruct(label_eps, X0, LABELS, NULL, whole)
    for name in ("z_t", "recon", "recon_uncond"):
        a, b = getattr(full, name), getattr(k_run, name)
        assert (a is None and b is None) or torch.equal(a, b), name


@pytest.mark.parametrize("uncond_aux", [False, True])
def test_partial_depth_starts_from_step_k_and_runs_k_steps(uncond_aux: bool) -> None:
    n_steps, k = 10, 4
    grid = CfgSettings(ddim_steps=n_steps).schedule().timesteps.tolist()
    seen: list[tuple[int, torch.Tensor]] = []

    def spy(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((int(t[0]), x[:N].clone()))
        return label_eps(x, t, y)

    full = CfgSettings(ddim_steps=n_steps, guidance_scale=2.0, use_cam=False)
    cfg.invert(spy, X0, NULL, full)
    after_k_full_steps = seen[k][1]  # the sample the (k+1)-th inversion step starts from
    seen.clear()
    part = CfgSettings(**{**full.__dict__, "inversion_steps": k, "uncond_aux": uncond_aux})
    counter = CallCounter()
    out = cfg.reconstruct(spy, X0, LABELS, NULL, part, counter=counter)
    torch.testing.assert_close(out.z_t, after_k_full_steps, atol=0, rtol=0)
    timesteps = [t for t, _ in seen]
    assert timesteps == grid[:k] + grid[:k][::-1]  # next_t: k inversion, k sampling steps
    rows = N if uncond_aux else 0  # the twin rides in the sampling batch (one row each)
    assert counter.unet_calls == 2 * k
    assert counter.unet_rows == N * k + (2 * N + rows) * k


def test_twin_is_the_null_label_regeneration_of_the_same_latent() -> None:
    """The twin's rows carry the null label: plain eps_u, no mask, no guidance term."""
    settings = CfgSettings(
        ddim_steps=8, guidance_scale=4.0, use_cam=True, uncond_aux=True, inversion_steps=3
    )
    mask = torch.zeros(N, 1, 6, 6, dtype=torch.bool)
    mask[..., :3] = True
    out = cfg.reconstruct(label_eps, X0, LABELS, NULL, settings, mask=mask)
    assert out.recon_uncond is not None
    null = torch.full((N,), NULL)
    by_null = cfg.guided_sample(label_eps, out.z_t, null, NULL, None, settings).clamp(-1, 1)
    torch.testing.assert_close(out.recon_uncond, by_null, atol=0, rtol=0)
    # guidance scale 0 gives eps_u + 0 (eps_c - eps_u) = eps_u: the same twin
    w0 = CfgSettings(**{**settings.__dict__, "guidance_scale": 0.0})
    by_w0 = cfg.guided_sample(label_eps, out.z_t, LABELS, NULL, None, w0).clamp(-1, 1)
    torch.testing.assert_close(out.recon_uncond, by_w0, atol=0, rtol=0)
    assert (out.recon - out.recon_uncond).abs().max() > 1e-3  # guidance does act


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, True, "3"])
def test_inversion_steps_outside_the_grid_is_an_error_naming_the_key(bad: object) -> None:
    expected = r"inversion_steps: expected null or an integer in 1\.\.8 "
    with pytest.raises(ValueError, match=expected):
        CfgSettings(ddim_steps=8, inversion_steps=bad)  # type: ignore[arg-type]
    exp = {"name": "cfg_x", "method": "cfg", "cfg": {"ddim_steps": 8, "inversion_steps": bad}}
    with pytest.raises(ConfigError, match=r"experiments\.cfg_x\.cfg: inversion_steps"):
        method_settings(exp)


def test_uncond_recon_without_the_twin_is_an_error_naming_the_experiment() -> None:
    experiments = {
        "cfg_main": {"method": "cfg", "score_reference": "uncond_recon"},
        "cfg_twin": {"extends": "cfg_main", "cfg": {"uncond_aux": True}},
        "cfg_off": {"extends": "cfg_twin", "cfg": {"uncond_aux": False}},
        "gdm_main": {"method": "gdm", "score_reference": "uncond_recon"},  # twin on by default
    }
    for name in ("cfg_main", "cfg_off"):
        with pytest.raises(ConfigError, match=rf"experiments\.{name}\.score_reference.*uncond_aux"):
            resolve_experiment(experiments, name)
    assert resolve_experiment(experiments, "cfg_twin")["cfg"]["uncond_aux"]
    resolve_experiment(experiments, "gdm_main")
