"""GDM on a class-conditional pixel model: every eps call uses the null label (unconditional eps),
so one conditional model serves CFG and GDM; an unconditional model is called without labels."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn

from diffguard import gdm
from diffguard.backends import PixelBackend
from diffguard.gdm import GdmSettings
from diffguard.method_api import unconditional_eps
from diffguard.training import small_unet_kwargs

NUM_CLASSES = 3
SHAPE = {"block_out_channels": [8, 8], "attention": False, "norm_num_groups": 4}


class Spy(nn.Module):
    """Records the class labels of every call of the wrapped UNet."""

    def __init__(self, unet: nn.Module, fixed: int | None = None) -> None:
        super().__init__()
        self.inner, self.fixed, self.seen = unet, fixed, []

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: Any = None) -> Any:
        self.seen.append(None if class_labels is None else class_labels.tolist())
        if self.fixed is not None:  # an "unconditional" model: the null label hard-wired
            class_labels = torch.full((x.shape[0],), self.fixed, dtype=torch.long)
        return self.inner(x, t, class_labels=class_labels)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


def test_gdm_calls_a_conditional_model_with_the_null_label() -> None:
    torch.manual_seed(0)
    unet = UNet2DModel(**small_unet_kwargs(1, 8, True, NUM_CLASSES, SHAPE)).eval()
    cond_spy, uncond_spy = Spy(unet), Spy(unet, fixed=NUM_CLASSES)
    cond = PixelBackend(cond_spy, "train", 1, 8, null_label=NUM_CLASSES)
    uncond = PixelBackend(uncond_spy, "train", 1, 8)
    settings = GdmSettings(
        respacing="ddim10",
        early_stop_steps=5,
        early_stop_metrics=(),
        early_stop_thresholds=(),
        forback_skip_diff=1,
        cutouts_num=-1,
        classifier_scale=10.0,
        uncond_aux=True,
    )
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    labels = torch.tensor([0, 2])
    a = gdm.reconstruct(unconditional_eps(cond), Classifier(), x0, labels, settings, {})
    b = gdm.reconstruct(unconditional_eps(uncond), Classifier(), x0, labels, settings, {})
    assert cond_spy.seen and all(
        seen is not None and set(seen) == {NUM_CLASSES} for seen in cond_spy.seen
    )
    assert uncond_spy.seen and all(seen is None for seen in uncond_spy.seen)
    assert len(cond_spy.seen) == len(uncond_spy.seen)
    torch.testing.assert_close(a.recon, b.recon, atol=0, rtol=0)
    torch.testing.assert_close(a.recon_uncond, b.recon_uncond, atol=0, rtol=0)
    assert not torch.equal(a.recon, a.recon_uncond)  # guidance did act
