"""Similarity scores between an image and its regeneration (higher = more in-distribution).

Transforms follow the released code (PAPER.md C.4): ``1 - d`` for distances bounded in [0, 1]
(DISTS and the piq losses of SSIM, FSIM and VIF, which piq clamps to [0, 1]), ``-d`` otherwise
(LPIPS, MDSI, GMSD, l2, logits). Images arrive in [-1, 1] and are mapped with
``clamp((x + 1) / 2, 0, 1)``. DISTS and LPIPS need VGG16 weights that piq would download at run
time: here they must already sit in an explicit torch-hub folder (a download rule fills it), and a
missing file is an error naming it. FSIM and MDSI are colour metrics: gray (1-channel) images are
repeated to 3 channels first (piq's FSIMc fails on 1 channel; MDSI repeats them itself). VIF
(piq ``vif_p``) needs images of at least 41 x 41 pixels. Every metric gets ``(reference,
recon)`` in that order (VIF is not symmetric).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import piq
import torch

from diffguard.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

DISTANCES = ("dists", "lpips", "ssim", "gmsd", "l2", "fsim", "mdsi", "vif", "logits")
"""Distances the workflow can compute (the released tester's); ``logits`` needs the classifier."""

VIF_MIN_SIZE = 41
"""Smallest image side piq's ``vif_p`` accepts."""

PERCEPTUAL_WEIGHT_FILES = {
    "dists": ("vgg16-397923af.pth", "dists_weights.pt"),
    "lpips": ("vgg16-397923af.pth", "lpips_weights.pt"),
}
"""Files piq loads from ``<torch hub dir>/checkpoints`` for each perceptual distance."""


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] with the released code's clamp; gray images repeated to RGB for VGG."""
    return ((x + 1) / 2).clamp(0, 1)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def require_perceptual_weights(name: str, hub_dir: str | Path | None) -> Path:
    """Point torch.hub at ``hub_dir`` after checking the weights ``name`` needs are there."""
    if hub_dir is None:
        raise FileNotFoundError(
            f"distance {name!r} needs VGG16 weights; set `weights.torch_hub_dir` in the config "
            "and run the download rule"
        )
    hub = Path(hub_dir)
    missing = [hub / "checkpoints" / f for f in PERCEPTUAL_WEIGHT_FILES[name]]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"distance {name!r} needs these weight files (download rule `download_weights`): "
            + ", ".join(str(p) for p in missing)
        )
    for name_ in PERCEPTUAL_WEIGHT_FILES[name]:
        # piq unpickles these through torch.hub; check first that they hold tensors only.
        load_checkpoint(hub / "checkpoints" / name_, map_location="cpu")
    torch.hub.set_dir(str(hub))
    return hub


class SimilarityScorer:
    """Per-image similarity scores ``score(reference, recon)`` for the configured distances."""

    def __init__(
        self,
        names: list[str] | tuple[str, ...],
        classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
        torch_hub_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        unknown = [n for n in names if n not in DISTANCES]
        if unknown:
            raise ValueError(f"unknown distance(s) {unknown}; expected some of {DISTANCES}")
        if "logits" in names and classifier is None:
            raise ValueError("distance 'logits' needs the classifier")
        self.names = list(names)
        self.classifier = classifier
        self._perceptual: dict[str, torch.nn.Module] = {}
        for name in ("dists", "lpips"):
            if name in names:
                require_perceptual_weights(name, torch_hub_dir)
                metric = (
                    piq.DISTS(reduction="none") if name == "dists" else piq.LPIPS(reduction="none")
                )
                self._perceptual[name] = metric.to(device).eval()

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores of every configured distance, each a float tensor of length N."""
        a, b = to_unit(reference.float()), to_unit(recon.float())
        out: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name in self._perceptual:
                dist = self._perceptual[name](_rgb(a), _rgb(b))
                out[name] = 1 - dist if name == "dists" else -dist
            elif name == "ssim":
                out[name] = piq.ssim(a, b, data_range=1.0, reduction="none")
            elif name == "gmsd":
                out[name] = -piq.gmsd(a, b, data_range=1.0, reduction="none")
            elif name == "fsim":
                # 1 - FSIMLoss = clamp(FSIMc, 0, 1), as the released ``1 - loss``.
                out[name] = 1 - piq.FSIMLoss(data_range=1.0, reduction="none")(_rgb(a), _rgb(b))
            elif name == "mdsi":
                # MDSILoss is MDSI itself (0 for identical images): score -MDSI.
                out[name] = -piq.mdsi(_rgb(a), _rgb(b), data_range=1.0, reduction="none")
            elif name == "vif":
                if min(a.shape[-2:]) < VIF_MIN_SIZE:
                    raise ValueError(
                        f"distance 'vif' (piq.vif_p) needs images of at least {VIF_MIN_SIZE} x "
                        f"{VIF_MIN_SIZE} pixels, got {tuple(a.shape[-2:])}"
                    )
                out[name] = 1 - piq.VIFLoss(data_range=1.0, reduction="none")(a, b)
            elif name == "l2":
                out[name] = -torch.linalg.vector_norm((a - b).flatten(1), dim=1)
            elif name == "logits":
                assert self.classifier is not None
                out[name] = -(self.classifier(a) - self.classifier(b)).abs().sum(dim=1)
        return {k: v.detach().cpu().float() for k, v in out.items()}
