"""Similarity scores (conventions, weight files) and Grad-CAM masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffguard.cam import cam_mask, gradcam_maps
from diffguard.distances import SimilarityScorer, require_perceptual_weights
from diffguard.reconstruction import oracle_label


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean(dim=(2, 3)))


def test_identical_images_score_highest() -> None:
    net = TinyNet()
    scorer = SimilarityScorer(["ssim", "gmsd", "l2", "logits"], classifier=net)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    same, other = scorer(x, x), scorer(x, noisy)
    for name in ("ssim", "gmsd", "l2", "logits"):
        assert same[name].shape == (3,)
        assert torch.all(same[name] >= other[name] - 1e-6), name
    assert torch.allclose(same["l2"], torch.zeros(3)) and torch.allclose(
        same["ssim"], torch.ones(3)
    )


def test_l2_score_is_negative_norm_on_unit_range() -> None:
    scorer = SimilarityScorer(["l2"])
    a, b = -torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # [0,1]: all zeros vs all ones
    assert scorer(a, b)["l2"].item() == pytest.approx(-2.0)


def test_missing_perceptual_weights_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dists_weights.pt"):
        require_perceptual_weights("dists", tmp_path)
    with pytest.raises(FileNotFoundError, match="torch_hub_dir"):
        SimilarityScorer(["lpips"])
    with pytest.raises(ValueError, match="unknown distance"):
        SimilarityScorer(["psnr2"])


def test_cam_mask_shape_and_cut() -> None:
    net = TinyNet().eval()
    images = torch.rand(2, 1, 16, 16)
    maps = gradcam_maps(net, net.block, images, torch.tensor([0, 2]))
    assert maps.shape == (2, 16, 16)
    assert maps.min() >= 0 and maps.max() <= 1
    loose = cam_mask(net, net.block, images, torch.tensor([0, 2]), 0.0)
    tight = cam_mask(net, net.block, images, torch.tensor([0, 2]), 0.9)
    assert loose.shape == (2, 1, 16, 16) and loose.dtype == torch.bool
    assert tight.sum() <= loose.sum()
    cut = 0.4
    inverted = cam_mask(net, net.block, images, torch.tensor([0, 2]), -cut)
    # Released: a negative cut keeps the pixels below |cut| (the inverse of a positive cut).
    assert torch.equal(inverted, (maps < cut).unsqueeze(1))
    assert not torch.equal(inverted, torch.ones_like(inverted))
    assert torch.all(
        inverted ^ cam_mask(net, net.block, images, torch.tensor([0, 2]), cut)
        | (maps == cut).unsqueeze(1)
    )


def test_oracle_labels_true_for_id_seeded_random_for_ood() -> None:
    assert oracle_label("img1", 4, 10, seed=0) == 4
    ood = [oracle_label(f"img{i}", -1, 10, seed=0) for i in range(50)]
    assert all(0 <= y < 10 for y in ood) and len(set(ood)) > 3
    assert ood == [oracle_label(f"img{i}", -1, 10, seed=0) for i in range(50)]
    assert ood != [oracle_label(f"img{i}", -1, 10, seed=1) for i in range(50)]
