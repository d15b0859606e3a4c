"""Compute precision of diffusion networks, including guided-diffusion's released mixed fp16.

``experiments.<name>.precision`` picks one of :data:`PRECISIONS`. ``released`` is the setting
the released code runs each backend in (:data:`RELEASED_PRECISION`): the GDM's ADM with
``--use_fp16 True`` (``mixed_fp16``), the LDM (``use_fp16=False``), DiffNB and the workflow's
own trained models in float32.

``mixed_fp16`` reproduces guided-diffusion's ``UNetModel.convert_to_fp16`` on a converted
diffusers ``UNet2DModel`` (:func:`apply_released_mixed_precision`). Upstream
``convert_module_to_f16`` casts only ``nn.Conv1d/2d/3d`` weights and biases of
``input_blocks`` (``conv_in`` and the down blocks), ``middle_block`` and ``output_blocks``;
its ``Linear`` layers (the ResBlocks' ``emb_layers``) stay float32 and their output is cast to
the block dtype (``emb_layers(emb).type(h.dtype)``); ``GroupNorm32`` computes in float32 and
returns its input's dtype; the time embedding and the final ``out`` (norm, SiLU, conv) stay
float32, entered after ``h.type(x.dtype)``. In diffusers, ADM's 1x1 attention convs (``qkv``,
``proj_out``) are ``Linear`` layers (``to_q/k/v``, ``to_out.0``): they are fp16 here as they
are upstream.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("diffguard")

PRECISIONS = ("released", "float32", "mixed_fp16", "float16", "bfloat16")
"""Values of ``experiments.<name>.precision`` (and of the top-level ``dtype`` fallback)."""

RELEASED_PRECISION: dict[str, str] = {
    "adm": "mixed_fp16",  # guided-diffusion --use_fp16 True (the GDM of exp6.1)
    "ldm": "float32",  # latent-diffusion cin256-v2: use_fp16=False
    "diffnb": "float32",
    "train": "float32",
}
"""The precision the released code runs each backend source in."""

FULL_CAST: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Precisions that cast the whole network to one dtype."""

HALF = torch.float16
BLOCKS = ("down_blocks", "mid_block", "up_blocks")
"""diffusers counterparts of ADM's ``input_blocks[1:]``, ``middle_block``, ``output_blocks``."""


class PrecisionError(ValueError):
    """An unknown precision, or one a backend cannot run in (the message names the key)."""


def released_precision(source: str) -> str:
    """The precision the released code runs a backend ``source`` in."""
    if source not in RELEASED_PRECISION:
        raise PrecisionError(
            f"no released precision for model source {source!r}; expected one of "
            f"{sorted(RELEASED_PRECISION)}"
        )
    return RELEASED_PRECISION[source]


def concrete_precision(precision: str, source: str, where: str = "precision") -> str:
    """``precision`` with ``released`` replaced by the backend's own; validated.

    ``where`` names the config key in errors (e.g. ``experiments.gdm_main.precision``).
    ``mixed_fp16`` is defined for the pixel-space ``UNet2DModel`` backends only.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"{where}: {precision!r} is not one of {list(PRECISIONS)}")
    name = released_precision(source) if precision == "released" else precision
    if name == "mixed_fp16" and source == "ldm":
        raise PrecisionError(
            f"{where}: mixed_fp16 reproduces guided-diffusion's use_fp16 on a UNet2DModel; the "
            f"{source} backend supports {sorted(FULL_CAST)}"
        )
    return name


def select_precision(experiment: str | None, fallback: str | None = None) -> str:
    """An experiment's ``precision``, else the top-level ``dtype`` fallback, else ``released``."""
    return experiment or fallback or "released"


CPU_NOTE = (
    "half precision on CPU: oneDNN runs fp16 convolutions at about float32 speed with AVX-512 "
    "but about 80x slower with AVX2 only (measured on a converted ADM stand-in), and results "
    "would depend on the CPU's ISA"
)


def resolve_precision(
    precision: str | torch.dtype,
    source: str,
    device: torch.device,
    force: bool = False,
    where: str = "precision",
) -> str:
    """The precision a model of ``source`` runs in on ``device`` (a :data:`PRECISIONS` name).

    ``released`` becomes the backend's own (:func:`concrete_precision`). On CPU anything but
    float32 runs float32 unless ``force``; a fallback from ``mixed_fp16`` (the released GDM
    setting) is a warning naming ``where`` (the experiment), since results then differ from a
    GPU run in precision.
    """
    if isinstance(precision, torch.dtype):
        names = {v: k for k, v in FULL_CAST.items()}
        if precision not in names:
            raise PrecisionError(f"{where}: dtype {precision} is not one of {sorted(FULL_CAST)}")
        precision = names[precision]
    name = concrete_precision(precision, source, where)
    if name != "float32" and device.type == "cpu" and not force:
        level = logging.WARNING if name == "mixed_fp16" else logging.INFO
        log.log(level, "%s: %s requested on CPU, running float32 (%s)", where, name, CPU_NOTE)
        return "float32"
    return name


class UpcastGroupNorm(nn.GroupNorm):
    """``GroupNorm`` computed in float32 that returns its input's dtype (``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class _MixedPrecisionUNet(nn.Module):
    """Marker mix-in: the UNet's interface dtype stays float32 in mixed precision.

    diffusers casts the sinusoidal timestep features and the class embedding to ``self.dtype``
    (the first parameter's dtype: ``conv_in``, fp16 here); upstream computes both in float32.
    """

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32


_MIXED_CLASSES: dict[type, type] = {}


def _mixed_class(cls: type) -> type:
    if cls not in _MIXED_CLASSES:
        _MIXED_CLASSES[cls] = type(f"MixedPrecision{cls.__name__}", (_MixedPrecisionUNet, cls), {})
    return _MIXED_CLASSES[cls]


def _cast_input(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].to(dtype), *args[1:])

    return hook


def _cast_output(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    return hook


def is_mixed_precision(unet: nn.Module) -> bool:
    """Whether :func:`apply_released_mixed_precision` was applied to ``unet``."""
    return isinstance(unet, _MixedPrecisionUNet)


def apply_released_mixed_precision(unet: nn.Module) -> nn.Module:
    """Put a float32 diffusers ``UNet2DModel`` in guided-diffusion's ``use_fp16`` precision.

    In place (returns ``unet``): fp16 weights for ``conv_in`` and every ``Conv2d``/``Linear`` in
    the down/mid/up blocks except the resnets' ``time_emb_proj`` (upstream ``emb_layers``, a
    float32 ``Linear`` whose output is cast to fp16); every ``GroupNorm`` in those blocks
    computes in float32 (:class:`UpcastGroupNorm`); the input is cast to fp16 entering
    ``conv_in`` and back to float32 entering ``conv_norm_out``; the time embedding and
    ``conv_norm_out``/``conv_act``/``conv_out`` stay float32. Idempotent.
    """
    if is_mixed_precision(unet):
        return unet
    missing = [n for n in ("conv_in", "conv_norm_out", *BLOCKS) if not hasattr(unet, n)]
    if missing or any(p.dtype != torch.float32 for p in unet.parameters()):
        raise PrecisionError(
            f"mixed_fp16 needs a float32 UNet2DModel-like network; {type(unet).__name__} "
            f"lacks {missing}"
            if missing
            else "mixed_fp16 needs a float32 network to start from"
        )
    unet.conv_in.to(HALF)
    unet.conv_in.register_forward_pre_hook(_cast_input(HALF))
    for block_name in BLOCKS:
        block = getattr(unet, block_name)
        if block is None:
            continue
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] == "time_emb_proj":
                module.register_forward_hook(_cast_output(HALF))
            elif isinstance(module, nn.Conv2d | nn.Linear):
                module.to(HALF)
            elif type(module) is nn.GroupNorm:
                module.__class__ = UpcastGroupNorm
    unet.conv_norm_out.register_forward_pre_hook(_cast_input(torch.float32))
    unet.__class__ = _mixed_class(type(unet))
    log.info("UNet in released mixed precision: fp16 blocks, float32 norms/embedding/output")
    return unet
