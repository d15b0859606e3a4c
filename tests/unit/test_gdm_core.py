"""GDM building blocks on toy models: units, crops, guidance sign, start rule, masking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffguard import gdm
from diffguard.gdm import CropSampler, GdmSettings


class ToyEps(nn.Module):
    """A per-sample stand-in for a UNet (conv, timestep-dependent)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.3 * torch.tanh(self.conv(x)) + 0.001 * t.float().view(-1, 1, 1, 1)


class ToyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.silu(self.conv(x)).mean(dim=(2, 3)))


def test_code_psnr_is_paper_psnr_plus_42_11_db() -> None:
    x0 = torch.zeros(2, 3, 8, 8)
    x = x0 + 0.1
    code = gdm.psnr_code_units(x, x0, peak=255.0)
    paper = gdm.psnr_code_units(x, x0, peak=2.0)
    assert torch.allclose(code - paper, torch.full((2,), 20 * math.log10(127.5)))
    assert float(code[0] - paper[0]) == pytest.approx(42.11, abs=0.005)


def test_crops_repeat_for_the_same_seed_and_stay_inside() -> None:
    a, b = CropSampler(8, 224, seed=100), CropSampler(8, 224, seed=100)
    assert a.params(3, 256, 256) == b.params(3, 256, 256)
    assert CropSampler(8, 224, seed=101).params(0, 256, 256) != a.params(0, 256, 256)
    for step in range(4):
        for size, ox, oy in a.params(step, 256, 256):
            assert 224 <= size <= 256 and 0 <= ox <= 256 - size and 0 <= oy <= 256 - size
    out = a(torch.rand(2, 3, 256, 256), step=1)
    assert out.shape == (16, 3, 224, 224)


def test_guidance_raises_log_probability_and_skips_twin_rows() -> None:
    clf = ToyClassifier()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 3, -1, -1])
    settings = GdmSettings(cutouts_num=-1, classifier_scale=1.0, no_x0_hat=True)
    g = gdm.classifier_guidance(
        clf,
        x,
        x,
        torch.full((4, 1, 1, 1), 0.5),
        labels,
        torch.zeros(4, dtype=torch.long),
        settings,
        None,
    )
    assert torch.all(g[2:] == 0) and torch.all(g[:2].abs().sum(dim=(1, 2, 3)) > 0)

    def logp(z: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(clf((z + 1) / 2), dim=1)
        return lp[torch.arange(2), labels[:2]]

    # The released sampler subtracts sqrt(1 - alpha) * g from epsilon, i.e. moves x along +g.
    assert torch.all(logp(x[:2] + 1e-2 * g[:2]) > logp(x[:2]))


def test_x0_hat_blend_weight() -> None:
    clf = ToyClassifier()
    x_t, x0_hat = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8) * 0.5
    seen = {}

    def spy(images: torch.Tensor) -> torch.Tensor:
        seen["x"] = images.detach().clone()
        return clf(images)

    f = torch.full((1, 1, 1, 1), 0.25)
    settings = GdmSettings(cutouts_num=-1)
    gdm.classifier_guidance(
        spy, x_t, x0_hat, f, torch.tensor([1]), torch.zeros(1, dtype=torch.long), settings, None
    )
    blend = 0.25 * 0.5 + 0.75 * 0.0
    assert torch.allclose(seen["x"], torch.full_like(seen["x"], (blend + 1) / 2))


def test_denoise_start_rule() -> None:
    rev_t = torch.tensor([5, 89, 0])
    settings = GdmSettings(forback_skip_diff=3)
    assert gdm.denoise_start_index(rev_t, settings, 100).tolist() == [7, 91, 2]
    fixed = GdmSettings(forback_skip_diff=0, skip_first_steps=4)
    assert gdm.denoise_start_index(rev_t, fixed, 10).tolist() == [5, 5, 5]


def test_masked_batch_equals_per_image_runs() -> None:
    # Batch composition changes float rounding of the convolutions (~1e-6 per step); an
    # algorithmic mistake (wrong start step, crops or mask) shows up at 1e-2 and more.
    eps, clf = ToyEps(), ToyClassifier()
    torch.manual_seed(3)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    x0[1] *= 0.2  # different images stop at different steps
    x0[3] = x0[3].sign() * 0.9
    labels = torch.tensor([1, 2, 3, 4])
    settings = GdmSettings(
        respacing="ddim20",
        early_stop_steps=4,
        early_stop_metrics=("psnr",),
        early_stop_thresholds=(52.5,),
        forback_skip_diff=3,
        cutouts_num=4,
        cutouts_size=12,
        classifier_scale=2.0,
    )
    batched = gdm.reconstruct(eps, clf, x0, labels, settings, {})
    assert len(set(batched.rev_t.tolist())) > 1, "test needs mixed stop steps"
    for i in range(4):
        single = gdm.reconstruct(eps, clf, x0[i : i + 1], labels[i : i + 1], settings, {})
        assert single.rev_t.item() == batched.rev_t[i].item()
        torch.testing.assert_close(single.x_t[0], batched.x_t[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.recon[0], batched.recon[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            single.recon_uncond[0], batched.recon_uncond[i], atol=1e-4, rtol=0
        )


def test_zero_scale_makes_guided_equal_unguided() -> None:
    eps, clf = ToyEps(), ToyClassifier()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    settings = GdmSettings(
        respacing="ddim10",
        early_stop_steps=4,
        early_stop_metrics=(),
        early_stop_thresholds=(),
        classifier_scale=0.0,
        cutouts_num=-1,
    )
    out = gdm.reconstruct(eps, clf, x0, torch.tensor([0, 1]), settings, {})
    assert torch.equal(out.recon, out.recon_uncond)


def test_inversion_trace_runs_every_step_without_early_stop() -> None:
    """Fig. 4's trace: all S steps whatever the early-stop settings, in psnr_peak units."""
    eps = ToyEps()
    torch.manual_seed(4)
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    # a threshold every image crosses at the first step, and a capped grid
    settings = GdmSettings(
        respacing="ddim20",
        early_stop_steps=6,
        early_stop_metrics=("psnr",),
        early_stop_thresholds=(1000.0,),
    )
    _, rev_t, stopped = gdm.invert(eps, x0, settings, {})
    assert rev_t.tolist() == [0, 0, 0] and stopped[:, 1:].isnan().all()
    trace = gdm.inversion_trace(eps, x0, settings)
    assert trace.shape == (3, 20) and torch.isfinite(trace).all()
    full = GdmSettings(
        respacing="ddim20", early_stop_steps=0, early_stop_metrics=(), early_stop_thresholds=()
    )
    _, _, paper_units = gdm.invert(eps, x0, full, None)
    torch.testing.assert_close(trace, paper_units + 20 * math.log10(127.5))
    # the first steps match the capped inversion before its images stopped
    torch.testing.assert_close(trace[:, 0], stopped[:, 0] + 20 * math.log10(127.5))
    # x_t drifts away from the input: the last level (alpha_bar 0, pure epsilon) is the lowest
    assert (trace[:, -1] < trace[:, 0]).all()
    levels = gdm.inversion_levels(settings)
    assert (
        levels.shape == (20,)
        and levels[-1] == 1000
        and levels[0] == settings.schedule().timesteps[1]
    )
    assert gdm.psnr_threshold(settings) == 1000.0
    assert (
        gdm.psnr_threshold(GdmSettings(early_stop_metrics=("dists",), early_stop_thresholds=(0.4,)))
        is None
    )
    two = gdm.inversion_trace(eps, x0, GdmSettings(respacing="ddim20", psnr_peak=2.0))
    torch.testing.assert_close(two, paper_units)
