"""Diffusion-model and classifier backends: one interface for trained and converted models.

A *backend* is what GDM/CFG reconstruction needs from a diffusion model, whatever its source:

- ``train``: the embedded default's small diffusers ``UNet2DModel`` (trained by the workflow);
- ``adm``: OpenAI guided-diffusion (``256x256_diffusion_uncond.pt``, GDM), converted by
  :mod:`diffguard.convert.adm`; it learns sigma, so the UNet returns 6 channels and only the
  first 3 (epsilon) are used;
- ``diffnb``: DiffNB's class-conditional DDIM UNet for CIFAR-10 (:mod:`diffguard.convert.diffnb`);
- ``ldm``: CompVis ``cin256-v2`` (UNet + VQ autoencoder + class embedder,
  :mod:`diffguard.convert.ldm`), which runs in a latent space.

Conversion happens once per model (:func:`diffguard.preparation.prepare_diffusion_model`, a
workflow rule): the
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
:func:`diffguard.model_io.save_model` and no ``backend.json``; :func:`load_backend` accepts it.
This module is the runtime side (loading, running); the offline conversion is
:mod:`diffguard.preparation`.
"""

from __future__ import annotations

import json
import logging
import math
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


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N x C x H x W images to ``size`` x ``size`` (no-op when already that size).

    Bilinear without antialiasing: what torchvision's ``Resize`` did on tensors in the
    released code's torchvision (0.11), used there for 224 -> 256 and back.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


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


def load_backend(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    precision: str | torch.dtype = "float32",
    force_dtype: bool = False,
    where: str = "precision",
) -> DiffusionBackend:
    """Load a prepared (or trained) diffusion model as a backend in eval mode.

    Args:
        model_dir: directory written by :func:`diffguard.preparation.prepare_diffusion_model`
            or by training.
        device: where to put the model.
        precision: one of :data:`diffguard.precision.PRECISIONS` (``released``: the released
            code's setting for this model's source) or a torch dtype; honoured on GPU, float32
            on CPU unless ``force_dtype`` (see :func:`diffguard.precision.resolve_precision`).
            The precision used is logged.
        where: the config key the precision came from, for errors and the CPU warning.
    """
    from diffguard.model_io import load_unet2d, read_diffusion_info
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
        unet = load_unet2d(weights)
        config = unet.config
        if source == "train":
            trained = read_diffusion_info(weights)
            if trained is not None:
                unet.diffguard_info = trained
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
