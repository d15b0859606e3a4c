"""Safe checkpoint loading: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(RuntimeError):
    """Raised when a checkpoint cannot be loaded without executing code."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (or safetensors).

    Raises :class:`FileNotFoundError` naming the file when it is absent and
    :class:`UnsafeCheckpointError` when the file holds anything but tensors and
    plain containers (a pickle that would run code is refused, not executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load(weights_only=True) rejected it: {err.__class__.__name__}). "
            "Convert it to safetensors or a tensors-only state dict."
        ) from err
    except RuntimeError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise UnsafeCheckpointError(f"refusing to load {path}: {err}") from err
        raise


def state_dict_of(checkpoint: Any, path: str | Path = "<memory>") -> dict[str, torch.Tensor]:
    """Return the tensor state dict inside a loaded checkpoint.

    Accepts a bare state dict or the common wrappers ``{"state_dict": ...}``
    (Lightning / CompVis) and ``{"model": ...}``.
    """
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "ema"):
            inner = checkpoint.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    if isinstance(checkpoint, list) and checkpoint and isinstance(checkpoint[0], dict):
        # DDIM-style checkpoints: [model_state, optimizer_state, epoch, step, (ema_state)]
        candidate = checkpoint[-1] if len(checkpoint) >= 5 else checkpoint[0]
        return state_dict_of(candidate, path)
    raise ValueError(f"{path}: no tensor state dict found in checkpoint of type {type(checkpoint)}")
