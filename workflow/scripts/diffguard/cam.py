"""Grad-CAM masks of the predicted class (the released code's DSG mask for CFG guidance)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

log = logging.getLogger(__name__)


def gradcam_maps(
    classifier: torch.nn.Module,
    target_layer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM of ``labels`` on ``images`` ([0, 1], N x C x H x W), min-max scaled per image.

    Uses the maintained ``grad-cam`` package (ReLU, per-image min-max, resize to the input).
    """
    with GradCAM(model=classifier, target_layers=[target_layer]) as cam:
        targets = [ClassifierOutputTarget(int(y)) for y in labels.tolist()]
        maps = cam(input_tensor=images, targets=targets)
    maps_t = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    # The released code min-max normalises each image again (scale_each); keep it explicit so a
    # library change in its own scaling does not change our masks.
    flat = maps_t.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scaled = (flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]
    return scaled.view_as(maps_t)


def cam_mask(
    classifier: torch.nn.Module,
    target_layer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cam_cut: float,
) -> torch.Tensor:
    """Binary mask ``CAM > cam_cut`` (N x 1 x H x W); a negative cut inverts the usual mask."""
    return threshold_cam(gradcam_maps(classifier, target_layer, images, labels), cam_cut)


def threshold_cam(maps: torch.Tensor, cam_cut: float) -> torch.Tensor:
    """``maps > cam_cut``, or ``maps < |cam_cut|`` for a negative cut (N x 1 x H x W).

    The released code inverts the mask for a negative cut (``grayscale_cam_scaled <
    abs(cam_cut)``): the guidance then edits the regions the classifier does not look at.
    """
    mask = maps < abs(cam_cut) if cam_cut < 0 else maps > cam_cut
    return mask.unsqueeze(1)
