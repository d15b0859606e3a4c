"""Runtime helpers shared by the workflow stages: logging, devices, images, model loading."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffguard.config import (  # noqa: F401  (crop_sizes re-exported; torch-free for parsing)
    crop_sizes,
    experiment_image_sizes,
)
from diffguard.data import ImageRecord, load_image_checked

if TYPE_CHECKING:
    from diffguard.backends import DiffusionBackend

log = logging.getLogger("diffguard")


def setup_logging(log_file: str | Path | None) -> None:
    """Log to the rule's log file (and stderr), with timestamps and the software versions."""
    from diffguard.io import setup_file_logging

    setup_file_logging(log_file)
    log.info(
        "diffguard %s, torch %s, python %s", _version(), torch.__version__, sys.version.split()[0]
    )


def _version() -> str:
    from diffguard import __version__

    return __version__


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def image_root(benchmark_json: str | Path) -> Path:
    """Folder the image-list paths are relative to (recorded in ``benchmark.json``)."""
    summary = json.loads(Path(benchmark_json).read_text())
    return (Path(benchmark_json).parent / summary.get("image_root", "images")).resolve()


def load_records_images(
    records: Sequence[ImageRecord],
    root: Path,
    size: int,
    channels: int,
    pre_size: int | None = None,
    *,
    load_truncated: bool = False,
    truncated: list[str] | None = None,
) -> torch.Tensor:
    """Images of ``records`` as N x C x H x W in [0, 1] (errors name the failing file).

    ``Resize(pre_size)`` (shorter side) then ``CenterCrop(size)``; ``pre_size`` None means
    ``size`` (e.g. ImageNet: 256 then a 224 crop for GDM, a 256 crop for the LDM).
    ``load_truncated`` decodes truncated files as far as they go (OpenOOD); their list paths
    are appended to ``truncated``.
    """
    images = []
    for r in records:
        image, cut = load_image_checked(
            root / r.path, size, channels, pre_size, load_truncated=load_truncated
        )
        images.append(image)
        if cut and truncated is not None:
            truncated.append(r.path)
    return torch.stack(images)


def load_truncated_images(benchmark: Mapping[str, Any]) -> bool:
    """``benchmark.load_truncated_images`` (default true: OpenOOD's and DiffGuard's loaders)."""
    return bool(benchmark.get("load_truncated_images", True))


def load_experiment_images(
    records: Sequence[ImageRecord],
    root: Path,
    experiment: Mapping[str, Any],
    benchmark: Mapping[str, Any],
    classifier_spec: Mapping[str, Any] | None = None,
    truncated: list[str] | None = None,
) -> torch.Tensor:
    """Images of ``records`` in [0, 1] at :func:`experiment_image_sizes` (N x C x H x W).

    Truncated files follow ``benchmark.load_truncated_images``; their paths go to ``truncated``.
    """
    size, pre_size = experiment_image_sizes(experiment, benchmark, classifier_spec)
    return load_records_images(
        records,
        root,
        size,
        int(benchmark["channels"]),
        pre_size,
        load_truncated=load_truncated_images(benchmark),
        truncated=truncated,
    )


def load_trained_classifier(weights: str | Path, device: torch.device) -> torch.nn.Module:
    """A classifier directory's ``model.safetensors`` + ``spec.json`` (trained or prepared)."""
    from diffguard.model_io import load_classifier

    return load_classifier(Path(weights).parent).to(device).eval()


def load_diffusion_model(
    model_dir: str | Path,
    device: torch.device,
    precision: str | torch.dtype = "float32",
    where: str = "precision",
) -> DiffusionBackend:
    """The diffusion model of ``model_dir`` as a backend (trained or converted; see backends).

    ``precision``: a :data:`diffguard.precision.PRECISIONS` name (``released`` = the released
    code's setting for the model's source) or a dtype; ``where`` names its config key.
    """
    from diffguard.backends import load_backend

    return load_backend(model_dir, device, precision, where=where)
