"""Convert DiffNB's class-conditional CIFAR-10 DDIM UNet to :class:`diffusers.UNet2DModel`.

The source is the DDIM repository's ``simple`` ``Model`` (config ``ddim_cifar10_cond.yml``) with
a ``label_emb`` table of ``num_classes + 1`` rows added to the timestep embedding after its two
dense layers; the last row is the null label used for classifier-free guidance. This maps onto a
``UNet2DModel`` with ``num_class_embeds = num_classes + 1`` (diffusers also adds the class
embedding to the output of its ``TimestepEmbedding``).

Architectural facts the mapping relies on:

* timestep embedding: ``[sin, cos]`` with frequencies ``exp(-ln(1e4) i / (half - 1))``, i.e.
  ``flip_sin_to_cos=False`` and ``freq_shift=1``;
* GroupNorm with 32 groups and ``eps=1e-6`` everywhere, attention included;
* downsampling pads ``(0, 1, 0, 1)`` before a stride-2 conv (diffusers ``downsample_padding=0``);
* up levels hold ``num_res_blocks + 1`` ResNet blocks; attention is single-head with 1x1-conv
  q/k/v/proj (diffusers uses linear layers: the weights are reshaped).

The mapping is driven by the target model: every target tensor is named back to its source
tensor, so a missing source tensor is reported under its checkpoint name, and every source tensor
that no target asks for is reported as a leftover.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from diffguard.checkpoints import load_checkpoint, state_dict_of
from diffguard.convert import mismatch_problems

log = logging.getLogger(__name__)

REQUIRED_CONFIG_KEYS = (
    "type",
    "image_size",
    "num_classes",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
)
# Prefix added by torch.nn.DataParallel, under which the DDIM runner saves its checkpoints.
DATA_PARALLEL_PREFIX = "module."

# diffusers ResnetBlock2D -> DDIM ResnetBlock sub-module names.
_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "temb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# diffusers Attention (linear q/k/v/out) -> DDIM AttnBlock (1x1 convs).
_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_TOP_LEVEL_NAMES = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
    "class_embedding": "label_emb",
    "time_embedding.linear_1": "temb.dense.0",
    "time_embedding.linear_2": "temb.dense.1",
}
_BLOCK_KEY = re.compile(
    r"(?P<side>down|up)_blocks\.(?P<idx>\d+)\."
    r"(?:(?P<kind>resnets|attentions)\.(?P<sub>\d+)\.(?P<rest>.+)"
    r"|(?P<resample>downsamplers|upsamplers)\.0\.conv\.(?P<param>weight|bias))"
)
_MID_KEY = re.compile(r"mid_block\.(?P<kind>resnets|attentions)\.(?P<sub>\d+)\.(?P<rest>.+)")


class DiffNBConversionError(ValueError):
    """The checkpoint or config does not match the DDIM ``simple`` class-conditional UNet."""


# --------------------------------------------------------------------------- config


def diffnb_null_label(config: Mapping[str, Any]) -> int:
    """Index of the null (unconditional) label: ``num_classes``, the last embedding row."""
    return int(config["num_classes"])


def diffnb_unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of ``UNet2DModel`` equivalent to a DDIM ``simple`` class-conditional config.

    Args:
        config: the model config (``type``, ``image_size``, ``num_classes``, ``in_channels``,
            ``out_ch``, ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions`` given as
            feature-map resolutions, optional ``dropout`` and ``resamp_with_conv``).

    Raises:
        DiffNBConversionError: for a missing key or an option diffusers cannot reproduce.
    """
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise DiffNBConversionError(f"DiffNB config: missing keys {missing}")
    if config["type"] != "simple":
        raise DiffNBConversionError(f"DiffNB config: type must be 'simple', got {config['type']!r}")
    if not config.get("resamp_with_conv", True):
        # diffusers' Down/Up blocks always build conv resamplers; DDIM would avg-pool/nearest.
        raise DiffNBConversionError("DiffNB config: resamp_with_conv=False is not supported")
    mult = [int(m) for m in config["ch_mult"]]
    if not mult or mult[0] != 1:
        # DDIM's conv_in emits `ch` channels; diffusers' emits block_out_channels[0].
        raise DiffNBConversionError(f"DiffNB config: ch_mult must start with 1, got {mult}")
    ch = int(config["ch"])
    if ch % 32:
        raise DiffNBConversionError(f"DiffNB config: ch={ch} is not a multiple of 32 (GroupNorm)")
    image_size = int(config["image_size"])
    resolutions = [image_size // 2**level for level in range(len(mult))]
    attn_res = {int(r) for r in config["attn_resolutions"]}
    unused = sorted(attn_res - set(resolutions))
    if unused:
        log.warning(
            "DiffNB config: attn_resolutions %s match no level (resolutions %s); "
            "they are resolutions, not downsample factors",
            unused,
            resolutions,
        )
    has_attn = [r in attn_res for r in resolutions]
    return {
        "sample_size": image_size,
        "in_channels": int(config["in_channels"]),
        "out_channels": int(config["out_ch"]),
        "time_embedding_type": "positional",
        # DDIM's get_timestep_embedding: [sin, cos], frequencies exp(-ln(1e4) i / (half - 1)).
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
        "block_out_channels": tuple(ch * m for m in mult),
        "layers_per_block": int(config["num_res_blocks"]),
        "mid_block_scale_factor": 1,
        # DDIM Downsample pads (0, 1, 0, 1) then convolves with stride 2 and no padding.
        "downsample_padding": 0,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": float(config.get("dropout", 0.0)),
        "act_fn": "silu",
        # None = one head spanning all channels, as DDIM's AttnBlock.
        "attention_head_dim": None,
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-6,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "class_embed_type": None,
        # num_classes real labels plus the null label.
        "num_class_embeds": int(config["num_classes"]) + 1,
    }


def build_diffnb_unet(config: Mapping[str, Any]) -> UNet2DModel:
    """An untrained ``UNet2DModel`` with the architecture described by ``config``."""
    return UNet2DModel(**diffnb_unet_kwargs(config))


# --------------------------------------------------------------------------- key mapping


def _sub_name(rest: str, names: Mapping[str, str], key: str) -> str:
    """Rename the module part of ``rest`` (``<module>.<param>``) using ``names``."""
    module, _, param = rest.rpartition(".")
    if module not in names:
        raise DiffNBConversionError(f"no DDIM counterpart for diffusers UNet key {key!r}")
    return f"{names[module]}.{param}"


def _source_key(key: str, levels: int) -> str:
    """Name in the DDIM checkpoint of a ``UNet2DModel`` state-dict entry."""
    module, _, param = key.rpartition(".")
    if module in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[module]}.{param}"
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        side, idx = match["side"], int(match["idx"])
        # DDIM indexes up levels by resolution (up.0 is the full-resolution level, applied
        # last); diffusers indexes them in execution order.
        level = idx if side == "down" else levels - 1 - idx
        if match["resample"]:
            name = "downsample" if side == "down" else "upsample"
            return f"{side}.{level}.{name}.conv.{match['param']}"
        if match["kind"] == "resnets":
            return f"{side}.{level}.block.{match['sub']}." + _sub_name(
                match["rest"], _RESNET_NAMES, key
            )
        return f"{side}.{level}.attn.{match['sub']}." + _sub_name(
            match["rest"], _ATTENTION_NAMES, key
        )
    match = _MID_KEY.fullmatch(key)
    if match:
        sub = int(match["sub"])
        if match["kind"] == "resnets":
            return f"mid.block_{sub + 1}." + _sub_name(match["rest"], _RESNET_NAMES, key)
        return f"mid.attn_{sub + 1}." + _sub_name(match["rest"], _ATTENTION_NAMES, key)
    raise DiffNBConversionError(f"no DDIM counterpart for diffusers UNet key {key!r}")


def strip_data_parallel_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` puts on every key (if all have it)."""
    keys = list(sd)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in sd.items()}
    return dict(sd)


def _target_shapes(config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """Names and shapes of the target state dict, from a parameter-free (meta) model."""
    with torch.device("meta"):
        model = build_diffnb_unet(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_diffnb_state_dict(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) a DDIM ``simple`` UNet state dict for ``build_diffnb_unet(config)``.

    Args:
        sd: the checkpoint's model (or EMA) state dict; a ``module.`` prefix is stripped.
        config: the model config the checkpoint was trained with.

    Returns:
        A state dict with exactly the target model's keys.

    Raises:
        DiffNBConversionError: naming the source tensors that are missing, left over or of the
            wrong shape.
    """
    source = strip_data_parallel_prefix(sd)
    levels = len(config["ch_mult"])
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    bad_shape: list[str] = []
    used: set[str] = set()
    for key, shape in _target_shapes(config).items():
        src = _source_key(key, levels)
        if src not in source:
            missing.append(f"{src} (for {key})")
            continue
        used.add(src)
        tensor = source[src]
        if tensor.shape != shape:
            # DDIM's attention q/k/v/proj_out are 1x1 convs; diffusers' are linear layers.
            if tensor.dim() == 4 and tensor.shape[2:] == (1, 1) and tensor.shape[:2] == shape:
                tensor = tensor.reshape(shape)
            else:
                bad_shape.append(f"{src}: {tuple(tensor.shape)}, expected {tuple(shape)}")
                continue
        out[key] = tensor
    leftovers = sorted(set(source) - used)
    problems = mismatch_problems(missing, bad_shape, leftovers)
    if problems:
        raise DiffNBConversionError(
            "DiffNB checkpoint does not match config: " + "; ".join(problems)
        )
    return out


# The file DiffOOD's readme points to (its Google Drive folder): EMAHelper.state_dict().
DIFFNB_EMA_FILE = "ema_cifar10.ckpt"


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def diffnb_weights(checkpoint: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The EMA weights inside a loaded DiffNB checkpoint.

    Accepted: DiffOOD's ``ema_cifar10.ckpt``, the flat ``name -> tensor`` dict that
    ``EMAHelper.state_dict()`` returns (a ``module.`` prefix is stripped later), and the original
    DDIM runner's ``[model, optimizer, epoch, step, ema]`` list (its EMA entry). A list without
    an EMA entry, such as DiffOOD's ``train.ckpt`` (``[model, optimizer, scheduler, epoch, step,
    time_start]``), is refused: its raw weights are not the EMA weights DiffNB samples with.

    Raises:
        DiffNBConversionError: naming ``path`` and the file to use instead.
    """
    if isinstance(checkpoint, (list, tuple)):
        if len(checkpoint) == 5 and _is_tensor_dict(checkpoint[-1]):
            return dict(checkpoint[-1])
        raise DiffNBConversionError(
            f"{path}: a training checkpoint (a list of {len(checkpoint)} entries, as DiffOOD's "
            "train.ckpt [model, optimizer, scheduler, epoch, step, time_start]) holds no EMA "
            f"weights; DiffNB samples with the EMA ones: use {DIFFNB_EMA_FILE} from DiffOOD's "
            "Google Drive folder (downloads.diffnb_cifar10_cond)"
        )
    try:
        return state_dict_of(checkpoint, path)
    except ValueError as err:
        raise DiffNBConversionError(
            f"{err}; expected {DIFFNB_EMA_FILE}, a flat name -> tensor dict of the EMA weights"
        ) from err


def load_diffnb_unet(path: str | Path, config: Mapping[str, Any]) -> UNet2DModel:
    """Load DiffNB's EMA weights (:func:`diffnb_weights`) into a ``UNet2DModel`` (eval, CPU, fp32).

    Raises:
        DiffNBConversionError: when the checkpoint at ``path`` is not EMA weights or does not
            match ``config``.
    """
    sd = diffnb_weights(load_checkpoint(path), path)
    try:
        converted = convert_diffnb_state_dict(sd, config)
    except DiffNBConversionError as err:
        raise DiffNBConversionError(f"{path}: {err}") from err
    model = build_diffnb_unet(config)
    model.load_state_dict(converted, strict=True)
    model.eval()
    log.info("loaded DiffNB UNet from %s (%d tensors)", path, len(converted))
    return model
