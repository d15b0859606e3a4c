"""Convert OpenAI guided-diffusion (ADM) UNet checkpoints to :class:`diffusers.UNet2DModel`.

The target is the unconditional ImageNet model ``256x256_diffusion_uncond.pt`` (GDM in the
paper), but any ADM ``UNetModel`` that :class:`~diffusers.UNet2DModel` can express converts:

* ResBlocks (optionally with scale-shift norm and resblock up/downsampling) become
  ``ResnetBlock2D``; plain up/downsamplers become ``Upsample2D``/``Downsample2D``.
* ``AttentionBlock`` becomes a diffusers ``Attention`` (group norm, ``to_q``/``to_k``/``to_v``,
  ``to_out.0``). The fused ``qkv`` 1x1 conv is split per head: the legacy order (the one the
  released checkpoints use) interleaves ``[q, k, v]`` inside each head, the new order stacks
  ``q``, ``k`` and ``v`` of all heads.
* The timestep embedding puts cos first (``flip_sin_to_cos=True``, ``freq_shift=0``); the UNet
  is called with the original timestep values (0..999).

Two config styles are accepted, as in guided-diffusion itself:

* ``create_model`` style (``num_channels``, ``learn_sigma``, ``class_cond``; the header of the
  real checkpoint's manifest): ``attention_resolutions`` are feature-map resolutions
  (``"32,16,8"``), converted to downsample factors with ``image_size // res``.
* ``UNetModel`` style (``model_channels``, ``in_channels``, ``out_channels``, ``num_classes``;
  the tiny fixture): ``attention_resolutions`` are already downsample factors.

The optional config field ``attention_resolutions_kind`` (``"resolutions"`` or ``"factors"``)
overrides that default explicitly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from diffguard.checkpoints import load_checkpoint, state_dict_of

log = logging.getLogger(__name__)

__all__ = [
    "adm_unet_kwargs",
    "build_adm_unet",
    "convert_adm_state_dict",
    "load_adm_unet",
]

# guided-diffusion's ``create_model`` defaults for ``channel_mult=""``.
_DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

# Keys that configure training or sampling, not the network: accepted and ignored.
_NON_ARCH_KEYS = frozenset(
    {
        "use_checkpoint",
        "use_fp16",
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "sigma_small",
        "attention_resolutions_kind",
    }
)
_ARCH_KEYS = frozenset(
    {
        "image_size",
        "in_channels",
        "model_channels",
        "num_channels",
        "out_channels",
        "learn_sigma",
        "num_res_blocks",
        "attention_resolutions",
        "dropout",
        "channel_mult",
        "num_classes",
        "class_cond",
        "conv_resample",
        "dims",
        "num_heads",
        "num_head_channels",
        "num_heads_upsample",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_new_attention_order",
    }
)

AttentionKind = Literal["resolutions", "factors"]


@dataclass(frozen=True)
class _AdmSpec:
    """An ADM ``UNetModel`` architecture, normalised from either config style."""

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_ds: frozenset[int]
    dropout: float
    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    conv_resample: bool
    use_new_attention_order: bool

    def level_channels(self, level: int) -> int:
        return self.channel_mult[level] * self.model_channels

    def has_attention(self, level: int) -> bool:
        # ADM tests ``ds in attention_resolutions`` with ds = 2**level.
        return 2**level in self.attention_ds

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Number of heads of an ADM ``AttentionBlock`` with ``channels`` channels."""
        if self.num_head_channels == -1:
            return self.num_heads_upsample if upsample else self.num_heads
        return channels // self.num_head_channels


def _parse_int_seq(value: Any, key: str) -> tuple[float, ...]:
    """Parse a tuple/list or a comma-separated string of numbers."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(float(p) for p in parts)
        except ValueError as err:
            raise ValueError(
                f"ADM config '{key}': expected comma-separated numbers, got {value!r}"
            ) from err
    if isinstance(value, int | float):
        return (float(value),)
    if isinstance(value, Iterable):
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ADM config '{key}': expected numbers, got {value!r}") from err
    raise ValueError(f"ADM config '{key}': expected a sequence or a string, got {value!r}")


def _as_int(value: float, key: str) -> int:
    if float(value) != int(value):
        raise ValueError(f"ADM config '{key}': expected integers, got {value!r}")
    return int(value)


def _io_channels(config: Mapping[str, Any], unet_style: bool) -> tuple[int, int, int]:
    """``(model_channels, in_channels, out_channels)`` of either config style."""
    if unet_style:
        model_channels = int(config["model_channels"])
        in_channels = int(config.get("in_channels", 3))
        if "out_channels" not in config:
            raise KeyError("ADM config (UNetModel style): missing required key 'out_channels'")
        out_channels = int(config["out_channels"])
        if config.get("num_classes") is not None:
            raise NotImplementedError(
                f"ADM config: num_classes={config['num_classes']!r}; class-conditional ADM "
                "models are not supported (UNet2DModel has no matching label embedding path)"
            )
    else:
        model_channels = int(config["num_channels"])
        in_channels = int(config.get("in_channels", 3))
        out_channels = 2 * in_channels if config.get("learn_sigma", False) else in_channels
        if config.get("class_cond", False):
            raise NotImplementedError(
                "ADM config: class_cond=True; class-conditional ADM models are not supported"
            )
    return model_channels, in_channels, out_channels


def _channel_mult(config: Mapping[str, Any], image_size: int) -> tuple[int, ...]:
    """``channel_mult`` as integers (ADM's default for the image size when empty)."""
    raw_mult = config.get("channel_mult", "")
    if raw_mult is None or (isinstance(raw_mult, str | list | tuple) and len(raw_mult) == 0):
        if image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"ADM config: channel_mult is empty and image_size={image_size} has no "
                f"default (known: {sorted(_DEFAULT_CHANNEL_MULT)})"
            )
        mult_f = _DEFAULT_CHANNEL_MULT[image_size]
    else:
        mult_f = _parse_int_seq(raw_mult, "channel_mult")
    if not mult_f:
        raise ValueError("ADM config: channel_mult is empty")
    if mult_f[0] != 1:
        # ADM sizes the timestep embedding by model_channels but the first feature map by
        # channel_mult[0] * model_channels; UNet2DModel ties both to block_out_channels[0].
        raise NotImplementedError(
            f"ADM config: channel_mult={mult_f} starts with {mult_f[0]}, not 1; "
            "UNet2DModel cannot express that (e.g. the 512x512 model)"
        )
    return tuple(_as_int(m, "channel_mult") for m in mult_f)


def _attention_ds(
    config: Mapping[str, Any], unet_style: bool, image_size: int, channel_mult: tuple[int, ...]
) -> frozenset[int]:
    """Downsample factors with attention (resolutions converted; unreachable ones warned)."""
    kind = config.get("attention_resolutions_kind")
    if kind is None:
        kind = "factors" if unet_style else "resolutions"
    if kind not in ("resolutions", "factors"):
        raise ValueError(
            "ADM config 'attention_resolutions_kind': expected 'resolutions' or 'factors', "
            f"got {kind!r}"
        )
    attn_values = tuple(
        _as_int(v, "attention_resolutions")
        for v in _parse_int_seq(config["attention_resolutions"], "attention_resolutions")
    )
    if kind == "resolutions":
        for res in attn_values:
            if res <= 0 or image_size % res:
                raise ValueError(
                    f"ADM config: attention resolution {res} does not divide "
                    f"image_size={image_size}"
                )
        attention_ds = frozenset(image_size // res for res in attn_values)
    else:
        attention_ds = frozenset(attn_values)
    reachable = {2**level for level in range(len(channel_mult))}
    unused = sorted(attention_ds - reachable)
    if unused:
        # ADM silently ignores factors no level reaches; say so, since it is usually a slip.
        log.warning(
            "ADM config: attention downsample factors %s match no level (levels have %s); "
            "they add no attention, as in guided-diffusion",
            unused,
            sorted(reachable),
        )
    return attention_ds


def _spec(config: Mapping[str, Any]) -> _AdmSpec:
    """Validate an ADM config (either style) and normalise it."""
    if not isinstance(config, Mapping):
        raise TypeError(f"ADM config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - _ARCH_KEYS - _NON_ARCH_KEYS)
    if unknown:
        log.warning("ADM config: ignoring unknown keys %s", unknown)

    has_model = "model_channels" in config
    has_num = "num_channels" in config
    if has_model == has_num:
        raise ValueError(
            "ADM config needs exactly one of 'model_channels' (UNetModel style) and "
            f"'num_channels' (create_model style); got keys {sorted(config)}"
        )
    unet_style = has_model
    for key in ("image_size", "num_res_blocks", "attention_resolutions"):
        if key not in config:
            raise KeyError(f"ADM config: missing required key '{key}'")

    image_size = int(config["image_size"])
    model_channels, in_channels, out_channels = _io_channels(config, unet_style)
    if int(config.get("dims", 2)) != 2:
        raise NotImplementedError(f"ADM config: dims={config['dims']!r}; only 2D is supported")

    channel_mult = _channel_mult(config, image_size)
    attention_ds = _attention_ds(config, unet_style, image_size, channel_mult)

    num_heads = int(config.get("num_heads", 1))
    num_head_channels = int(config.get("num_head_channels", -1))
    num_heads_upsample = int(config.get("num_heads_upsample", -1))
    if num_heads_upsample == -1:
        num_heads_upsample = num_heads
    conv_resample = bool(config.get("conv_resample", True))
    resblock_updown = bool(config.get("resblock_updown", False))
    if not conv_resample and not resblock_updown:
        raise NotImplementedError(
            "ADM config: conv_resample=False with resblock_updown=False (parameter-free "
            "resampling) is not supported by UNet2DModel's blocks"
        )
    return _AdmSpec(
        image_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        num_res_blocks=int(config["num_res_blocks"]),
        channel_mult=channel_mult,
        attention_ds=attention_ds,
        dropout=float(config.get("dropout", 0.0)),
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=bool(config.get("use_scale_shift_norm", False)),
        resblock_updown=resblock_updown,
        conv_resample=conv_resample,
        use_new_attention_order=bool(config.get("use_new_attention_order", False)),
    )


def _attention_head_dim(spec: _AdmSpec) -> int:
    """The single per-head width UNet2DModel uses; every ADM attention block must agree."""
    widths: dict[int, str] = {}
    levels = range(len(spec.channel_mult))
    blocks: list[tuple[str, int, bool]] = [
        (f"down level {lv}", spec.level_channels(lv), False)
        for lv in levels
        if spec.has_attention(lv)
    ]
    blocks.append(("middle", spec.level_channels(len(spec.channel_mult) - 1), False))
    blocks += [
        (f"up level {lv}", spec.level_channels(lv), True) for lv in levels if spec.has_attention(lv)
    ]
    for where, channels, upsample in blocks:
        heads = spec.heads(channels, upsample)
        if heads <= 0 or channels % heads:
            raise ValueError(
                f"ADM config: attention at {where} has {channels} channels, not divisible "
                f"into {heads} heads"
            )
        widths.setdefault(channels // heads, where)
    if len(widths) != 1:
        raise NotImplementedError(
            "ADM config: attention head widths differ between blocks "
            f"(width: first block {widths}); UNet2DModel needs one width "
            "(use num_head_channels instead of num_heads)"
        )
    return next(iter(widths))


def adm_unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DModel constructor kwargs equivalent to an ADM ``UNetModel`` config.

    Args:
        config: guided-diffusion config in ``create_model`` style (``num_channels``,
            ``learn_sigma``, ``class_cond``; ``attention_resolutions`` as resolutions) or
            ``UNetModel`` style (``model_channels``, ``out_channels``, ``num_classes``;
            ``attention_resolutions`` as downsample factors). ``channel_mult`` may be ``""``
            (the default for ``image_size``), a tuple/list, or a comma string. An optional
            ``attention_resolutions_kind`` ("resolutions"/"factors") overrides the style default.

    Returns:
        Keyword arguments for :class:`diffusers.UNet2DModel`.

    Raises:
        NotImplementedError: Class-conditional models and other features UNet2DModel lacks.
        ValueError / KeyError: Malformed or missing config values (the key is named).
    """
    spec = _spec(config)
    levels = range(len(spec.channel_mult))
    plain_down = "ResnetDownsampleBlock2D" if spec.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if spec.resblock_updown else "UpBlock2D"
    down_types = tuple("AttnDownBlock2D" if spec.has_attention(lv) else plain_down for lv in levels)
    up_types = tuple(
        "AttnUpBlock2D" if spec.has_attention(lv) else plain_up for lv in reversed(levels)
    )
    sampler = "resnet" if spec.resblock_updown else "conv"
    return {
        "sample_size": spec.image_size,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": 4 * spec.model_channels,
        # ADM's timestep embedding is [cos, sin] with frequencies exp(-ln(1e4) * i / half).
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": down_types,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up_types,
        "block_out_channels": tuple(spec.level_channels(lv) for lv in levels),
        "layers_per_block": spec.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": sampler,
        "upsample_type": sampler,
        "dropout": spec.dropout,
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(spec),
        "norm_num_groups": 32,
        # Without this, UNetMidBlock2D drops the attention group norm under scale_shift.
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if spec.use_scale_shift_norm else "default",
        "add_attention": True,
    }


def build_adm_unet(config: Mapping[str, Any]) -> UNet2DModel:
    """Build an (untrained) UNet2DModel with the architecture of an ADM config."""
    return UNet2DModel(**adm_unet_kwargs(config))


# ---------------------------------------------------------------------------------------------
# State-dict conversion
# ---------------------------------------------------------------------------------------------

_Transform = Literal["copy", "conv1d_to_linear", "qkv_weight", "qkv_bias"]


@dataclass(frozen=True)
class _Rule:
    """One source tensor and the target tensor(s) it becomes."""

    src: str
    dst: tuple[str, ...]
    transform: _Transform = "copy"
    heads: int = 0


def _resblock_rules(src: str, dst: str, has_skip: bool) -> list[_Rule]:
    pairs = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
    ]
    if has_skip:
        pairs.append(("skip_connection", "conv_shortcut"))
    return [
        _Rule(f"{src}.{s}.{p}", (f"{dst}.{d}.{p}",)) for s, d in pairs for p in ("weight", "bias")
    ]


def _attention_rules(src: str, dst: str, heads: int) -> list[_Rule]:
    qkv_dst = tuple(f"{dst}.to_{n}" for n in ("q", "k", "v"))
    return [
        _Rule(f"{src}.norm.weight", (f"{dst}.group_norm.weight",)),
        _Rule(f"{src}.norm.bias", (f"{dst}.group_norm.bias",)),
        _Rule(f"{src}.qkv.weight", tuple(f"{d}.weight" for d in qkv_dst), "qkv_weight", heads),
        _Rule(f"{src}.qkv.bias", tuple(f"{d}.bias" for d in qkv_dst), "qkv_bias", heads),
        _Rule(f"{src}.proj_out.weight", (f"{dst}.to_out.0.weight",), "conv1d_to_linear"),
        _Rule(f"{src}.proj_out.bias", (f"{dst}.to_out.0.bias",)),
    ]


def _param_rules(src: str, dst: str) -> list[_Rule]:
    return [_Rule(f"{src}.{p}", (f"{dst}.{p}",)) for p in ("weight", "bias")]


def _plan(spec: _AdmSpec) -> list[_Rule]:
    """All source → target rules, following ADM's construction order and channel widths."""
    rules = _param_rules("time_embed.0", "time_embedding.linear_1")
    rules += _param_rules("time_embed.2", "time_embedding.linear_2")
    rules += _param_rules("input_blocks.0.0", "conv_in")

    n_levels = len(spec.channel_mult)
    ch = spec.level_channels(0)
    skip_channels = [ch]
    block = 1
    for level in range(n_levels):
        out_ch = spec.level_channels(level)
        dst = f"down_blocks.{level}"
        for i in range(spec.num_res_blocks):
            src = f"input_blocks.{block}"
            rules += _resblock_rules(f"{src}.0", f"{dst}.resnets.{i}", ch != out_ch)
            ch = out_ch
            if spec.has_attention(level):
                rules += _attention_rules(f"{src}.1", f"{dst}.attentions.{i}", spec.heads(ch))
            skip_channels.append(ch)
            block += 1
        if level != n_levels - 1:
            src = f"input_blocks.{block}.0"
            if spec.resblock_updown:
                rules += _resblock_rules(src, f"{dst}.downsamplers.0", False)
            else:
                rules += _param_rules(f"{src}.op", f"{dst}.downsamplers.0.conv")
            skip_channels.append(ch)
            block += 1

    rules += _resblock_rules("middle_block.0", "mid_block.resnets.0", False)
    rules += _attention_rules("middle_block.1", "mid_block.attentions.0", spec.heads(ch))
    rules += _resblock_rules("middle_block.2", "mid_block.resnets.1", False)

    block = 0
    for up_index, level in enumerate(reversed(range(n_levels))):
        out_ch = spec.level_channels(level)
        dst = f"up_blocks.{up_index}"
        for i in range(spec.num_res_blocks + 1):
            src = f"output_blocks.{block}"
            in_ch = ch + skip_channels.pop()
            rules += _resblock_rules(f"{src}.0", f"{dst}.resnets.{i}", in_ch != out_ch)
            ch = out_ch
            sub = 1
            if spec.has_attention(level):
                rules += _attention_rules(
                    f"{src}.1", f"{dst}.attentions.{i}", spec.heads(ch, upsample=True)
                )
                sub = 2
            if level and i == spec.num_res_blocks:
                if spec.resblock_updown:
                    rules += _resblock_rules(f"{src}.{sub}", f"{dst}.upsamplers.0", False)
                else:
                    rules += _param_rules(f"{src}.{sub}.conv", f"{dst}.upsamplers.0.conv")
            block += 1

    rules += _param_rules("out.0", "conv_norm_out")
    rules += _param_rules("out.2", "conv_out")
    return rules


def _split_qkv(tensor: torch.Tensor, heads: int, new_order: bool, key: str) -> list[torch.Tensor]:
    """Split a fused ADM qkv (conv1d weight ``(3C, C_in, 1)`` or bias ``(3C,)``) into q, k, v.

    Legacy order: channels are ``[head][q|k|v][width]``; new order: ``[q|k|v][head][width]``.
    Target ``to_q``/``to_k``/``to_v`` rows are ``[head][width]`` in both cases.
    """
    is_weight = tensor.dim() == 3
    if is_weight:
        if tensor.shape[-1] != 1:
            raise ValueError(
                f"{key}: expected a 1x1 conv1d weight, got shape {tuple(tensor.shape)}"
            )
        tensor = tensor[..., 0]
    elif tensor.dim() != 1:
        raise ValueError(f"{key}: expected 1 or 3 dims, got shape {tuple(tensor.shape)}")
    total = tensor.shape[0]
    if heads <= 0 or total % (3 * heads):
        raise ValueError(f"{key}: {total} output channels do not split into 3 x {heads} heads")
    width = total // (3 * heads)
    rest = tuple(tensor.shape[1:])
    if new_order:
        grouped = tensor.reshape(3, heads, width, *rest)
        parts = [grouped[j] for j in range(3)]
    else:
        grouped = tensor.reshape(heads, 3, width, *rest)
        parts = [grouped[:, j] for j in range(3)]
    return [p.reshape(heads * width, *rest) for p in parts]


def _meta_model(config: Mapping[str, Any]) -> UNet2DModel:
    """The target model without allocating weights (for its names and shapes)."""
    with torch.device("meta"):
        return build_adm_unet(config)


def convert_adm_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Map an ADM ``UNetModel`` state dict onto :class:`UNet2DModel` names and shapes.

    Args:
        state_dict: The guided-diffusion state dict (tensors are not modified in place).
        config: The ADM config (see :func:`adm_unet_kwargs`).

    Returns:
        A state dict with exactly the keys and shapes of ``build_adm_unet(config)``.

    Raises:
        KeyError: Source tensors the config requires are missing (missing and unconsumed
            keys are both named).
        ValueError: Source tensors are left unconsumed, or a shape does not match the target
            (keys and shapes named).
    """
    spec = _spec(config)
    rules = _plan(spec)
    out = apply_rules(state_dict, rules, spec, "ADM")

    target = _meta_model(config).state_dict()
    check_shapes(out, target, rules, "ADM")
    return out


def apply_rules(
    state_dict: Mapping[str, torch.Tensor], rules: list[_Rule], spec: _AdmSpec, what: str
) -> dict[str, torch.Tensor]:
    """Apply conversion rules; every rule's source must exist and every tensor be consumed.

    Raises:
        KeyError: Required tensors are missing (missing and unconsumed keys both named).
        ValueError: Tensors are left unconsumed, or a tensor has the wrong layout.
    """
    missing = [r.src for r in rules if r.src not in state_dict]
    consumed = {r.src for r in rules}
    leftover = sorted(set(state_dict) - consumed)
    if missing or leftover:
        # Report both lists together: a renamed tensor shows up once in each.
        message = (
            f"{what} state dict does not match the config: {len(missing)} required tensor(s) "
            f"missing {missing}; {len(leftover)} tensor(s) unconsumed {leftover}"
        )
        raise KeyError(message) if missing else ValueError(message)

    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        tensor = state_dict[rule.src]
        if rule.transform == "copy":
            values = [tensor]
        elif rule.transform == "conv1d_to_linear":
            if tensor.dim() != 3 or tensor.shape[-1] != 1:
                raise ValueError(
                    f"{rule.src}: expected a 1x1 conv1d weight, got shape {tuple(tensor.shape)}"
                )
            values = [tensor[..., 0]]
        else:
            values = _split_qkv(tensor, rule.heads, spec.use_new_attention_order, rule.src)
        for dst, value in zip(rule.dst, values, strict=True):
            out[dst] = value
    return out


def check_shapes(
    out: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    rules: list[_Rule],
    what: str,
) -> None:
    """Raise a ValueError naming missing/unexpected converted keys, then every shape mismatch."""
    if set(out) != set(target):
        raise ValueError(
            f"{what} conversion produced keys that differ from the target model's: missing "
            f"{sorted(set(target) - set(out))}, unexpected {sorted(set(out) - set(target))}"
        )
    source_of = {dst: r.src for r in rules for dst in r.dst}
    bad = [
        f"{source_of[k]} -> {k}: {tuple(v.shape)} != {tuple(target[k].shape)}"
        for k, v in out.items()
        if v.shape != target[k].shape
    ]
    if bad:
        raise ValueError(f"{what} state dict shapes do not match the config: {bad}")


def load_adm_unet(
    path: str | Path,
    config: Mapping[str, Any],
    dtype: torch.dtype = torch.float32,
) -> UNet2DModel:
    """Load a guided-diffusion checkpoint as an eval-mode :class:`UNet2DModel` (on CPU).

    The model is built on the meta device and the converted tensors are assigned, so the
    552M-parameter ImageNet model is held in memory once.

    Args:
        path: The ``.pt`` checkpoint (loaded with ``weights_only=True``).
        config: The ADM config (see :func:`adm_unet_kwargs`).
        dtype: Floating-point dtype of the returned weights.
    """
    state_dict = state_dict_of(load_checkpoint(path), path)
    try:
        converted = convert_adm_state_dict(state_dict, config)
    except (KeyError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from err
    # Contiguous copies: the q/k/v splits are strided views of the fused tensor.
    converted = {k: v.to(dtype=dtype).contiguous() for k, v in converted.items()}
    model = _meta_model(config)
    model.load_state_dict(converted, strict=True, assign=True)
    leftover_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover_meta:
        raise RuntimeError(f"{path}: tensors left unfilled after loading: {leftover_meta}")
    log.info("loaded ADM UNet from %s (%d tensors)", path, len(converted))
    return model.eval()


class AdmLegacyAttnProcessor:
    """diffusers attention processor with guided-diffusion's own attention arithmetic.

    Same function as diffusers' default processor, but the float operations follow the released
    ``AttentionBlock`` + ``QKVAttentionLegacy``: one fused 1x1 ``conv1d`` for q, k, v in the
    legacy per-head layout, ``1/sqrt(sqrt(ch))`` applied to q and k separately, einsum products
    and a float32 softmax. On random tiny models DDIM trajectories amplify float rounding about
    100-fold, so matching the released numbers to 1e-4 needs the same arithmetic, not just the
    same maths. Select it with :func:`use_released_attention`.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("AdmLegacyAttnProcessor supports plain self-attention only")
        b, c, *spatial = hidden_states.shape
        x = hidden_states.reshape(b, c, -1)
        heads = attn.heads
        ch = c // heads
        weight = torch.stack(
            [
                attn.to_q.weight.view(heads, ch, c),
                attn.to_k.weight.view(heads, ch, c),
                attn.to_v.weight.view(heads, ch, c),
            ],
            dim=1,
        ).reshape(3 * c, c, 1)
        bias = torch.stack(
            [
                attn.to_q.bias.view(heads, ch),
                attn.to_k.bias.view(heads, ch),
                attn.to_v.bias.view(heads, ch),
            ],
            dim=1,
        ).reshape(3 * c)
        qkv = F.conv1d(attn.group_norm(x), weight, bias)
        q, k, v = qkv.reshape(b * heads, ch * 3, -1).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weights = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weights = torch.softmax(weights.float(), dim=-1).type(weights.dtype)
        a = torch.einsum("bts,bcs->bct", weights, v).reshape(b, -1, x.shape[-1])
        proj = attn.to_out[0]
        h = F.conv1d(a, proj.weight[:, :, None], proj.bias)
        return (x + h).reshape(b, c, *spatial)


def use_released_attention(unet: UNet2DModel) -> UNet2DModel:
    """Switch every attention layer of a converted ADM to :class:`AdmLegacyAttnProcessor`."""
    from diffusers.models.attention_processor import Attention

    processor = AdmLegacyAttnProcessor()
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)
    return unet
