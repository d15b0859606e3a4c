"""Test stand-ins for the paper-scale checkpoints: original formats, random weights, small shapes.

Nothing can be downloaded here, so tests that exercise the real conversion and loading code need
files that look like the released checkpoints. Each writer produces the *original* file format
(``torch.save`` of the original key names, the original container: bare state dict, Lightning
checkpoint with its callback entries, or DiffOOD's flat EMA dict), with
the tensor names of the real checkpoint's manifest (``shared/reference/checkpoints``) and its
shapes scaled down: every width that is a multiple of the real channel unit is rescaled to the
stand-in's unit; the structure (levels, blocks, attention placement) stays that of the real
model, so the names are exactly the manifest's. Weights are random (seeded).

Each writer returns a dict with ``path`` (the main checkpoint), ``paths`` (role -> file, as
``diffusion_models.<name>.checkpoints`` / ``classifier`` need them), ``sha256`` (role -> hex)
and ``options`` (the ``options`` of the config entry, or the classifier spec).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

ADM_MANIFEST = "adm256_uncond_manifest.tsv"
LDM_MANIFEST = "ldm_cin256_v2_manifest.tsv"
DIFFNB_MANIFEST = "diffnb_cifar10_cond_manifest.tsv"
# Callback class CompVis' Lightning checkpoints pickle (torch.load(weights_only=True) refuses it)
LIGHTNING_MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


@contextlib.contextmanager
def fake_global_class(qualified_name: str = LIGHTNING_MODEL_CHECKPOINT) -> Iterator[type]:
    """A plain class importable as ``qualified_name`` while the context lasts.

    Lightning is not installed here; pickling an instance (or the class) of the returned class
    writes the real global name into the file, as a Lightning checkpoint does. Modules this adds
    to ``sys.modules`` are removed on exit, so a loader cannot rely on them.
    """
    module_name, class_name = qualified_name.rsplit(".", 1)
    cls = type(class_name, (), {"__module__": module_name, "__qualname__": class_name})
    parts = module_name.split(".")
    added: list[str] = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    previous = getattr(sys.modules[module_name], class_name, None)
    setattr(sys.modules[module_name], class_name, cls)
    try:
        yield cls
    finally:
        if previous is None:
            delattr(sys.modules[module_name], class_name)
        else:
            setattr(sys.modules[module_name], class_name, previous)
        for name in reversed(added):
            del sys.modules[name]


def manifest_dir() -> Path:
    """``shared/reference/checkpoints`` (``$DIFFGUARD_SHARED`` overrides ``../shared``)."""
    env = os.environ.get("DIFFGUARD_SHARED")
    shared = Path(env) if env else REPO_ROOT.parent / "shared"
    path = shared / "reference" / "checkpoints"
    if not path.is_dir():
        raise FileNotFoundError(f"manifests not found at {path}; set DIFFGUARD_SHARED")
    return path


def _manifest(name: str, directory: Path | None) -> tuple[dict[str, Any], dict[str, tuple]]:
    from diffguard.convert.manifest import read_manifest

    return read_manifest((directory or manifest_dir()) / name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scale(d: int, unit: int, new_unit: int) -> int:
    return d // unit * new_unit if d % unit == 0 and d >= unit else d


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random values in a sane range: norms ~1, biases small, weights ~1/sqrt(fan_in)."""
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") else ""
    if len(shape) == 1 and leaf == "weight" and ("norm" in parent or parent.startswith("bn")):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if len(shape) == 1 and leaf in ("bias", "running_mean"):
        return 0.02 * torch.randn(shape, generator=gen)
    if leaf == "running_var":
        return 1.0 + 0.1 * torch.rand(shape, generator=gen)
    if leaf == "num_batches_tracked":
        return torch.tensor(1000, dtype=torch.long)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return 0.1 * torch.randn(shape, generator=gen)


def _random_state(
    shapes: dict[str, tuple[int, ...]], scale: Callable[[str, tuple[int, ...]], tuple], seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: _random_tensor(name, scale(name, shape), gen) for name, shape in shapes.items()}


def _save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _result(paths: dict[str, Path], options: dict[str, Any], main: str = "model") -> dict:
    return {
        "path": paths[main],
        "paths": paths,
        "sha256": {role: _sha256(p) for role, p in paths.items()},
        "options": options,
    }


# ------------------------------------------------------------------------------ ADM (GDM)


def write_adm(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    num_channels: int = 32,
    seed: int = 0,
    filename: str = "256x256_diffusion_uncond.pt",
    manifest: Path | None = None,
) -> dict[str, Any]:
    """``256x256_diffusion_uncond.pt`` in miniature: a bare ADM state dict (``torch.save``).

    The real config (header of the manifest) with ``num_channels`` instead of 256 (heads keep
    their count: ``num_head_channels`` scales too) and ``image_size`` instead of 256 (attention
    resolutions scale with it, so attention sits at the same levels). ``options`` is the
    guided-diffusion flag set for ``diffusion_models.<name>.options``.
    """
    headers, shapes = _manifest(ADM_MANIFEST, manifest)
    real = dict(headers["config"])
    unit = int(real["num_channels"])
    if num_channels % 32 or image_size % 32:
        raise ValueError("write_adm: num_channels and image_size must be multiples of 32")
    from diffguard.convert.adm import _DEFAULT_CHANNEL_MULT

    size_ratio = int(real["image_size"]) // image_size
    options = {
        **real,
        "image_size": image_size,
        "num_channels": num_channels,
        "num_head_channels": int(real["num_head_channels"]) * num_channels // unit,
        # The default channel_mult depends on image_size; pin the real model's one.
        "channel_mult": ",".join(
            str(int(m)) for m in _DEFAULT_CHANNEL_MULT[int(real["image_size"])]
        ),
        "attention_resolutions": ",".join(
            str(int(r) // size_ratio) for r in str(real["attention_resolutions"]).split(",")
        ),
        "use_released_attention": True,
    }
    state = _random_state(
        shapes, lambda _n, s: tuple(_scale(d, unit, num_channels) for d in s), seed
    )
    path = _save(state, Path(out_dir) / filename)
    return _result({"model": path}, options)


# ------------------------------------------------------------------------------ LDM


def _ldm_schedule_buffers(start: float, end: float, steps: int) -> dict[str, torch.Tensor]:
    """The DDPM schedule buffers LatentDiffusion keeps in its state dict (float32)."""
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * alphas.sqrt() / (1 - ac),
    }
    return {k: v.float() for k, v in buffers.items()}


def write_ldm(
    out_dir: str | Path,
    *,
    model_channels: int = 32,
    context_dim: int = 64,
    vq_channels: int = 32,
    n_embed: int = 64,
    resolution: int = 32,
    n_classes: int = 1001,
    seed: int = 0,
    manifest: Path | None = None,
) -> dict[str, Any]:
    """``cin256-v2/model.ckpt`` + ``cin256-v2.yaml`` in miniature (Lightning checkpoint).

    Manifest names; the UNet's channel unit 192 -> ``model_channels``, context 512 ->
    ``context_dim``, the VQ unit 128 -> ``vq_channels``, codebook 8192 -> ``n_embed`` rows,
    pixel resolution 256 -> ``resolution`` (the latent is resolution / 4, as f=4);
    ``n_classes`` embedding rows (the last one the null class). The schedule buffers of the
    real checkpoint are included. Saved as PyTorch Lightning 1.4 (latent-diffusion's pin) saves:
    ``epoch``, ``global_step``, ``pytorch-lightning_version``, ``callbacks`` keyed by the
    ``ModelCheckpoint`` class (Lightning < 1.5 keys callback states by ``type(callback)``, so the
    file names the global ``weights_only`` refuses) and ``state_dict``. Roles: ``model`` and
    ``config``.
    """
    headers, shapes = _manifest(LDM_MANIFEST, manifest)
    unet_real, first_real = dict(headers["unet"]), dict(headers["first_stage"])
    extra = headers["first_stage_extra"]
    unet_unit, ctx_real = int(unet_real["model_channels"]), int(unet_real["context_dim"])
    vq_unit = int(first_real["ch"])

    def scale(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if name == "cond_stage_model.embedding.weight":
            return (n_classes, context_dim)
        if name == "first_stage_model.quantize.embedding.weight":
            return (n_embed, shape[1])
        if name.startswith("first_stage_model."):
            return tuple(_scale(d, vq_unit, vq_channels) for d in shape)
        out = [_scale(d, unet_unit, model_channels) for d in shape]
        if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) and shape[1] == ctx_real:
            out[1] = context_dim
        return tuple(out)

    state = _random_state(shapes, scale, seed)
    state.update(_ldm_schedule_buffers(0.0015, 0.0195, 1000))
    factor = 2 ** (len(first_real["ch_mult"]) - 1)
    unet_params = {
        **unet_real,
        "image_size": resolution // factor,
        "model_channels": model_channels,
        "context_dim": context_dim,
    }
    ddconfig = {**first_real, "ch": vq_channels, "resolution": resolution}
    config = {
        "model": {
            "base_learning_rate": 0.0001,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "timesteps": 1000,
                "first_stage_key": "image",
                "cond_stage_key": "class_label",
                "image_size": resolution // factor,
                "channels": int(unet_real["in_channels"]),
                "cond_stage_trainable": True,
                "conditioning_key": "crossattn",
                "monitor": "val/loss_simple_ema",
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": unet_params,
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.VQModelInterface",
                    "params": {
                        "embed_dim": int(extra["embed_dim"]),
                        "n_embed": n_embed,
                        "ddconfig": ddconfig,
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.ClassEmbedder",
                    "params": {
                        "n_classes": n_classes,
                        "embed_dim": context_dim,
                        "key": "class_label",
                    },
                },
            },
        }
    }
    out = Path(out_dir)
    callback_state = {
        "monitor": "val/loss_simple_ema",
        "best_model_score": torch.tensor(0.1),
        "best_model_path": "logs/checkpoints/epoch=000001.ckpt",
        "current_score": torch.tensor(0.1),
        "dirpath": "logs/checkpoints",
    }
    with fake_global_class(LIGHTNING_MODEL_CHECKPOINT) as model_checkpoint:
        model = _save(
            {
                "epoch": 1,
                "global_step": 1000,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": {model_checkpoint: callback_state},
                "optimizer_states": [],
                "lr_schedulers": [],
                "state_dict": state,
            },
            out / "model.ckpt",
        )
    config_path = out / "cin256-v2.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return _result({"model": model, "config": config_path}, {})


# ------------------------------------------------------------------------------ DiffNB


def write_diffnb(
    out_dir: str | Path,
    *,
    ch: int = 32,
    seed: int = 0,
    filename: str = "ema_cifar10.ckpt",
    manifest: Path | None = None,
    training_checkpoint: bool = False,
) -> dict[str, Any]:
    """DiffNB's conditional CIFAR-10 UNet in miniature + its yml (DiffNB layout).

    Saved as DiffOOD's ``ema_cifar10.ckpt`` is: ``torch.save(EMAHelper.state_dict())``, a flat
    ``name -> tensor`` dict of the EMA shadow weights (registered from the unwrapped model, so
    no ``module.`` prefix). With ``training_checkpoint`` it writes DiffOOD's ``train.ckpt`` list
    ``[model, optimizer, scheduler, epoch, step, time_start]`` instead, which holds no EMA
    weights (the loader must refuse it). Channel unit 128 -> ``ch``. Roles: ``model``, ``config``.
    """
    headers, shapes = _manifest(DIFFNB_MANIFEST, manifest)
    real = dict(headers["config"])
    unit = int(real["ch"])

    def scale(_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(_scale(d, unit, ch) for d in shape)

    ema = _random_state(shapes, scale, seed)
    out = Path(out_dir)
    if training_checkpoint:
        raw = _random_state(shapes, scale, seed + 1)
        optimizer = {
            "state": {},
            "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": list(range(len(raw)))}],
        }
        scheduler = {"base_lrs": [2e-4], "last_epoch": 1000, "_step_count": 1001}
        model = _save([raw, optimizer, scheduler, 100, 1000, "1205-0214"], out / filename)
    else:
        model = _save(ema, out / filename)
    model_cfg = {**real, "ch": ch, "struc": "DDIM", "var_type": "fixedlarge"}
    doc = {
        "Dataset": {
            "name": "CIFAR10",
            "image_size": int(real["image_size"]),
            "num_classes": int(real["num_classes"]),
            "channels": int(real["in_channels"]),
        },
        "Model": model_cfg,
        "Schedule": {
            "type": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "diffusion_step": 1000,
        },
        "Train": {"cond_ratio": 0.9},
    }
    config_path = out / "ddim_cifar10_cond.yml"
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return _result({"model": model, "config": config_path}, {})


# ------------------------------------------------------------------------------ classifiers


def write_resnet18_32x32(
    out_dir: str | Path,
    *,
    num_classes: int = 10,
    seed: int = 0,
    prefix: str = "",
    filename: str = "cifar10_res18_acc94.30.ckpt",
) -> dict[str, Any]:
    """OpenOOD v1's CIFAR ResNet-18 checkpoint: ``torch.save(net.state_dict())``.

    OpenOOD key names (``conv1``, ``layer1.0.shortcut.0``, ``fc``, BN running stats); an optional
    ``prefix`` (``module.`` / ``net.``) as wrapped checkpoints carry. ``options`` is the spec.
    """
    from diffguard.classifiers import ResNet18_32x32

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ResNet18_32x32(num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        state[prefix + k] = (
            _random_tensor(k, tuple(v.shape), gen) if "running" in k or "bn" in k else v
        )
    path = _save(state, Path(out_dir) / filename)
    spec = {"arch": "resnet18_32x32", "num_classes": num_classes, "input_size": 32}
    return _result({"model": path}, spec)


def write_resnet50_tv(
    out_dir: str | Path,
    *,
    num_classes: int = 1000,
    seed: int = 0,
    filename: str = "resnet50-0676ba61.pth",
) -> dict[str, Any]:
    """torchvision's ResNet-50 V1 weights file: a bare torchvision state dict (random values).

    Full size (torchvision's architecture has no width knob); ``num_classes`` sizes ``fc``.
    """
    from torchvision.models import resnet50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = resnet50(weights=None, num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: (_random_tensor(k, tuple(v.shape), gen) if "running" in k else v)
        for k, v in net.state_dict().items()
    }
    path = _save(state, Path(out_dir) / filename)
    spec = {"arch": "resnet50_tv", "num_classes": num_classes, "input_size": 224}
    return _result({"model": path}, spec)


OPENOOD_V15_CIFAR10_RUN = "cifar10_resnet18_32x32_base_e100_lr0.1_default"
"""Folder of OpenOOD v1.5's CIFAR-10 cross-entropy ResNet-18 runs in its checkpoint zip."""


def write_openood_v15_cifar10(
    out_dir: str | Path,
    *,
    runs: tuple[int, ...] = (0, 1, 2),
    num_classes: int = 10,
    filename: str = "cifar10_res18_v1.5.zip",
) -> dict[str, Any]:
    """OpenOOD v1.5's ``cifar10_res18_v1.5.zip``: ``<run folder>/s<i>/best.ckpt`` per training run.

    Each ``best.ckpt`` is a bare ResNet18_32x32 state dict (OpenOOD key names, as
    :func:`write_resnet18_32x32`, a different seed per run). ``paths`` has ``model`` (the zip);
    ``members`` lists the members' paths inside it and ``options`` is the classifier spec.
    """
    import zipfile

    out = Path(out_dir)
    members = []
    archive = out / filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for run in runs:
            member = f"{OPENOOD_V15_CIFAR10_RUN}/s{run}/best.ckpt"
            ckpt = write_resnet18_32x32(
                out / "runs" / f"s{run}",
                num_classes=num_classes,
                seed=100 + run,
                filename="best.ckpt",
            )
            zf.write(ckpt["path"], member)
            members.append(member)
    result = _result({"model": archive}, ckpt["options"])
    result["members"] = members
    return result


# ------------------------------------------------------------------------------ Fig. 2 classifier


def adm_classifier_layout(options: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(kind, name, shape)`` of every tensor of guided-diffusion's ``EncoderUNetModel``.

    Written from the released architecture (``guided_diffusion/unet.py`` EncoderUNetModel with
    ``pool="attention"``, as ``script_util.create_classifier`` builds it), not from a manifest:
    no manifest of ``256x256_classifier.pt`` exists. ``kind`` is ``norm`` (GroupNorm affine),
    ``bias`` or ``weight``. ``options`` uses the converter's flag names
    (:data:`diffguard.convert.adm_classifier.CLASSIFIER_DEFAULTS`).
    """
    from diffguard.convert.adm import _DEFAULT_CHANNEL_MULT
    from diffguard.convert.adm_classifier import CLASSIFIER_DEFAULTS

    cfg = {**CLASSIFIER_DEFAULTS, **options}
    size, width = int(cfg["image_size"]), int(cfg["classifier_width"])
    mult = cfg["channel_mult"]
    mult = _DEFAULT_CHANNEL_MULT[size] if mult in ("", None) else [int(m) for m in mult.split(",")]
    attention_ds = {size // int(r) for r in str(cfg["classifier_attention_resolutions"]).split(",")}
    scale_shift = bool(cfg["classifier_use_scale_shift_norm"])
    updown = bool(cfg["classifier_resblock_updown"])
    emb = 4 * width
    out: list[tuple[str, str, tuple[int, ...]]] = []

    def param(kind: str, name: str, *shape: int) -> None:
        out.append((kind, name, shape))

    def resblock(prefix: str, c_in: int, c_out: int) -> None:
        param("norm", f"{prefix}.in_layers.0.weight", c_in)
        param("bias", f"{prefix}.in_layers.0.bias", c_in)
        param("weight", f"{prefix}.in_layers.2.weight", c_out, c_in, 3, 3)
        param("bias", f"{prefix}.in_layers.2.bias", c_out)
        param("weight", f"{prefix}.emb_layers.1.weight", (2 if scale_shift else 1) * c_out, emb)
        param("bias", f"{prefix}.emb_layers.1.bias", (2 if scale_shift else 1) * c_out)
        param("norm", f"{prefix}.out_layers.0.weight", c_out)
        param("bias", f"{prefix}.out_layers.0.bias", c_out)
        param("weight", f"{prefix}.out_layers.3.weight", c_out, c_out, 3, 3)
        param("bias", f"{prefix}.out_layers.3.bias", c_out)
        if c_out != c_in:
            param("weight", f"{prefix}.skip_connection.weight", c_out, c_in, 1, 1)
            param("bias", f"{prefix}.skip_connection.bias", c_out)

    def attention(prefix: str, ch: int) -> None:
        param("norm", f"{prefix}.norm.weight", ch)
        param("bias", f"{prefix}.norm.bias", ch)
        param("weight", f"{prefix}.qkv.weight", 3 * ch, ch, 1)
        param("bias", f"{prefix}.qkv.bias", 3 * ch)
        param("weight", f"{prefix}.proj_out.weight", ch, ch, 1)
        param("bias", f"{prefix}.proj_out.bias", ch)

    param("weight", "time_embed.0.weight", emb, width)
    param("bias", "time_embed.0.bias", emb)
    param("weight", "time_embed.2.weight", emb, emb)
    param("bias", "time_embed.2.bias", emb)
    ch = int(mult[0]) * width
    param("weight", "input_blocks.0.0.weight", ch, 3, 3, 3)
    param("bias", "input_blocks.0.0.bias", ch)
    block, ds = 1, 1
    for level, m in enumerate(mult):
        for _ in range(int(cfg["classifier_depth"])):
            resblock(f"input_blocks.{block}.0", ch, int(m) * width)
            ch = int(m) * width
            if ds in attention_ds:
                attention(f"input_blocks.{block}.1", ch)
            block += 1
        if level != len(mult) - 1:
            if updown:
                resblock(f"input_blocks.{block}.0", ch, ch)
            else:
                param("weight", f"input_blocks.{block}.0.op.weight", ch, ch, 3, 3)
                param("bias", f"input_blocks.{block}.0.op.bias", ch)
            block += 1
            ds *= 2
    resblock("middle_block.0", ch, ch)
    attention("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    param("norm", "out.0.weight", ch)
    param("bias", "out.0.bias", ch)
    param("weight", "out.2.positional_embedding", ch, (size // ds) ** 2 + 1)
    param("weight", "out.2.qkv_proj.weight", 3 * ch, ch, 1)
    param("bias", "out.2.qkv_proj.bias", 3 * ch)
    param("weight", "out.2.c_proj.weight", int(cfg["num_classes"]), ch, 1)
    param("bias", "out.2.c_proj.bias", int(cfg["num_classes"]))
    return out


def write_adm_classifier(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    width: int = 32,
    num_classes: int = 1000,
    seed: int = 0,
    filename: str = "256x256_classifier.pt",
) -> dict[str, Any]:
    """``256x256_classifier.pt`` in miniature: a bare ``EncoderUNetModel`` state dict.

    The released flags (``classifier_defaults()`` with image_size 256) with ``width`` instead of
    128 (``num_head_channels`` 64 scales with it, so heads keep their count) and ``image_size``
    instead of 256 (attention resolutions scale with it, so attention sits at the same levels;
    the channel multipliers stay the 256 model's). Tensor names from
    :func:`adm_classifier_layout` (the released architecture). ``options`` is the converter's
    flag set (``figures.fig2.noisy_classifier.options``).
    """
    if width % 32 or image_size % 32 or image_size > 256:
        raise ValueError("write_adm_classifier: width and image_size must be multiples of 32")
    ratio = 256 // image_size
    options = {
        "image_size": image_size,
        "classifier_width": width,
        "classifier_attention_resolutions": ",".join(str(r // ratio) for r in (32, 16, 8)),
        "num_head_channels": 64 * width // 128,
        "num_classes": num_classes,
        "channel_mult": "1,1,2,2,4,4",
    }
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for kind, name, shape in adm_classifier_layout(options):
        if kind == "norm":
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif kind == "bias":
            state[name] = 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    path = _save(state, Path(out_dir) / filename)
    return _result({"model": path}, options)


# ------------------------------------------------------------- paper-scale stand-in runs
STANDIN_CONFIG = "config/standin.yaml"
"""The config of a stand-in run, relative to its repository copy."""


def run_standins(
    tmp_path: Path,
    e2e: Any,
    monkeypatch: Any,
    build_served: Callable[[Path], dict[str, Any]],
    standin_config: Callable[[Path, dict[str, Any]], str],
    timeout: float,
) -> tuple[Path, dict[str, Any], Any]:
    """Serve the stand-ins, write the stand-in config into a repository copy and run it all.

    Returns:
        The run folder, what ``build_served`` returned, and the snakemake result.
    """
    work = e2e.copy_repo(tmp_path)
    # the rule scripts import the package of this copy, not an installed one
    monkeypatch.setenv("PYTHONPATH", str(work / "workflow" / "scripts"))
    data = build_served(tmp_path)
    config = standin_config(work, data)
    result = e2e.snakemake(work, "--cores", "2", configfiles=[config], timeout=timeout)
    return work, data, result


def write_standin_config(
    work: Path, config: dict[str, Any], report_name: str, edit_report: Callable | None = None
) -> str:
    """Attach ``config/report/<report_name>.yaml`` and write ``config/standin.yaml``.

    Random weights cannot reproduce the paper: the check runs and may fail, and its gate lets
    the paper build. ``edit_report`` may restrict the report to what the run has.

    Returns:
        The config's path relative to ``work``.
    """
    report_file = work / "config" / "report" / f"{report_name}.yaml"
    report = yaml.safe_load(report_file.read_text())["report"]
    report["check"]["allow"] = ["pass", "fail", "incomplete"]
    if edit_report is not None:
        edit_report(report)
    config["report"] = report
    (work / STANDIN_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return STANDIN_CONFIG


STANDIN_RUN: dict[str, Any] = {
    "run": "standin",
    "device": "cpu",
    "dtype": "float32",
    "gpus_per_job": 0,
    "cpus_per_job": 1,
    "mem_mb_per_job": 2000,
    "save_images": 4,
    "retries": 0,
}
"""Top-level settings of every stand-in run: CPU, float32, one thread per job, no retries."""


def serve_downloads(
    downloads: dict[str, dict[str, Any]],
    served: Callable[[str], Path],
    manual: Callable[[dict[str, Any]], str],
) -> None:
    """Point every ``downloads`` entry at its stand-in: ``served(key)`` as a file URL, or the
    user's file ``manual(entry)`` for a manual entry."""
    for key, entry in downloads.items():
        if entry.get("manual"):
            entry["path"] = manual(entry)
            continue
        path = served(key)
        entry.pop("gdrive_id", None)
        entry["url"] = path.as_uri()
        entry["filename"] = path.name
        # checkpoints pinned; archives recorded on first download (both code paths run)
        entry["sha256"] = None if entry.get("extract") else _sha256(path)


def smooth_png(rng: np.random.Generator, blocks: tuple[int, int], noise: float = 0.0) -> bytes:
    """PNG bytes of a smooth random colour image: 8 x 8 blocks, plus Gaussian ``noise``."""
    base = rng.uniform(0, 255, size=(*blocks, 3))
    img = np.kron(base, np.ones((8, 8, 1)))
    if noise:
        img = img + rng.normal(0, noise, size=img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip archive of ``members`` (name -> bytes), in name order."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in sorted(members.items()):
            zf.writestr(name, data)
    return path
