"""Convert the CompVis latent-diffusion ``cin256-v2`` checkpoint to diffusers modules.

The source checkpoint is a ``LatentDiffusion`` state dict with three trainable parts:

* ``model.diffusion_model.*``: an ``openaimodel.UNetModel`` with ``SpatialTransformer`` blocks
  (class conditioning by cross-attention on a single context token),
* ``first_stage_model.*``: a taming-style VQ autoencoder (``VQModelInterface``),
* ``cond_stage_model.embedding.weight``: the ``ClassEmbedder`` table (the last row is the null
  class used for classifier-free guidance).

They map onto diffusers :class:`~diffusers.UNet2DConditionModel`, :class:`~diffusers.VQModel`
and a :class:`torch.nn.Embedding`. The mapping is driven by the target models: every target
tensor is named back to its source tensor, so a missing source tensor is reported under its
checkpoint name, and every source tensor that no target asks for (apart from the diffusion
schedule buffers, ignored by name) is reported as a leftover.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel, VQModel
from torch import nn

from diffguard.checkpoints import load_checkpoint, state_dict_of
from diffguard.convert import mismatch_problems

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VQ_PREFIX = "first_stage_model."
CLASS_EMBEDDING_KEY = "cond_stage_model.embedding.weight"

# Non-trainable tensors that LatentDiffusion keeps in its state dict: the DDPM schedule (the
# method recomputes its own), the latent scale (read separately) and EMA bookkeeping (the
# inference config of cin256-v2 does not use EMA weights).
_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "lvlb_weights",
    "logvar",
    "scale_factor",
    "cond_ids",
)
IGNORED_KEY_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile("(" + "|".join(_SCHEDULE_BUFFERS) + ")"),
    re.compile(r"model_ema\..+"),
)

# openaimodel config keys that do not change the inference graph.
_UNET_HARMLESS_KEYS = {"use_checkpoint", "use_fp16", "legacy", "dims", "dropout", "image_size"}
_UNET_KNOWN_KEYS = _UNET_HARMLESS_KEYS | {
    "in_channels",
    "out_channels",
    "model_channels",
    "attention_resolutions",
    "num_res_blocks",
    "channel_mult",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_spatial_transformer",
    "transformer_depth",
    "context_dim",
    "use_scale_shift_norm",
    "resblock_updown",
    "conv_resample",
    "num_classes",
    "n_embed",
    "use_new_attention_order",
    "use_linear_in_transformer",
}

# ResBlock sub-module names: diffusers ResnetBlock2D -> openaimodel ResBlock.
_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# ResnetBlock sub-module names: diffusers ResnetBlock2D -> taming ResnetBlock.
_VQ_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# Mid-block attention: diffusers Attention (linear q/k/v/out) -> taming AttnBlock (1x1 convs).
_VQ_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


class LdmConversionError(ValueError):
    """The checkpoint does not match the architecture described by the configs."""


@dataclass
class LdmStateDicts:
    """Converted state dicts, named as the diffusers modules expect them."""

    unet: dict[str, torch.Tensor]
    vq: dict[str, torch.Tensor]
    class_embedding: dict[str, torch.Tensor]
    unet_kwargs: dict[str, Any]
    vq_kwargs: dict[str, Any]
    scale_factor: float = 1.0
    ignored: tuple[str, ...] = ()


@dataclass
class LdmParts:
    """The three modules of the class-conditional LDM, built and in eval mode."""

    unet: UNet2DConditionModel
    vq: VQModel
    class_embedding: nn.Embedding
    # LatentDiffusion multiplies encodings by it and divides latents by it before decoding.
    scale_factor: float = 1.0
    ignored: tuple[str, ...] = ()

    @property
    def null_class(self) -> int:
        """Index of the unconditional ("null") class: the last row of the embedding table."""
        return self.class_embedding.num_embeddings - 1

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> LdmParts:
        """Move (and optionally cast) all three modules in place; returns ``self``."""
        # Pass dtype only when casting: diffusers warns on every .to(dtype=...) of its models.
        cast = {} if dtype is None else {"dtype": dtype}
        for module in (self.unet, self.vq, self.class_embedding):
            module.to(device=device, **cast)
        return self


# --------------------------------------------------------------------------- configs


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_unet_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`LdmConversionError` for a config the diffusers model cannot reproduce."""
    unknown = sorted(set(cfg) - _UNET_KNOWN_KEYS)
    if unknown:
        raise LdmConversionError(f"unet_config: unsupported keys {unknown}")
    required = ("in_channels", "out_channels", "model_channels", "attention_resolutions")
    required += ("num_res_blocks", "channel_mult", "context_dim")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise LdmConversionError(f"unet_config: missing keys {missing}")
    if not cfg.get("use_spatial_transformer", False):
        raise LdmConversionError(
            "unet_config: use_spatial_transformer must be true (class cross-attention model)"
        )
    if cfg.get("resblock_updown", False):
        raise LdmConversionError("unet_config: resblock_updown=True is not supported")
    if not cfg.get("conv_resample", True):
        raise LdmConversionError("unet_config: conv_resample=False is not supported")
    if cfg.get("num_classes") is not None or cfg.get("n_embed") is not None:
        raise LdmConversionError("unet_config: num_classes / n_embed must be unset")
    if cfg.get("dims", 2) != 2:
        raise LdmConversionError(f"unet_config: dims must be 2, got {cfg['dims']}")
    heads_up = cfg.get("num_heads_upsample", -1)
    if heads_up not in (-1, cfg.get("num_heads", -1)):
        raise LdmConversionError("unet_config: num_heads_upsample != num_heads is not supported")


def _attention_heads(cfg: Mapping[str, Any], channels: list[int]) -> list[int]:
    """Heads per level: ``num_heads`` everywhere, or each level's width / ``num_head_channels``."""
    num_head_channels = int(cfg.get("num_head_channels", -1))
    num_heads = int(cfg.get("num_heads", -1))
    if num_head_channels == -1:
        if num_heads < 1:
            raise LdmConversionError("unet_config: need num_heads or num_head_channels")
        return [num_heads] * len(channels)
    bad = [c for c in channels if c % num_head_channels]
    if bad:
        raise LdmConversionError(f"unet_config: channels {bad} not divisible by num_head_channels")
    return [c // num_head_channels for c in channels]


def ldm_unet_kwargs(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of ``UNet2DConditionModel`` equivalent to an openaimodel ``UNetModel`` config.

    Args:
        unet_config: the ``unet_config.params`` of the LDM yaml (``attention_resolutions`` are
            downsample factors, as in openaimodel).

    Raises:
        LdmConversionError: for options the diffusers model cannot reproduce.
    """
    cfg = dict(unet_config)
    _check_unet_config(cfg)
    model_channels = int(cfg["model_channels"])
    mult = [int(m) for m in cfg["channel_mult"]]
    if mult[0] != 1:
        # openaimodel's input conv emits model_channels; diffusers' emits block_out_channels[0].
        raise LdmConversionError(f"unet_config: channel_mult must start with 1, got {mult}")
    channels = [model_channels * m for m in mult]
    attn_factors = {int(a) for a in cfg["attention_resolutions"]}
    has_attn = [2**level in attn_factors for level in range(len(mult))]

    heads = _attention_heads(cfg, channels)
    depth = [int(d) for d in _as_list(cfg.get("transformer_depth", 1))]
    if len(depth) == 1:
        depth = depth * len(mult)
    if len(depth) != len(mult):
        raise LdmConversionError("unet_config: transformer_depth list must match channel_mult")
    context_dim = cfg["context_dim"]
    if isinstance(context_dim, list | tuple):
        if len(set(context_dim)) != 1:
            raise LdmConversionError("unet_config: per-level context_dim is not supported")
        context_dim = context_dim[0]

    return {
        "sample_size": cfg.get("image_size"),
        "in_channels": int(cfg["in_channels"]),
        "out_channels": int(cfg["out_channels"]),
        # openaimodel's timestep_embedding is [cos, sin] with frequencies exp(-ln(1e4) i / half).
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)
        ),
        "block_out_channels": tuple(channels),
        "layers_per_block": int(cfg["num_res_blocks"]),
        # openaimodel Downsample: 3x3 conv, stride 2, symmetric padding 1.
        "downsample_padding": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        # ResBlocks use GroupNorm32 (eps 1e-5); the transformer's own GroupNorm is 1e-6 in both.
        "norm_eps": 1e-5,
        "cross_attention_dim": int(context_dim),
        "transformer_layers_per_block": tuple(depth),
        # Legacy diffusers naming: this argument is the number of heads per block.
        "attention_head_dim": tuple(heads),
        # proj_in / proj_out are 1x1 convs unless the newer linear variant is configured.
        "use_linear_projection": bool(cfg.get("use_linear_in_transformer", False)),
        "resnet_time_scale_shift": (
            "scale_shift" if cfg.get("use_scale_shift_norm", False) else "default"
        ),
        "time_embedding_type": "positional",
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "upcast_attention": False,
        "only_cross_attention": False,
    }


def vq_kwargs(ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int) -> dict[str, Any]:
    """Arguments of ``VQModel`` equivalent to a taming ``VQModel`` (``ddconfig``, codebook).

    Raises:
        LdmConversionError: for options the diffusers model cannot reproduce.
    """
    required = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "z_channels")
    missing = [k for k in required if k not in ddconfig]
    if missing:
        raise LdmConversionError(f"ddconfig: missing keys {missing}")
    if ddconfig.get("double_z", False):
        raise LdmConversionError("ddconfig: double_z=True is a KL autoencoder, not a VQ one")
    if list(ddconfig.get("attn_resolutions", [])):
        raise LdmConversionError(
            f"ddconfig: attn_resolutions {ddconfig['attn_resolutions']} not supported (only [])"
        )
    mult = [int(m) for m in ddconfig["ch_mult"]]
    if mult[0] != 1:
        raise LdmConversionError(f"ddconfig: ch_mult must start with 1, got {mult}")
    levels = len(mult)
    return {
        "in_channels": int(ddconfig["in_channels"]),
        "out_channels": int(ddconfig["out_ch"]),
        # DownEncoderBlock2D downsamples with pad (0, 1, 0, 1) + stride-2 conv, as taming does.
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        # UpDecoderBlock2D has layers_per_block + 1 resnets, as taming's decoder levels.
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(int(ddconfig["ch"]) * m for m in mult),
        "layers_per_block": int(ddconfig["num_res_blocks"]),
        "act_fn": "silu",
        "latent_channels": int(ddconfig["z_channels"]),
        "sample_size": int(ddconfig.get("resolution", 256)),
        "num_vq_embeddings": int(n_embed),
        "norm_num_groups": 32,
        "vq_embed_dim": int(embed_dim),
        # Only recorded in the config; the helpers below apply LdmParts.scale_factor.
        "scaling_factor": 1.0,
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


# --------------------------------------------------------------------------- key mapping


@dataclass(frozen=True)
class _UnetLayout:
    levels: int
    res_blocks: int
    attn_levels: frozenset[int]


def _unet_source_key(key: str, layout: _UnetLayout) -> str:
    """Name in ``model.diffusion_model`` of a ``UNet2DConditionModel`` state-dict entry."""
    p = key.split(".")
    per_level = layout.res_blocks + 1

    def resnet(rest: list[str]) -> str:
        return ".".join([_UNET_RESNET_NAMES[rest[0]], *rest[1:]])

    head = p[0]
    if head == "time_embedding":
        return ".".join([{"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]], *p[2:]])
    if head == "conv_in":
        return ".".join(["input_blocks.0.0", *p[1:]])
    if head == "conv_norm_out":
        return ".".join(["out.0", *p[1:]])
    if head == "conv_out":
        return ".".join(["out.2", *p[1:]])
    if head == "down_blocks":
        level, kind = int(p[1]), p[2]
        if kind == "downsamplers" and p[3:5] == ["0", "conv"]:
            return ".".join([f"input_blocks.{(level + 1) * per_level}.0.op", *p[5:]])
        block = 1 + level * per_level + int(p[3])
        if kind == "resnets":
            return f"input_blocks.{block}.0." + resnet(p[4:])
        if kind == "attentions":
            return ".".join([f"input_blocks.{block}.1", *p[4:]])
    if head == "mid_block":
        kind, idx = p[1], int(p[2])
        if kind == "resnets":
            return f"middle_block.{2 * idx}." + resnet(p[3:])
        if kind == "attentions":
            return ".".join(["middle_block.1", *p[3:]])
    if head == "up_blocks":
        up, kind = int(p[1]), p[2]
        level = layout.levels - 1 - up
        if kind == "upsamplers" and p[3:5] == ["0", "conv"]:
            # Upsample follows the last ResBlock (and its SpatialTransformer, if any).
            slot = 2 if level in layout.attn_levels else 1
            block = up * per_level + layout.res_blocks
            return ".".join([f"output_blocks.{block}.{slot}.conv", *p[5:]])
        block = up * per_level + int(p[3])
        if kind == "resnets":
            return f"output_blocks.{block}.0." + resnet(p[4:])
        if kind == "attentions":
            return ".".join([f"output_blocks.{block}.1", *p[4:]])
    raise LdmConversionError(f"no openaimodel counterpart for diffusers UNet key {key!r}")


def _vq_source_key(key: str, levels: int) -> str:
    """Name in ``first_stage_model`` of a ``VQModel`` state-dict entry."""
    p = key.split(".")

    def resnet(rest: list[str]) -> str:
        return ".".join([_VQ_RESNET_NAMES[rest[0]], *rest[1:]])

    def mid(part: str, rest: list[str]) -> str:
        kind, idx = rest[0], int(rest[1])
        if kind == "resnets":
            return f"{part}.mid.block_{idx + 1}." + resnet(rest[2:])
        sub = ".".join(rest[2:-1])
        return f"{part}.mid.attn_1.{_VQ_ATTENTION_NAMES[sub]}.{rest[-1]}"

    head = p[0]
    if head in ("quant_conv", "post_quant_conv", "quantize"):
        return key
    if head in ("encoder", "decoder"):
        names = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}
        if p[1] in names:
            return ".".join([head, names[p[1]], *p[2:]])
        if p[1] == "mid_block":
            return mid(head, p[2:])
        if head == "encoder" and p[1] == "down_blocks":
            level, kind = int(p[2]), p[3]
            if kind == "resnets":
                return f"encoder.down.{level}.block.{p[4]}." + resnet(p[5:])
            if kind == "downsamplers" and p[4:6] == ["0", "conv"]:
                return ".".join([f"encoder.down.{level}.downsample.conv", *p[6:]])
        if head == "decoder" and p[1] == "up_blocks":
            # diffusers runs up_blocks[0] first; taming indexes up[] by resolution level.
            level, kind = levels - 1 - int(p[2]), p[3]
            if kind == "resnets":
                return f"decoder.up.{level}.block.{p[4]}." + resnet(p[5:])
            if kind == "upsamplers" and p[4:6] == ["0", "conv"]:
                return ".".join([f"decoder.up.{level}.upsample.conv", *p[6:]])
    raise LdmConversionError(f"no taming counterpart for diffusers VQModel key {key!r}")


def _gather(
    template: Mapping[str, torch.Tensor],
    to_source: Callable[[str], str],
    prefix: str,
    state_dict: Mapping[str, torch.Tensor],
    consumed: set[str],
    missing: list[str],
    mismatched: list[str],
) -> dict[str, torch.Tensor]:
    """Pull every tensor the target ``template`` needs out of ``state_dict``."""
    out: dict[str, torch.Tensor] = {}
    for key, target in template.items():
        src = prefix + to_source(key)
        tensor = state_dict.get(src)
        if tensor is None:
            missing.append(f"{src} (for {key})")
            continue
        consumed.add(src)
        if tensor.shape != target.shape:
            # Attention projections are 1x1 convs in taming and linear layers in diffusers.
            squeezable = tensor.dim() == 4 and tensor.shape[2:] == (1, 1)
            if squeezable and tensor.shape[:2] == target.shape:
                tensor = tensor[:, :, 0, 0]
            else:
                mismatched.append(
                    f"{src}: {tuple(tensor.shape)} but {key} needs {tuple(target.shape)}"
                )
                continue
        out[key] = tensor
    return out


def _meta_models(
    unet_kwargs: Mapping[str, Any], vq_model_kwargs: Mapping[str, Any]
) -> tuple[UNet2DConditionModel, VQModel]:
    # Meta tensors: shapes without allocation or random init (the real UNet has 400M params).
    with torch.device("meta"):
        return UNet2DConditionModel(**unet_kwargs), VQModel(**vq_model_kwargs)


def _is_ignored(key: str) -> bool:
    return any(p.fullmatch(key) for p in IGNORED_KEY_PATTERNS)


def _class_embedding(
    state_dict: Mapping[str, torch.Tensor],
    context_dim: int,
    consumed: set[str],
    missing: list[str],
    mismatched: list[str],
) -> dict[str, torch.Tensor]:
    """The class-embedding table as ``{"weight": ...}``; problems go to the lists passed in."""
    table = state_dict.get(CLASS_EMBEDDING_KEY)
    if table is None:
        missing.append(f"{CLASS_EMBEDDING_KEY} (for class_embedding.weight)")
        return {}
    consumed.add(CLASS_EMBEDDING_KEY)
    if table.dim() != 2 or table.shape[1] != context_dim:
        mismatched.append(
            f"{CLASS_EMBEDDING_KEY}: {tuple(table.shape)} but needs (n_classes + 1, {context_dim})"
        )
        return {}
    return {"weight": table}


def convert_ldm_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    ddconfig: Mapping[str, Any],
    n_embed: int,
    embed_dim: int,
    *,
    source: str = "<state_dict>",
) -> LdmStateDicts:
    """Rename a ``LatentDiffusion`` state dict into diffusers state dicts (no modules built).

    Raises:
        LdmConversionError: naming the checkpoint tensors that are missing, have the wrong
            shape, or are left over (neither converted nor a known schedule buffer).
    """
    unet_kw = ldm_unet_kwargs(unet_config)
    vq_kw = vq_kwargs(ddconfig, n_embed, embed_dim)
    unet_meta, vq_meta = _meta_models(unet_kw, vq_kw)
    mult = unet_kw["block_out_channels"]
    layout = _UnetLayout(
        levels=len(mult),
        res_blocks=unet_kw["layers_per_block"],
        attn_levels=frozenset(
            i for i, t in enumerate(unet_kw["down_block_types"]) if t.startswith("CrossAttn")
        ),
    )
    levels = len(vq_kw["block_out_channels"])

    consumed: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    unet_sd = _gather(
        unet_meta.state_dict(),
        lambda k: _unet_source_key(k, layout),
        UNET_PREFIX,
        state_dict,
        consumed,
        missing,
        mismatched,
    )
    vq_sd = _gather(
        vq_meta.state_dict(),
        lambda k: _vq_source_key(k, levels),
        VQ_PREFIX,
        state_dict,
        consumed,
        missing,
        mismatched,
    )
    class_sd = _class_embedding(
        state_dict, int(unet_kw["cross_attention_dim"]), consumed, missing, mismatched
    )

    ignored = tuple(sorted(k for k in state_dict if k not in consumed and _is_ignored(k)))
    leftover = sorted(k for k in state_dict if k not in consumed and not _is_ignored(k))
    problems = mismatch_problems(missing, mismatched, leftover)
    if problems:
        raise LdmConversionError(
            f"{source}: checkpoint does not match the LDM config; " + "; ".join(problems)
        )
    if any(k.startswith("model_ema.") for k in ignored):
        log.warning("%s: EMA tensors (model_ema.*) present and ignored", source)

    scale = state_dict.get("scale_factor")
    return LdmStateDicts(
        unet=unet_sd,
        vq=vq_sd,
        class_embedding=class_sd,
        unet_kwargs=unet_kw,
        vq_kwargs=vq_kw,
        scale_factor=float(scale) if scale is not None else 1.0,
        ignored=ignored,
    )


def convert_ldm_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    ddconfig: Mapping[str, Any],
    n_embed: int,
    embed_dim: int,
    *,
    source: str = "<state_dict>",
) -> LdmParts:
    """Convert a ``LatentDiffusion`` state dict and build the diffusers modules (eval mode).

    The modules are created on the meta device and their tensors assigned from the converted
    state dict (``strict=True``), so the parameters share memory with ``state_dict`` and keep
    its device and dtype. Parameters are frozen (``requires_grad=False``): the method needs
    gradients with respect to inputs only.

    Raises:
        LdmConversionError: see :func:`convert_ldm_state_dict`.
    """
    sds = convert_ldm_state_dict(
        state_dict, unet_config, ddconfig, n_embed, embed_dim, source=source
    )
    unet, vq = _meta_models(sds.unet_kwargs, sds.vq_kwargs)
    unet.load_state_dict(sds.unet, strict=True, assign=True)
    vq.load_state_dict(sds.vq, strict=True, assign=True)
    n_rows, dim = sds.class_embedding["weight"].shape
    with torch.device("meta"):
        embedding = nn.Embedding(n_rows, dim)
    embedding.load_state_dict(sds.class_embedding, strict=True, assign=True)
    for module in (unet, vq, embedding):
        module.eval().requires_grad_(False)
    log.info(
        "%s: converted LDM (unet %d, vq %d tensors, %d classes incl. null; %d buffers ignored)",
        source,
        len(sds.unet),
        len(sds.vq),
        n_rows,
        len(sds.ignored),
    )
    return LdmParts(
        unet=unet,
        vq=vq,
        class_embedding=embedding,
        scale_factor=sds.scale_factor,
        ignored=sds.ignored,
    )


def load_ldm(
    path: str | Path,
    unet_config: Mapping[str, Any],
    ddconfig: Mapping[str, Any],
    n_embed: int,
    embed_dim: int,
    *,
    device: str | torch.device = "cpu",
) -> LdmParts:
    """Load ``cin256-v2/model.ckpt`` (or a state dict of the same form) as :class:`LdmParts`."""
    checkpoint = load_checkpoint(path)
    state_dict = state_dict_of(checkpoint, path)
    parts = convert_ldm_checkpoint(
        state_dict, unet_config, ddconfig, n_embed, embed_dim, source=str(path)
    )
    return parts.to(device)


# --------------------------------------------------------------------------- model calls


def ldm_eps(parts: LdmParts, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Noise prediction ``eps(z, t, c)`` with ``c`` the class-embedding row of each label.

    Args:
        z: latents, ``B x C x H x W``.
        t: original (1000-step) timesteps, ``B`` (or a scalar).
        y: class labels, ``B``; ``parts.null_class`` is the unconditional label.
    """
    context = parts.class_embedding(y.to(parts.class_embedding.weight.device))[:, None, :]
    return parts.unet(z, t, encoder_hidden_states=context.to(z.dtype)).sample


def ldm_quantize(parts: LdmParts, h: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Replace each latent vector by its nearest codebook row (squared L2 distance).

    Rows are processed ``chunk`` at a time: the full distance matrix of a batch of 48 latents
    of 64x64 against 8192 codes would take 6 GiB.
    """
    codebook = parts.vq.quantize.embedding.weight
    b, c, hh, ww = h.shape
    flat = h.permute(0, 2, 3, 1).reshape(-1, c)
    code_sq = (codebook**2).sum(dim=1)
    indices = torch.empty(flat.shape[0], dtype=torch.long, device=h.device)
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start : start + chunk]
        dist = (rows**2).sum(dim=1, keepdim=True) + code_sq[None, :] - 2.0 * rows @ codebook.t()
        indices[start : start + chunk] = dist.argmin(dim=1)
    return codebook[indices].reshape(b, hh, ww, c).permute(0, 3, 1, 2).contiguous()


def ldm_decode(parts: LdmParts, z: torch.Tensor, *, quantize: bool = False) -> torch.Tensor:
    """Decode latents: ``decoder(post_quant_conv(z / scale_factor))``.

    With ``quantize=True`` the latents are first snapped to the codebook, which is what
    LatentDiffusion's ``decode_first_stage`` does by default for a VQ first stage.
    """
    z = z / parts.scale_factor
    if quantize:
        z = ldm_quantize(parts, z)
    # force_not_quantize=True: diffusers then feeds z straight to post_quant_conv + decoder.
    return parts.vq.decode(z, force_not_quantize=True).sample


def ldm_encode(parts: LdmParts, image: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """Encode images in [-1, 1]: ``quant_conv(encoder(image))``, snapped to the codebook.

    With ``quantize=False`` this is the unquantised latent, which is what LDM's
    ``encode_first_stage`` returns for a VQ first stage. Either way the result is multiplied
    by ``scale_factor`` (1.0 for cin256-v2).
    """
    h = parts.vq.encode(image).latents
    if quantize:
        h = ldm_quantize(parts, h)
    return h * parts.scale_factor
