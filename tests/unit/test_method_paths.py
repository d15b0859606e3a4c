"""The three DiffGuard paths end to end on the converted tiny reference models.

LDM: VQ encode -> null-class DDIM inversion -> CAM-masked CFG -> VQ decode.
CIFAR-10 (DiffNB): pixel-space CFG, score = L1 distance of the classifier's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffguard import cfg
from diffguard.cam import cam_mask
from diffguard.cfg import CfgSettings
from diffguard.checkpoints import load_checkpoint
from diffguard.convert.diffnb import build_diffnb_unet, convert_diffnb_state_dict, diffnb_null_label
from diffguard.convert.ldm import convert_ldm_checkpoint, ldm_decode, ldm_encode, ldm_eps
from diffguard.distances import SimilarityScorer


class TinyClassifier(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer4 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer4(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def ldm(checkpoints_dir: Path):
    fx = load_checkpoint(checkpoints_dir / "ldm_tiny_fixture.pt")
    parts = convert_ldm_checkpoint(
        fx["state_dict"], fx["unet_config"], fx["ddconfig"], fx["n_embed"], fx["embed_dim"]
    )
    return fx, parts


def test_ldm_path_reconstructs_through_vq(ldm) -> None:
    fx, parts = ldm
    images01 = ((fx["image"] + 1) / 2).clamp(0, 1)
    classifier = TinyClassifier(parts.null_class).eval()
    labels = classifier(images01).argmax(1)
    mask = cam_mask(classifier, classifier.layer4, images01, labels, cam_cut=0.3)
    settings = CfgSettings(ddim_steps=5, guidance_scale=10.0)

    def run(use_cam: bool) -> cfg.CfgResult:
        return cfg.reconstruct(
            lambda z, t, y: ldm_eps(parts, z, t, y),
            fx["image"],
            labels,
            parts.null_class,
            CfgSettings(**{**settings.__dict__, "use_cam": use_cam}),
            mask,
            encode=lambda x: ldm_encode(parts, x, quantize=settings.encode_quantize),
            decode=lambda z: ldm_decode(parts, z, quantize=settings.decode_quantize),
        )

    masked, again, global_cfg = run(True), run(True), run(False)
    assert masked.recon.shape == fx["image"].shape and masked.z_t.shape == (2, 3, 8, 8)
    assert masked.recon.abs().max() <= 1
    assert torch.equal(masked.recon, again.recon)  # LDM has no randomness
    assert masked.mask is not None and global_cfg.mask is None
    if not bool(mask.all()):
        assert not torch.allclose(masked.recon, global_cfg.recon)


def test_decode_quantize_switch_changes_decoding(ldm) -> None:
    fx, parts = ldm
    z = fx["z"]
    plain = ldm_decode(parts, z, quantize=False)
    torch.testing.assert_close(plain, fx["decoded"], atol=1e-4, rtol=0)
    assert (ldm_decode(parts, z, quantize=True) - plain).abs().max() > 1e-3


def test_cifar10_path_with_diffnb_and_logits_score(checkpoints_dir: Path) -> None:
    fx = load_checkpoint(checkpoints_dir / "diffnb_tiny_fixture.pt")
    unet = build_diffnb_unet(fx["config"])
    unet.load_state_dict(convert_diffnb_state_dict(fx["state_dict"], fx["config"]), strict=True)
    unet.eval()
    null = diffnb_null_label(fx["config"])
    assert null == 10
    classifier = TinyClassifier(10).eval()
    x = fx["x"].clamp(-1, 1)
    labels = classifier((x + 1) / 2).argmax(1)
    settings = CfgSettings(
        ddim_steps=10,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_offset=0,
        first_alpha_prev_one=True,
        guidance_scale=2.0,
        use_cam=False,
    )
    out = cfg.reconstruct(
        lambda z, t, y: unet(z, t, class_labels=y).sample, x, labels, null, settings
    )
    scores = SimilarityScorer(["logits"], classifier)(x, out.recon)["logits"]
    assert scores.shape == (3,) and torch.all(scores <= 0)
    same = SimilarityScorer(["logits"], classifier)(x, x)["logits"]
    assert torch.all(same == 0)
