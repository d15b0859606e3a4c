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


# Pickled globals from these modules are replaced by inert placeholders instead of being refused:
# PyTorch Lightning checkpoints (CompVis' LDM among them) store callback classes or instances
# next to the weights ("Unsupported class ...ModelCheckpoint" under weights_only=True). Their
# state is plain data; the classes themselves are never imported or called.
INERT_GLOBAL_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.")


class InertObject:
    """Placeholder for a pickled object of an allow-listed class that is never constructed.

    Subclasses are made per global name by :func:`inert_class`; unpickling only records the
    arguments (``args``) and the pickled state (``state``), and runs no code of the real class.
    """

    qualified_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: ``__new__`` kept the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name} state={self.state!r}>"


def inert_class(qualified_name: str) -> type[InertObject]:
    """A fresh :class:`InertObject` subclass standing in for the global ``qualified_name``."""
    return type(
        qualified_name.rsplit(".", 1)[-1],
        (InertObject,),
        {"qualified_name": qualified_name, "__module__": __name__},
    )


def _is_inert_global(qualified_name: str) -> bool:
    return qualified_name.startswith(INERT_GLOBAL_PREFIXES)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (or safetensors).

    A torch zip checkpoint whose only non-tensor globals are PyTorch Lightning callback classes
    (:data:`INERT_GLOBAL_PREFIXES`) is loaded with those globals replaced by inert placeholders
    (:class:`InertObject`); everything else still goes through torch's weights-only unpickler.

    Raises :class:`FileNotFoundError` naming the file when it is absent and
    :class:`UnsafeCheckpointError` when the file holds anything but tensors, plain containers
    and such callbacks (a pickle that would run code is refused, not executed).
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
        first_error: Exception = err
    except RuntimeError as err:
        if "weights_only" not in str(err) and "Unsupported" not in str(err):
            raise
        first_error = err
    return _load_with_inert_globals(path, source, map_location, first_error)


def _load_with_inert_globals(
    path: Path, source: Path | io.BytesIO, map_location: str | torch.device, first_error: Exception
) -> Any:
    """Retry a weights-only load with allow-listed globals mapped to inert placeholders.

    The pickle's globals are listed by static disassembly (no code runs); a global outside
    :data:`INERT_GLOBAL_PREFIXES` and torch's own allow-list refuses the file.
    """
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        unsafe = []  # not a torch zip checkpoint (legacy pickle, ...): nothing can be mapped
    refused = [name for name in unsafe if not _is_inert_global(name)]
    if not unsafe or refused:
        detail = f"globals {refused}" if refused else f"{first_error.__class__.__name__}"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint (it needs {detail}, "
            "which torch.load(weights_only=True) rejects and which would run code if unpickled; "
            f"only tensors, plain containers and {'/'.join(INERT_GLOBAL_PREFIXES)}* objects are "
            "accepted). Convert it to safetensors or a tensors-only state dict."
        ) from first_error
    log.info("%s: loading with inert placeholders for %s", path, unsafe)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    placeholders = [(inert_class(name), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(source, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise UnsafeCheckpointError(f"refusing to load {path}: {err}") from err


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
