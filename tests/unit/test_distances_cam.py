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


@pytest.mark.filterwarnings("ignore:The original MDSI")
def test_fsim_mdsi_vif_match_piq_and_rank() -> None:
    """Released transforms: fsim, vif -> 1 - piq loss; mdsi -> -MDSI; gray repeated to RGB."""
    import piq

    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    mild = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    strong = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    names = ["fsim", "mdsi", "vif"]
    scorer = SimilarityScorer(names)
    same, near, far = scorer(x, x), scorer(x, mild), scorer(x, strong)
    a, b = (x + 1) / 2, ((mild + 1) / 2).clamp(0, 1)
    assert torch.allclose(
        near["fsim"], piq.fsim(a, b, data_range=1.0, reduction="none").clamp(0, 1)
    )
    assert torch.allclose(near["mdsi"], -piq.mdsi(a, b, data_range=1.0, reduction="none"))
    assert torch.allclose(
        near["vif"], piq.vif_p(a, b, data_range=1.0, reduction="none").clamp(0, 1)
    )
    assert torch.allclose(same["fsim"], torch.ones(2)) and torch.allclose(
        same["vif"], torch.ones(2)
    )
    assert torch.allclose(same["mdsi"], torch.zeros(2), atol=1e-5)
    for name in names:
        assert torch.all(same[name] >= near[name] - 1e-6), name
        assert torch.all(near[name] > far[name]), name
    gray = x[:, :1]
    gray_scores = scorer(gray, mild[:, :1])
    rgb_scores = scorer(gray.repeat(1, 3, 1, 1), mild[:, :1].repeat(1, 3, 1, 1))
    for name in ("fsim", "mdsi"):
        assert torch.allclose(gray_scores[name], rgb_scores[name]), name
    with pytest.raises(ValueError, match="vif.*41"):
        SimilarityScorer(["vif"])(x[..., :32, :32], x[..., :32, :32])


def test_take_best_covers_new_distances() -> None:
    """The released best-of-distances switch picks a new distance when it wins a set."""
    import pandas as pd

    from diffguard.metrics import take_best_over

    aurocs = {
        "dists": {"a": 70.0, "b": 80.0},
        "vif": {"a": 75.0, "b": 60.0},
        "mdsi": {"a": 72.0, "b": 85.0},
    }
    rows = [
        {
            "method": f"DG ({d})",
            "kind": "diffguard",
            "experiment": "e",
            "distance": d,
            "dataset": ds,
            "role": "far",
            "auroc": au,
        }
        for d, per_set in aurocs.items()
        for ds, au in per_set.items()
    ]
    best = take_best_over(pd.DataFrame(rows))
    best = best[best["distance"] == "best"].set_index("dataset")["auroc"]
    assert best["a"] == 75.0 and best["b"] == 85.0


def test_lpips_is_an_early_stop_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """early_stop_metrics accepts lpips (score -LPIPS, noisy x unclamped); unknown names fail."""
    import piq

    from diffguard.gdm import GdmSettings, early_stop_similarities, perceptual_similarity

    seen: list[torch.Tensor] = []

    class FakeLpips(nn.Module):
        def __init__(self, reduction: str) -> None:
            super().__init__()

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            seen.append(a)
            return (a - b).abs().flatten(1).mean(dim=1)

    monkeypatch.setattr(piq, "LPIPS", FakeLpips)
    monkeypatch.setattr("diffguard.distances.require_perceptual_weights", lambda name, hub: None)
    settings = GdmSettings(early_stop_metrics=("psnr", "lpips"), early_stop_thresholds=(48.5, -0.1))
    sim = perceptual_similarity("lpips", None, torch.device("cpu"))
    sims = early_stop_similarities(settings, {"lpips": sim})
    assert list(sims) == ["psnr", "lpips"]
    x0 = torch.zeros(2, 1, 8, 8)
    x = torch.full((2, 1, 8, 8), 1.5)  # outside [-1, 1]: not clamped, as the released metric
    assert torch.allclose(sims["lpips"](x, x0), torch.full((2,), -0.75))
    assert seen[-1].shape[1] == 3
    with pytest.raises(ValueError, match="early_stop_metrics.*fsim"):
        GdmSettings(early_stop_metrics=("fsim",), early_stop_thresholds=(0.5,))
