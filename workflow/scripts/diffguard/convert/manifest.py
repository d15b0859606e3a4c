"""Read the tensor manifests (``name<TAB>AxBxC``) that describe the real checkpoints.

A manifest starts with ``#`` header lines. Lines of the form ``# key: {json} k=v ...`` carry
architecture configs; they are returned as ``{key: parsed_json}``, with trailing ``k=v`` integer
pairs collected under ``"<key>_extra"``. Other header lines (free text, tensor counts) are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_manifest", "zeros_state_dict"]

# "# key: {...json...} rest" -- the key is a plain identifier, the JSON is an object.
_HEADER_RE = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(\{.*)$")


def _parse_header(line: str, path: Path, lineno: int) -> tuple[str, Any, dict[str, int]] | None:
    """Parse one ``# key: {json} k=v`` header line, or return None if it is not one."""
    match = _HEADER_RE.match(line)
    if match is None:
        return None
    key, rest = match.group(1), match.group(2)
    try:
        value, end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: header '{key}' holds invalid JSON: {err}") from err
    extra: dict[str, int] = {}
    for token in rest[end:].split():
        name, sep, raw = token.partition("=")
        if not sep or not name:
            raise ValueError(
                f"{path}:{lineno}: expected 'key=value' after the JSON of header '{key}', "
                f"got {token!r}"
            )
        try:
            extra[name] = int(raw)
        except ValueError as err:
            raise ValueError(
                f"{path}:{lineno}: expected an integer in '{token}' of header '{key}'"
            ) from err
    return key, value, extra


def _parse_shape(text: str, path: Path, lineno: int) -> tuple[int, ...]:
    """Parse ``AxBxC`` (an empty field means a scalar, shape ``()``)."""
    text = text.strip()
    if not text:
        return ()
    try:
        shape = tuple(int(part) for part in text.split("x"))
    except ValueError as err:
        raise ValueError(f"{path}:{lineno}: expected a shape like 'AxBxC', got {text!r}") from err
    if any(dim < 0 for dim in shape):
        raise ValueError(f"{path}:{lineno}: negative dimension in shape {text!r}")
    return shape


def read_manifest(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Read a checkpoint manifest.

    Args:
        path: The ``*_manifest.tsv`` file.

    Returns:
        ``(headers, shapes)``: ``headers`` maps each ``# key: {json}`` header line's key to its
        parsed JSON (e.g. ``"config"`` for ADM, ``"unet"`` and ``"first_stage"`` for LDM) plus
        ``"<key>_extra"`` for trailing ``k=v`` integers; ``shapes`` maps tensor names to shapes
        in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is malformed or a tensor name repeats (message names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    headers: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for lineno, raw_line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parsed = _parse_header(line, path, lineno)
            if parsed is not None:
                key, value, extra = parsed
                headers[key] = value
                if extra:
                    headers[f"{key}_extra"] = extra
            continue
        name, sep, shape_text = raw_line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'name<TAB>AxBxC', got {raw_line!r}")
        name = name.strip()
        if name in shapes:
            raise ValueError(f"{path}:{lineno}: tensor {name!r} listed twice")
        shapes[name] = _parse_shape(shape_text, path, lineno)
    if not shapes:
        raise ValueError(f"{path}: no tensor lines found")
    return headers, shapes


def zeros_state_dict(
    shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Build a state dict of zeros with the given names and shapes, cheaply.

    Each tensor is an expanded view of one shared zero scalar, so a 500M-parameter manifest
    costs no memory. Converters must therefore not write into their inputs in place.
    """
    zero = torch.zeros((), dtype=dtype)
    return {name: zero.expand(shape) for name, shape in shapes.items()}
