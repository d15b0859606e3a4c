"""Diffusion-model and classifier backends: one interface for trained and converted models.

A *backend* is what GDM/CFG reconstruction needs from a diffusion model, whatever its source:

- ``train``: the embedded default's small diffusers ``UNet2DModel`` (trained by the workflow);
- ``adm``: OpenAI guided-diffusion (``256x256_diffusion_uncond.pt``, GDM), converted by
  :mod:`diffguard.convert.adm`; it learns sigma, so the UNet returns 6 channels and only the
  first 3 (epsilon) are used;
- ``diffnb``: DiffNB's class-conditional DDIM UNet for CIFAR-10 (:mod:`diffguard.convert.diffnb`);
- ``ldm``: CompVis ``cin256-v2`` (UNet + VQ autoencoder + class embedder,
  :mod:`diffguard.convert.ldm`), which runs in a latent space.

Conversion happens once per model (:func:`prepare_diffusion_model`, a workflow rule): the
original checkpoint is read with ``weights_only=True`` and the converted weights are written as
safetensors under ``<out_dir>/weights`` beside ``<out_dir>/backend.json``. Every later job loads
only safetensors (:func:`load_backend`); no pickle is opened at reconstruction time.

Layout of a prepared model directory::

    <out_dir>/backend.json               source, sizes, null label, options, checkpoint hashes
    <out_dir>/weights/config.json        (pixel models) diffusers UNet2DModel config
    <out_dir>/weights/diffusion_pytorch_model.safetensors
    <out_dir>/weights/unet/...           (ldm) UNet2DConditionModel
    <out_dir>/weights/vq/...             (ldm) VQModel
    <out_dir>/weights/class_embedding.safetensors   (ldm) the ClassEmbedder table

A trained model directory (source ``train``) has ``weights/`` from
:func:`diffguard.training.save_model` and no ``backend.json``; :func:`load_backend` accepts it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("diffguard")

BACKEND_FILE = "backend.json"
WEIGHTS_DIR = "weights"
FORMAT_VERSION = 1
SOURCES = ("train", "adm", "ldm", "diffnb")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Which checkpoint roles each converted source needs (config keys of `checkpoints:`).
REQUIRED_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "adm": ("model",),
    "ldm": ("model", "config"),
    "diffnb": ("model",),
}


class BackendError(ValueError):
    """A model directory, checkpoint set or option does not fit the backend (names what)."""


# ------------------------------------------------------------------------------ interface


@runtime_checkable
class DiffusionBackend(Protocol):
    """What the reconstruction code needs from a diffusion model.

    Images are in [-1, 1] at ``sample_size`` (pixels). ``eps`` works in the diffusion space:
    pixels for pixel-space models, latents (``encode``/``decode``) for the LDM. Timesteps are the
    original 1000-step ones. ``eps`` returns the epsilon channels only, in the input's dtype
    (the network itself runs in ``dtype``, the dtype of its first layer: fp16 in
    guided-diffusion's mixed ``use_fp16``, see :mod:`diffguard.precision`).
    """

    source: str
    conditional: bool
    null_label: int | None
    sample_size: int
    channels: int
    latent: bool
    device: torch.device
    dtype: torch.dtype

    def eps(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor: ...


def _as_timesteps(t: torch.Tensor | int, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(n) if t.dim() == 0 else t


@dataclass
class PixelBackend:
    """A diffusers ``UNet2DModel`` in pixel space (sources train, adm, diffnb).

    ``out_channels`` may exceed ``channels`` (ADM's learned variance): ``eps`` keeps the first
    ``channels``. ``null_label`` is the unconditional class index of a conditional model.
    """

    unet: nn.Module
    source: str
    channels: int
    sample_size: int
    null_label: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    latent: bool = False

    @property
    def conditional(self) -> bool:
        return self.null_label is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon prediction ``(N, channels, H, W)``; ``y`` is required iff conditional."""
        if self.conditional and y is None:
            raise BackendError(f"{self.source} model is conditional: eps needs labels")
        if not self.conditional and y is not None:
            raise BackendError(f"{self.source} model is unconditional: eps takes no labels")
        kwargs = {} if y is None else {"class_labels": y.to(x.device)}
        t = _as_timesteps(t, x.shape[0], x.device)
        out = self.unet(x.to(self.dtype), t, **kwargs).sample
        return out[:, : self.channels].to(x.dtype)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PixelBackend:
        """Move/cast the network in place; returns ``self``."""
        from diffguard.precision import is_mixed_precision

        # Cast only when needed: diffusers warns on every .to(dtype=...) of a loaded model.
        cast = {} if dtype is None or dtype == self.dtype else {"dtype": dtype}
        if cast and is_mixed_precision(self.unet):
            raise BackendError(
                f"{self.source} model is in mixed precision: load it again to cast it to {dtype}"
            )
        self.unet.to(device=device, **cast)
        return self

    def eval(self) -> PixelBackend:
        self.unet.eval()
        return self

    def encode(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Identity: pixel-space models diffuse the image itself."""
        return x

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return z


@dataclass
class LatentBackend:
    """The class-conditional LDM (``cin256-v2``): VQ autoencoder + cross-attention UNet."""

    parts: Any  # diffguard.convert.ldm.LdmParts
    channels: int
    sample_size: int
    source: str = "ldm"
    info: dict[str, Any] = field(default_factory=dict)
    latent: bool = True

    @property
    def conditional(self) -> bool:
        return True

    @property
    def null_label(self) -> int:
        return int(self.parts.null_class)

    @property
    def unet(self) -> nn.Module:
        return self.parts.unet

    @property
    def device(self) -> torch.device:
        return next(self.parts.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parts.unet.parameters()).dtype

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon of latents ``x`` under class labels ``y`` (``null_label`` = unconditional)."""
        from diffguard.convert.ldm import ldm_eps

        if y is None:
            y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        t = _as_timesteps(t, x.shape[0], x.device)
        return ldm_eps(self.parts, x.to(self.dtype), t, y).to(x.dtype)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LatentBackend:
        """Move all parts; cast only the UNet (the VQ and the class table stay float32)."""
        cast = {} if dtype is None or dtype == self.dtype else {"dtype": dtype}
        self.parts.unet.to(device=device, **cast)
        self.parts.vq.to(device=device)
        # ldm_eps casts the class context to the latents' dtype.
        self.parts.class_embedding.to(device=device)
        return self

    def eval(self) -> LatentBackend:
        for module in (self.parts.unet, self.parts.vq, self.parts.class_embedding):
            module.eval()
        return self

    def encode(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents (``quantize``: snap to the VQ codebook)."""
        from diffguard.convert.ldm import ldm_encode

        # The VQ autoencoder stays float32 (codebook distances), whatever the UNet's dtype.
        return ldm_encode(self.parts, x.float(), quantize=quantize).to(x.dtype)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latents -> pixels (``quantize``: decode_first_stage's codebook snap first)."""
        from diffguard.convert.ldm import ldm_decode

        return ldm_decode(self.parts, z.float(), quantize=quantize).to(z.dtype)


# ------------------------------------------------------------------------------ helpers


def resolve_dtype(
    name: str | torch.dtype, device: torch.device, force: bool = False
) -> torch.dtype:
    """The dtype to run a model in: ``name`` on CUDA; float32 on CPU unless ``force``.

    Half precision on CPU is slow and some kernels lack it, so CPU runs stay float32 (logged).
    """
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        if name not in DTYPES:
            raise BackendError(f"dtype {name!r}: expected one of {sorted(DTYPES)}")
        dtype = DTYPES[name]
    if dtype != torch.float32 and device.type == "cpu" and not force:
        log.info("dtype %s requested on CPU: running float32 instead", dtype)
        return torch.float32
    return dtype


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N x C x H x W images to ``size`` x ``size`` (no-op when already that size).

    Bilinear without antialiasing: what torchvision's ``Resize`` did on tensors in the
    released code's torchvision (0.11), used there for 224 -> 256 and back.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise BackendError(f"{path}: cannot read YAML config ({err})") from err
    if not isinstance(doc, dict):
        raise BackendError(f"{path}: expected a YAML mapping, got {type(doc).__name__}")
    return doc


def ldm_config_from_yaml(doc: Mapping[str, Any], path: str | Path = "<yaml>") -> dict[str, Any]:
    """``unet_config``/``ddconfig``/``n_embed``/``embed_dim`` and schedule from a LDM yaml.

    ``doc`` is the latent-diffusion config (``model.params.unet_config.params``,
    ``model.params.first_stage_config.params``, ``model.params.cond_stage_config.params``).
    """
    try:
        params = doc["model"]["params"]
        unet = dict(params["unet_config"]["params"])
        first = params["first_stage_config"]["params"]
        ddconfig = dict(first["ddconfig"])
        n_embed, embed_dim = int(first["n_embed"]), int(first["embed_dim"])
    except (KeyError, TypeError) as err:
        raise BackendError(
            f"{path}: not a latent-diffusion config (expected model.params.unet_config.params "
            f"and model.params.first_stage_config.params.{{ddconfig,n_embed,embed_dim}}; "
            f"missing {err})"
        ) from err
    cond = params.get("cond_stage_config", {}).get("params", {})
    return {
        "unet_config": unet,
        "ddconfig": ddconfig,
        "n_embed": n_embed,
        "embed_dim": embed_dim,
        "n_classes": cond.get("n_classes"),
        "scale_factor": float(params.get("scale_factor", 1.0)),
        "schedule": {
            "beta_schedule": "scaled_linear",
            "beta_start": float(params.get("linear_start", 0.0015)),
            "beta_end": float(params.get("linear_end", 0.0195)),
            "num_train_steps": int(params.get("timesteps", 1000)),
        },
    }


def diffnb_config_from_yaml(doc: Mapping[str, Any], path: str | Path = "<yaml>") -> dict[str, Any]:
    """The DiffNB model config (``type``, ``ch``, ``num_classes``, ...) from its yml.

    Accepts DiffNB's layout (``Model:`` section holding ``image_size`` and ``num_classes``), the
    DDIM layout (``model:`` plus ``data.image_size``/``data.num_classes``) or a flat mapping.
    """
    section = doc.get("Model", doc.get("model", doc))
    if not isinstance(section, Mapping):
        raise BackendError(f"{path}: 'Model'/'model' is not a mapping")
    config = dict(section)
    data = doc.get("Dataset", doc.get("data", {})) or {}
    for key in ("image_size", "num_classes"):
        if key not in config and key in data:
            config[key] = data[key]
    from diffguard.convert.diffnb import REQUIRED_CONFIG_KEYS

    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise BackendError(f"{path}: DiffNB config lacks {missing} (looked in Model/model, data)")
    keep = {*REQUIRED_CONFIG_KEYS, "dropout", "resamp_with_conv"}
    return {k: v for k, v in config.items() if k in keep}


def _sha256(path: Path) -> str:
    from diffguard.io import sha256sum

    return sha256sum(path)


def _fresh_dir(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _commit(tmp: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    """Move the prepared ``names`` from ``tmp`` into ``out_dir`` (``backend.json`` last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


def _check_checkpoints(source: str, checkpoint_paths: Mapping[str, Path]) -> dict[str, Path]:
    paths = {k: Path(v) for k, v in checkpoint_paths.items()}
    missing = [r for r in REQUIRED_CHECKPOINTS[source] if r not in paths]
    if missing:
        raise BackendError(
            f"diffusion model source {source!r} needs checkpoints "
            f"{list(REQUIRED_CHECKPOINTS[source])}; missing role(s) {missing}"
        )
    for role, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {role!r} of source {source!r} not found: {path}")
    return paths


# ------------------------------------------------------------------------------ preparation


def prepare_diffusion_model(
    source: str,
    checkpoint_paths: Mapping[str, Path],
    options: Mapping[str, Any],
    out_dir: Path,
) -> None:
    """Convert an original checkpoint once; write ``out_dir/weights`` and ``backend.json``.

    Args:
        source: ``adm``, ``ldm`` or ``diffnb`` (``train`` models are written by training).
        checkpoint_paths: role -> file. adm: ``model`` (``256x256_diffusion_uncond.pt``);
            ldm: ``model`` (``cin256-v2/model.ckpt``) and ``config`` (its yaml); diffnb:
            ``model`` (DDIM checkpoint) and optionally ``config`` (its yml).
        options: adm: the guided-diffusion flags (see
            :func:`diffguard.convert.adm.adm_unet_kwargs`) plus ``use_released_attention``
            (default true: guided-diffusion's attention arithmetic); ldm: none; diffnb:
            ``config`` (the model config) when no ``config`` checkpoint is given.
        out_dir: model directory; written atomically (``backend.json`` appears last).

    Raises:
        BackendError: unknown source, missing roles or options (named).
        FileNotFoundError: a checkpoint file is absent.
        ValueError/KeyError: the checkpoint does not match the config (tensor names listed).
    """
    if source not in REQUIRED_CHECKPOINTS:
        raise BackendError(
            f"prepare_diffusion_model: source {source!r} is not convertible "
            f"(expected one of {sorted(REQUIRED_CHECKPOINTS)}; 'train' models are trained)"
        )
    paths = _check_checkpoints(source, checkpoint_paths)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(out_dir)
    try:
        weights = tmp / WEIGHTS_DIR
        info: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "checkpoints": {
                role: {"file": p.name, "sha256": _sha256(p)} for role, p in sorted(paths.items())
            },
        }
        if source == "adm":
            info.update(_prepare_adm(paths, options, weights))
        elif source == "diffnb":
            info.update(_prepare_diffnb(paths, options, weights))
        else:
            info.update(_prepare_ldm(paths, options, weights))
        _write_json(tmp / BACKEND_FILE, info)
        _commit(tmp, out_dir, (WEIGHTS_DIR, BACKEND_FILE))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("prepared %s diffusion model in %s", source, out_dir)


def _prepare_adm(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from diffguard.convert.adm import adm_unet_kwargs, load_adm_unet

    config = {k: v for k, v in options.items() if k != "use_released_attention"}
    if not config:
        raise BackendError("adm: options must hold the guided-diffusion flags (image_size, ...)")
    kwargs = adm_unet_kwargs(config)
    unet = load_adm_unet(paths["model"], config)
    unet.save_pretrained(weights, safe_serialization=True)
    return {
        "conditional": False,
        "null_label": None,
        "channels": int(kwargs["in_channels"]),
        "out_channels": int(kwargs["out_channels"]),
        "sample_size": int(kwargs["sample_size"]),
        "use_released_attention": bool(options.get("use_released_attention", True)),
        "options": dict(options),
        "schedule": _adm_schedule(options),
    }


def _adm_schedule(options: Mapping[str, Any]) -> dict[str, Any]:
    """guided-diffusion's ``noise_schedule``/``diffusion_steps`` flags (linear, 1000 default)."""
    name = options.get("noise_schedule", "linear")
    if name != "linear":
        raise BackendError(f"adm: options.noise_schedule {name!r} is not supported (only linear)")
    return {
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_steps": int(options.get("diffusion_steps", 1000)),
    }


def diffnb_schedule_from_yaml(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The DDPM schedule of a DiffNB (``Schedule:``) or DDIM (``diffusion:``) yml."""
    if isinstance(doc.get("Schedule"), Mapping):
        sched = doc["Schedule"]
        name, steps = sched.get("type", "linear"), sched.get("diffusion_step", 1000)
    else:
        sched = doc.get("diffusion", {}) or {}
        name, steps = (
            sched.get("beta_schedule", "linear"),
            sched.get("num_diffusion_timesteps", 1000),
        )
    if name != "linear":
        raise BackendError(f"DiffNB config: beta schedule {name!r} is not supported (only linear)")
    return {
        "beta_schedule": "linear",
        "beta_start": float(sched.get("beta_start", 1e-4)),
        "beta_end": float(sched.get("beta_end", 0.02)),
        "num_train_steps": int(steps),
    }


def _prepare_diffnb(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from diffguard.convert.diffnb import diffnb_null_label, load_diffnb_unet

    schedule = diffnb_schedule_from_yaml({})
    if "config" in paths:
        doc = _read_yaml(paths["config"])
        config = diffnb_config_from_yaml(doc, paths["config"])
        schedule = diffnb_schedule_from_yaml(doc)
    elif isinstance(options.get("config"), Mapping):
        config = dict(options["config"])
    else:
        raise BackendError(
            "diffnb: give checkpoints.config (the model yml) or options.config (the model config)"
        )
    unet = load_diffnb_unet(paths["model"], config)
    unet.save_pretrained(weights, safe_serialization=True)
    return {
        "conditional": True,
        "null_label": diffnb_null_label(config),
        "channels": int(config["in_channels"]),
        "out_channels": int(config["out_ch"]),
        "sample_size": int(config["image_size"]),
        "model_config": config,
        "options": dict(options),
        "schedule": schedule,
    }


def _prepare_ldm(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from safetensors.torch import save_file

    from diffguard.convert.ldm import load_ldm

    cfg = ldm_config_from_yaml(_read_yaml(paths["config"]), paths["config"])
    parts = load_ldm(
        paths["model"], cfg["unet_config"], cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"]
    )
    n_rows = parts.class_embedding.num_embeddings
    if cfg["n_classes"] is not None and int(cfg["n_classes"]) != n_rows:
        raise BackendError(
            f"{paths['config']}: cond_stage_config n_classes={cfg['n_classes']} but "
            f"{paths['model']} holds {n_rows} class embeddings"
        )
    # The checkpoint's scale_factor buffer wins; the yaml's value applies when it has none.
    scale = parts.scale_factor if parts.scale_factor != 1.0 else cfg["scale_factor"]
    parts.unet.save_pretrained(weights / "unet", safe_serialization=True)
    parts.vq.save_pretrained(weights / "vq", safe_serialization=True)
    save_file(
        {"weight": parts.class_embedding.weight.detach().contiguous()},
        str(weights / "class_embedding.safetensors"),
    )
    ddconfig = cfg["ddconfig"]
    return {
        "conditional": True,
        "null_label": parts.null_class,
        "channels": int(ddconfig["in_channels"]),
        "sample_size": int(ddconfig.get("resolution", 256)),
        "latent_channels": int(cfg["unet_config"]["in_channels"]),
        "scale_factor": float(scale),
        "options": dict(options),
        "schedule": cfg["schedule"],
    }


# ------------------------------------------------------------------------------ loading


def read_backend_info(model_dir: str | Path) -> dict[str, Any]:
    """``backend.json`` of a prepared model, or the implied info of a trained one."""
    model_dir = Path(model_dir)
    path = model_dir / BACKEND_FILE
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("source") not in SOURCES:
            raise BackendError(f"{path}: unknown source {info.get('source')!r}")
        return info
    if (model_dir / WEIGHTS_DIR / "config.json").is_file():
        return {"source": "train"}
    raise FileNotFoundError(
        f"{model_dir}: neither {BACKEND_FILE} (converted model) nor "
        f"{WEIGHTS_DIR}/config.json (trained model) found"
    )


def _load_unet2d(directory: Path) -> nn.Module:
    from diffusers import UNet2DModel

    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"UNet config not found: {directory / 'config.json'}")
    # low_cpu_mem_usage=False: the default wants `accelerate`; safetensors only, never pickles.
    return UNet2DModel.from_pretrained(
        str(directory), use_safetensors=True, low_cpu_mem_usage=False
    ).eval()


def load_backend(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    precision: str | torch.dtype = "float32",
    force_dtype: bool = False,
    where: str = "precision",
) -> DiffusionBackend:
    """Load a prepared (or trained) diffusion model as a backend in eval mode.

    Args:
        model_dir: directory written by :func:`prepare_diffusion_model` or by training.
        device: where to put the model.
        precision: one of :data:`diffguard.precision.PRECISIONS` (``released``: the released
            code's setting for this model's source) or a torch dtype; honoured on GPU, float32
            on CPU unless ``force_dtype`` (see :func:`diffguard.precision.resolve_precision`).
            The precision used is logged.
        where: the config key the precision came from, for errors and the CPU warning.
    """
    from diffguard.precision import resolve_precision

    model_dir = Path(model_dir)
    device = torch.device(device)
    info = read_backend_info(model_dir)
    source = info["source"]
    run_precision = resolve_precision(precision, source, device, force_dtype, where)
    weights = model_dir / WEIGHTS_DIR
    backend: DiffusionBackend
    if source == "ldm":
        backend = _load_latent(weights, info)
    else:
        unet = _load_unet2d(weights)
        config = unet.config
        if source == "train":
            from diffguard.training import DIFFUSION_INFO_FILE

            info_path = weights / DIFFUSION_INFO_FILE
            if info_path.is_file():
                unet.diffguard_info = json.loads(info_path.read_text(encoding="utf-8"))
                trained = unet.diffguard_info
                info = {
                    **info,
                    "schedule": {
                        "beta_schedule": trained["beta_schedule"],
                        "beta_start": trained["beta_start"],
                        "beta_end": trained["beta_end"],
                        "num_train_steps": trained["num_train_timesteps"],
                    },
                }
            n_embeds = config.get("num_class_embeds")
            null_label = None if n_embeds is None else int(n_embeds) - 1
            channels = int(config.in_channels)
        else:
            null_label = info.get("null_label")
            channels = int(info["channels"])
            if source == "adm" and info.get("use_released_attention", True):
                from diffguard.convert.adm import use_released_attention

                use_released_attention(unet)
        backend = PixelBackend(
            unet=unet.requires_grad_(False),
            source=source,
            channels=channels,
            sample_size=int(config.sample_size),
            null_label=null_label,
            info=info,
        )
    _to(backend, device, run_precision)
    log.info(
        "loaded %s diffusion model from %s: %s, %s, sample size %d, %s",
        source,
        model_dir,
        "conditional" if backend.conditional else "unconditional",
        run_precision,
        backend.sample_size,
        device,
    )
    return backend


def _load_latent(weights: Path, info: Mapping[str, Any]) -> LatentBackend:
    from diffusers import UNet2DConditionModel, VQModel
    from safetensors.torch import load_file

    from diffguard.convert.ldm import LdmParts

    unet = UNet2DConditionModel.from_pretrained(
        str(weights / "unet"), use_safetensors=True, low_cpu_mem_usage=False
    )
    vq = VQModel.from_pretrained(str(weights / "vq"), use_safetensors=True, low_cpu_mem_usage=False)
    table = load_file(str(weights / "class_embedding.safetensors"))["weight"]
    embedding = nn.Embedding(*table.shape)
    embedding.load_state_dict({"weight": table}, strict=True)
    for module in (unet, vq, embedding):
        module.eval().requires_grad_(False)
    parts = LdmParts(
        unet=unet, vq=vq, class_embedding=embedding, scale_factor=float(info["scale_factor"])
    )
    return LatentBackend(
        parts=parts,
        channels=int(info["channels"]),
        sample_size=int(info["sample_size"]),
        info=dict(info),
    )


def _to(backend: DiffusionBackend, device: torch.device, precision: str) -> None:
    """Move ``backend`` to ``device`` in ``precision`` (a resolved, non-``released`` name)."""
    from diffguard.precision import FULL_CAST, apply_released_mixed_precision

    if not isinstance(backend, LatentBackend | PixelBackend):
        return
    if precision == "mixed_fp16":
        if not isinstance(backend, PixelBackend):
            raise BackendError(f"mixed_fp16 needs a pixel-space UNet, not {backend.source}")
        backend.to(device)
        apply_released_mixed_precision(backend.unet)
    else:
        backend.to(device, FULL_CAST[precision])


def check_schedule(backend: DiffusionBackend, settings: Any, where: str) -> None:
    """Raise when a method's noise schedule is not the one the model was trained with.

    ``settings`` is a GdmSettings/CfgSettings (``beta_schedule``, ``beta_start``, ``beta_end``,
    ``num_train_steps``); ``where`` names the config entry (e.g. ``experiments.x.cfg``). A
    model without a recorded schedule is accepted with a warning.
    """
    model = getattr(backend, "info", {}).get("schedule")
    if not model:
        log.warning("%s: the model records no noise schedule; not checked", where)
        return
    wrong = []
    for key in ("beta_schedule", "beta_start", "beta_end", "num_train_steps"):
        want, got = model.get(key), getattr(settings, key)
        same = got == want if isinstance(want, str) else math.isclose(got, want, rel_tol=1e-6)
        if want is not None and not same:
            wrong.append(f"{where}.{key} = {got!r} but the {backend.source} model uses {want!r}")
    if wrong:
        raise BackendError("noise schedule mismatch: " + "; ".join(wrong))


# ------------------------------------------------------------------------------ classifiers


def prepare_classifier(spec: Mapping[str, Any], checkpoint: Path | None, out_dir: Path) -> None:
    """Write ``out_dir/weights/model.safetensors`` + ``spec.json`` from a downloaded checkpoint.

    The same files as :func:`diffguard.training.train_classifier` writes, so prediction caching
    and reconstruction load a downloaded classifier exactly like a trained one.

    Args:
        spec: classifier spec (``arch`` resnet50_tv / resnet18_32x32 / small_cnn, ``num_classes``,
            optional ``input_size`` and normaliser ``mean``/``std``); ``weights`` is ignored.
        checkpoint: the original file (torchvision ``.pth``, OpenOOD ``.ckpt`` with or without a
            ``module.``/``net.`` prefix, or a small_cnn state dict); None only for small_cnn
            (random initialisation is refused for the pretrained architectures).
        out_dir: the classifier directory; ``weights/`` is replaced atomically.
    """
    from diffguard.classifiers import build_classifier
    from diffguard.training import save_model

    spec = {k: v for k, v in spec.items() if k not in ("weights", "train")}
    arch = spec.get("arch")
    if checkpoint is None and arch != "small_cnn":
        raise BackendError(f"classifier arch {arch!r} needs a checkpoint (got none)")
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"classifier checkpoint not found: {checkpoint}")
    model = build_classifier({**spec, "weights": None if checkpoint is None else str(checkpoint)})
    model.spec = dict(spec)  # type: ignore[assignment]
    if checkpoint is not None:
        model.spec["source_sha256"] = _sha256(checkpoint)  # type: ignore[index]
        model.spec["source_file"] = checkpoint.name  # type: ignore[index]
    save_model(model, Path(out_dir) / WEIGHTS_DIR)
    log.info("prepared classifier %s from %s in %s", arch, checkpoint, out_dir)
