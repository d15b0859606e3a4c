"""Convert guided-diffusion's noisy ImageNet classifier (``256x256_classifier.pt``) to PyTorch.

The checkpoint is an ``EncoderUNetModel``: the encoder half of an ADM UNet (timestep embedding,
``input_blocks``, ``middle_block``; the same ResBlocks and attention blocks as the diffusion
model) followed by ``out`` = GroupNorm, SiLU and an ``AttentionPool2d`` head (CLIP-style: the
mean token is prepended, a learned positional embedding added, one multi-head self-attention
with the fused ``qkv_proj`` 1x1 conv1d in the *new* q|k|v order, and the ``c_proj`` conv1d read
at the mean token). The paper uses it only for Fig. 2 (``scripts_cls/compare_classifier*.py``).

No library ships this model. The encoder reuses :mod:`diffguard.convert.adm` (the same rules
map ``input_blocks``/``middle_block`` onto diffusers down/mid blocks, checked against the
released UNet there); the head is :class:`AttentionPool2d` below. The flags are guided-diffusion's
``classifier_defaults()`` names (``classifier_width``, ``classifier_depth``, ...); the released
Fig. 2 run used the defaults with ``image_size=256``. ``num_head_channels`` (64), ``num_classes``
(1000) and ``channel_mult`` (the image size's default) are fixed by ``create_classifier`` and
exposed only so that scaled-down stand-ins can be built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffguard.checkpoints import load_checkpoint, state_dict_of
from diffguard.convert.adm import (
    _AdmSpec,
    _plan,
    _Rule,
    _spec,
    adm_unet_kwargs,
    apply_rules,
    check_shapes,
    use_released_attention,
)

log = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIER_DEFAULTS",
    "AdmEncoderClassifier",
    "AttentionPool2d",
    "convert_adm_classifier_state_dict",
    "load_adm_classifier",
]

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    # guided-diffusion script_util.classifier_defaults() (image_size 64 there; 256 released)
    "image_size": 256,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    # fixed by create_classifier; settable for scaled-down stand-ins only
    "num_head_channels": 64,
    "num_classes": 1000,
    "channel_mult": "",
}
_OPTION_KEYS = frozenset(CLASSIFIER_DEFAULTS) | {"use_released_attention"}


@dataclass(frozen=True)
class _ClassifierSpec:
    """The encoder as an ADM UNet spec, plus the head's sizes."""

    unet_config: dict[str, Any]
    adm: _AdmSpec
    num_classes: int
    num_head_channels: int
    pool_size: int

    @property
    def out_channels(self) -> int:
        return self.adm.level_channels(len(self.adm.channel_mult) - 1)


def _classifier_spec(options: Mapping[str, Any]) -> _ClassifierSpec:
    """Validate the classifier flags (unknown keys are errors) and derive the encoder spec."""
    if not isinstance(options, Mapping):
        raise TypeError(f"classifier options must be a mapping, got {type(options).__name__}")
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        raise ValueError(
            f"ADM classifier options: unknown key(s) {unknown}; expected {sorted(_OPTION_KEYS)}"
        )
    cfg = {**CLASSIFIER_DEFAULTS, **options}
    if cfg["classifier_pool"] != "attention":
        raise NotImplementedError(
            f"ADM classifier option classifier_pool={cfg['classifier_pool']!r}: only the "
            "released 'attention' pooling is supported"
        )
    if cfg["classifier_use_fp16"]:
        raise NotImplementedError(
            "ADM classifier option classifier_use_fp16=True is not supported (the released "
            "Fig. 2 run keeps the classifier in float32)"
        )
    unet_config = {
        "image_size": int(cfg["image_size"]),
        "num_channels": int(cfg["classifier_width"]),
        "num_res_blocks": int(cfg["classifier_depth"]),
        "attention_resolutions": cfg["classifier_attention_resolutions"],
        "channel_mult": cfg["channel_mult"],
        "num_head_channels": int(cfg["num_head_channels"]),
        "use_scale_shift_norm": bool(cfg["classifier_use_scale_shift_norm"]),
        "resblock_updown": bool(cfg["classifier_resblock_updown"]),
        "learn_sigma": False,
        "class_cond": False,
    }
    adm = _spec(unet_config)
    levels = len(adm.channel_mult)
    pool_size = adm.image_size // 2 ** (levels - 1)
    if pool_size * 2 ** (levels - 1) != adm.image_size:
        raise ValueError(
            f"ADM classifier: image_size={adm.image_size} is not divisible by the encoder's "
            f"downsampling factor {2 ** (levels - 1)}"
        )
    num_classes = int(cfg["num_classes"])
    if num_classes < 2:
        raise ValueError(f"ADM classifier option num_classes={num_classes}: expected >= 2")
    return _ClassifierSpec(unet_config, adm, num_classes, adm.num_head_channels, pool_size)


class AttentionPool2d(nn.Module):
    """guided-diffusion's attention pooling head (adapted there from CLIP).

    Tokens are the ``H*W`` positions with their mean prepended; a learned positional embedding
    ``(C, H*W + 1)`` is added; ``qkv_proj`` (1x1 conv1d, ``C -> 3C``) is split q | k | v first
    and then into heads of ``num_head_channels`` (guided-diffusion's ``QKVAttention``, not the
    legacy order of the attention blocks); softmax attention with ``1/sqrt(sqrt(d))`` applied
    to q and k separately; ``c_proj`` (1x1 conv1d, ``C -> num_classes``) read at the mean token.
    """

    def __init__(
        self, spatial_size: int, embed_dim: int, num_head_channels: int, output_dim: int
    ) -> None:
        super().__init__()
        if embed_dim % num_head_channels:
            raise ValueError(
                f"AttentionPool2d: {embed_dim} channels do not split into heads of "
                f"{num_head_channels}"
            )
        self.spatial_size = spatial_size
        self.num_heads = embed_dim // num_head_channels
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spatial_size**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` features -> ``(N, output_dim)``."""
        b, c, *spatial = x.shape
        if spatial != [self.spatial_size, self.spatial_size]:
            raise ValueError(
                f"AttentionPool2d expects {self.spatial_size}x{self.spatial_size} features "
                f"(the classifier's image_size), got {spatial}"
            )
        tokens = x.reshape(b, c, -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = tokens + self.positional_embedding[None].to(tokens.dtype)
        length = tokens.shape[-1]
        q, k, v = self.qkv_proj(tokens).chunk(3, dim=1)
        heads, width = self.num_heads, c // self.num_heads
        scale = 1 / math.sqrt(math.sqrt(width))
        q = (q * scale).reshape(b * heads, width, length)
        k = (k * scale).reshape(b * heads, width, length)
        weights = torch.einsum("bct,bcs->bts", q, k)
        weights = torch.softmax(weights.float(), dim=-1).type(weights.dtype)
        out = torch.einsum("bts,bcs->bct", weights, v.reshape(b * heads, width, length))
        return self.c_proj(out.reshape(b, c, length))[:, :, 0]


class AdmEncoderClassifier(nn.Module):
    """guided-diffusion's ``EncoderUNetModel`` (attention pooling) in diffusers blocks.

    ``forward(x, timesteps)``: ``x`` in [-1, 1] at ``image_size``; ``timesteps`` the values the
    classifier is called with (guided-diffusion's timestep embedding, cos first). Returns logits.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block

        spec = _classifier_spec(options)
        self.spec = spec
        kw = adm_unet_kwargs(spec.unet_config)
        channels = list(kw["block_out_channels"])
        temb = int(kw["time_embedding_dim"])
        self.image_size = spec.adm.image_size
        # The same construction as diffusers' UNet2DModel's time embedding and down path.
        self.time_proj = Timesteps(channels[0], kw["flip_sin_to_cos"], kw["freq_shift"])
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        self.conv_in = nn.Conv2d(kw["in_channels"], channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, block_type in enumerate(kw["down_block_types"]):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=kw["layers_per_block"],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=temb,
                    add_downsample=i != len(channels) - 1,
                    resnet_eps=kw["norm_eps"],
                    resnet_act_fn=kw["act_fn"],
                    resnet_groups=kw["norm_num_groups"],
                    attention_head_dim=kw["attention_head_dim"],
                    downsample_padding=kw["downsample_padding"],
                    resnet_time_scale_shift=kw["resnet_time_scale_shift"],
                    downsample_type=kw["downsample_type"],
                    dropout=kw["dropout"],
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=channels[-1],
            temb_channels=temb,
            dropout=kw["dropout"],
            resnet_eps=kw["norm_eps"],
            resnet_act_fn=kw["act_fn"],
            output_scale_factor=kw["mid_block_scale_factor"],
            resnet_time_scale_shift=kw["resnet_time_scale_shift"],
            attention_head_dim=kw["attention_head_dim"],
            resnet_groups=kw["norm_num_groups"],
            attn_groups=kw["attn_norm_num_groups"],
            add_attention=True,
        )
        self.norm_out = nn.GroupNorm(kw["norm_num_groups"], channels[-1], eps=kw["norm_eps"])
        self.pool = AttentionPool2d(
            spec.pool_size, channels[-1], spec.num_head_channels, spec.num_classes
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``x`` (in [-1, 1]) at ``timesteps``."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"ADM classifier expects {self.image_size}x{self.image_size} inputs, got "
                f"{tuple(x.shape[-2:])}"
            )
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.time_embedding(self.time_proj(t).to(dtype=x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        h = self.mid_block(h, emb)
        return self.pool(F.silu(self.norm_out(h)))


def _head_rules() -> list[_Rule]:
    pairs = [("out.0.weight", "norm_out.weight"), ("out.0.bias", "norm_out.bias")]
    pairs.append(("out.2.positional_embedding", "pool.positional_embedding"))
    for module in ("qkv_proj", "c_proj"):
        pairs += [(f"out.2.{module}.{p}", f"pool.{module}.{p}") for p in ("weight", "bias")]
    return [_Rule(src, (dst,)) for src, dst in pairs]


def _classifier_plan(spec: _ClassifierSpec) -> list[_Rule]:
    """The ADM UNet rules of the encoder half (timestep embedding, input and middle blocks)."""
    encoder = ("time_embed.", "input_blocks.", "middle_block.")
    return [r for r in _plan(spec.adm) if r.src.startswith(encoder)] + _head_rules()


def convert_adm_classifier_state_dict(
    state_dict: Mapping[str, torch.Tensor], options: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Map an ``EncoderUNetModel`` state dict onto :class:`AdmEncoderClassifier` names.

    Raises:
        KeyError: Tensors the options require are missing (missing and unconsumed named).
        ValueError: Tensors left unconsumed, or shapes that do not fit the options (named).
    """
    spec = _classifier_spec(options)
    rules = _classifier_plan(spec)
    out = apply_rules(state_dict, rules, spec.adm, "ADM classifier")
    with torch.device("meta"):
        target = AdmEncoderClassifier(options).state_dict()
    check_shapes(out, target, rules, "ADM classifier")
    return out


def load_adm_classifier(
    path: str | Path, options: Mapping[str, Any], device: torch.device | str = "cpu"
) -> AdmEncoderClassifier:
    """Load ``256x256_classifier.pt`` (``weights_only=True``) as an eval-mode classifier.

    Args:
        path: The checkpoint (a bare state dict, as released).
        options: Classifier flags (:data:`CLASSIFIER_DEFAULTS` names) plus
            ``use_released_attention`` (default true: guided-diffusion's attention arithmetic
            in the encoder's attention blocks).
        device: Where to put the model (float32).
    """
    state_dict = state_dict_of(load_checkpoint(path), path)
    try:
        converted = convert_adm_classifier_state_dict(state_dict, options)
    except (KeyError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from err
    flags = {k: v for k, v in options.items() if k != "use_released_attention"}
    with torch.device("meta"):
        model = AdmEncoderClassifier(flags)
    converted = {k: v.float().contiguous() for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    if options.get("use_released_attention", True):
        use_released_attention(model)  # type: ignore[arg-type]
    log.info("loaded ADM classifier from %s (%d tensors)", path, len(converted))
    return model.to(device).eval().requires_grad_(False)
