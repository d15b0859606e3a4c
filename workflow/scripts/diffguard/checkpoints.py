"""Safe checkpoint loading: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
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
    source: Path | io.BytesIO = path
    wrapped = _wrapped_checkpoint(path)
    if wrapped is not None:
        log.warning("%s is a zip archive holding one checkpoint, %s: loading it", path, wrapped[0])
        source = io.BytesIO(wrapped[1])
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
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


CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


def _wrapped_checkpoint(path: Path) -> tuple[str, bytes] | None:
    """``(member, bytes)`` when ``path`` is a plain zip archive around one checkpoint file.

    Some hosts serve a checkpoint zipped (OpenOOD's v1.5 download script unzips
    ``cifar10_res18.zip`` for the Drive id its v1 script saved as a bare ``.ckpt``). torch's own
    format is also a zip, recognised by its ``data.pkl`` record, and is left to ``torch.load``.
    """
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if any(n.endswith("data.pkl") for n in names):
            return None
        found = [n for n in names if n.lower().endswith(CHECKPOINT_SUFFIXES)]
        if len(found) != 1:
            raise UnsafeCheckpointError(
                f"{path} is a zip archive, not a checkpoint: expected exactly one member ending in "
                f"{'/'.join(CHECKPOINT_SUFFIXES)}, found {found or names[:20]}"
            )
        return found[0], archive.read(found[0])


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
