"""Model I/O: save and load the weights and spec of the workflow's models, atomically.

- a classifier as ``model.safetensors`` + ``spec.json`` (the
  :func:`diffguard.classifiers.build_classifier` spec); written by training and by
  :func:`diffguard.preparation.prepare_classifier` for a downloaded checkpoint;
- a UNet with diffusers' ``save_pretrained`` (``config.json`` + safetensors), plus
  ``diffguard.json`` with the training schedule (betas, timesteps, null label).

A directory is written to a temporary sibling and then renamed into place; only safetensors are
read back (never a pickle).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from diffguard.classifiers import build_classifier

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
DIFFUSION_INFO_FILE = "diffguard.json"


def fresh_dir(target: Path) -> Path:
    """Return a fresh temporary sibling directory of ``target``."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` into place as ``target``, replacing an existing directory."""
    if target.exists():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented, key-sorted JSON with a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_model(model: nn.Module, directory: str | Path) -> None:
    """Save a classifier (with ``model.spec``) or a diffusers UNet to ``directory`` atomically.

    Raises:
        TypeError: The model is neither a diffusers model nor a classifier with a spec.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(directory)
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp, safe_serialization=True)
            info = getattr(model, "diffguard_info", None)
            if info is not None:
                write_json(tmp / DIFFUSION_INFO_FILE, info)
        elif isinstance(getattr(model, "spec", None), dict):
            spec = {k: v for k, v in model.spec.items() if k != "weights"}
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            write_json(tmp / SPEC_FILE, spec)
        else:
            raise TypeError(
                f"cannot save {type(model).__name__}: expected a diffusers model or a "
                "classifier from build_classifier (with a .spec)"
            )
        commit_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %s to %s", type(model).__name__, directory)


def load_classifier(directory: str | Path) -> nn.Module:
    """Load a classifier saved by :func:`save_model` (eval mode)."""
    directory = Path(directory)
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"classifier spec not found: {spec_path}")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    spec["weights"] = str(directory / WEIGHTS_FILE)
    return build_classifier(spec)


def load_unet2d(directory: str | Path) -> Any:
    """Load a diffusers ``UNet2DModel`` directory (eval mode, float32, CPU; safetensors only)."""
    from diffusers import UNet2DModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"UNet config not found: {directory / 'config.json'}")
    # low_cpu_mem_usage=False: the default wants `accelerate` and warns without it
    return UNet2DModel.from_pretrained(
        str(directory), use_safetensors=True, low_cpu_mem_usage=False
    ).eval()


def read_diffusion_info(directory: str | Path) -> dict[str, Any] | None:
    """The training schedule ``diffguard.json`` saved beside a trained UNet, if any."""
    path = Path(directory) / DIFFUSION_INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_small_unet(directory: str | Path) -> Any:
    """Load a ``UNet2DModel`` saved by :func:`save_model` (eval mode, float32, CPU).

    ``model.diffguard_info`` is restored from ``diffguard.json`` when present.
    """
    model = load_unet2d(directory)
    info = read_diffusion_info(directory)
    if info is not None:
        model.diffguard_info = info
    return model
