"""CPU training of the embedded benchmark's small models: a classifier and DDPM UNets.

Everything is seeded: parameter initialisation runs under ``torch.manual_seed(seed)`` inside
``torch.random.fork_rng`` (so the caller's global RNG state is left untouched) and batches, noise
and timesteps come from a dedicated ``torch.Generator``. On the same machine and thread count the
same seed gives the same weights.

The trained models are saved and loaded by :mod:`diffguard.model_io`.
"""

from __future__ import annotations

import copy
import csv
import functools
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffguard.classifiers import build_classifier

log = logging.getLogger(__name__)


class _CsvLog:
    """Rows of a CSV file (header first), written to a hidden temporary sibling.

    Each row is flushed so progress is visible; :meth:`commit` renames the file into place, so
    a killed training job never leaves a truncated log under the final name.
    """

    def __init__(self, path: str | Path | None, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.handle = None
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            self.handle = self.tmp.open("w", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.handle, fieldnames=self.fields)
            self.writer.writeheader()

    def row(self, **values: Any) -> None:
        if self.handle is not None:
            self.writer.writerow(values)
            self.handle.flush()

    def commit(self) -> None:
        """Close the temporary file and move it into place."""
        if self.handle is not None and self.path is not None:
            self.handle.close()
            self.handle = None
            os.replace(self.tmp, self.path)

    def close(self) -> None:
        """Close and drop the temporary file unless :meth:`commit` moved it into place."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self.tmp.unlink(missing_ok=True)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for the block and restore the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_images(images: torch.Tensor, low: float, high: float, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name} must be N x C x H x W, got shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty")
    lo, hi = float(images.min()), float(images.max())
    if lo < low - 1e-6 or hi > high + 1e-6:
        raise ValueError(f"{name} must lie in [{low}, {high}], got [{lo:.3g}, {hi:.3g}]")


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random affine jitter (±10°, scale 0.9-1.1, shift ±1.5 px on 16 px), zero fill."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1.5 * 2 / x.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _checked_labels(
    train_images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Images in [0, 1] and ``N`` long labels in ``[0, num_classes)``; else a ValueError."""
    _check_images(train_images, 0.0, 1.0, "train_images")
    return _long_labels(labels, train_images.shape[0], num_classes, "spec num_classes")


def _long_labels(labels: torch.Tensor, n: int, num_classes: int, bound: str) -> torch.Tensor:
    """``n`` labels as long, each in ``[0, num_classes)`` (``bound`` says where that comes
    from, for the error)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) ({bound}), "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def _classifier_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    order: torch.Tensor,
    batch_size: int,
    steppers: tuple[torch.optim.Optimizer, Any],
    augment_generator: torch.Generator | None,
) -> tuple[float, int]:
    """One pass over ``data`` = (images, labels) in ``order``; the summed loss and the number
    of correct predictions. ``augment_generator``: jitter each batch with it (None: no jitter)."""
    images, labels = data
    optimizer, scheduler = steppers
    total_loss, correct = 0.0, 0
    for first in range(0, images.shape[0], batch_size):
        idx = order[first : first + batch_size]
        x, y = images[idx], labels[idx]
        if augment_generator is not None:
            x = _augment(x, augment_generator)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    return total_loss, correct


def train_classifier(
    train_images: torch.Tensor,
    labels: torch.Tensor,
    spec: dict[str, Any],
    epochs: int,
    lr: float,
    seed: int,
    log_csv: str | Path | None = None,
    *,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    augment: bool = True,
) -> nn.Module:
    """Train a classifier built from ``spec`` with AdamW and cosine learning-rate decay.

    Args:
        train_images: ``N x C x H x W`` in [0, 1].
        labels: ``N`` class indices in ``[0, spec["num_classes"])``.
        spec: :func:`diffguard.classifiers.build_classifier` spec (no ``weights``).
        epochs: Passes over the data.
        lr: Peak learning rate.
        seed: Seed for initialisation, shuffling and augmentation.
        log_csv: Optional CSV with one row per epoch (epoch, loss, accuracy, lr, elapsed_s).
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay.
        augment: Random small affine jitter of the training images.

    Returns:
        The trained model in eval mode, with ``model.spec`` set.
    """
    labels = _checked_labels(train_images, labels, int(spec.get("num_classes", 0)))
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    with _seeded(seed):
        model = build_classifier(spec)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    csv_log = _CsvLog(log_csv, ["epoch", "loss", "accuracy", "lr"])
    try:
        model.train()
        # Dropout draws its masks from torch's global RNG: seed that too (in a fork, so the
        # caller's state is untouched), else two runs with one seed train different weights.
        with _seeded(seed):
            for epoch in range(1, epochs + 1):
                order = torch.randperm(n, generator=generator)
                total_loss, correct = _classifier_epoch(
                    model,
                    (train_images, labels),
                    order,
                    batch_size,
                    (optimizer, scheduler),
                    generator if augment else None,
                )
                row = {
                    "epoch": epoch,
                    "loss": total_loss / n,
                    "accuracy": correct / n,
                    "lr": scheduler.get_last_lr()[0],
                }
                csv_log.row(**row)
                log.info(
                    "classifier epoch %d: loss %.4f train acc %.4f",
                    epoch,
                    row["loss"],
                    row["accuracy"],
                )
        csv_log.commit()
    finally:
        csv_log.close()
    return model.eval()


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Return the top-1 accuracy of ``model`` (eval mode) on ``images`` in [0, 1]."""
    model.eval()
    correct = 0
    for first in range(0, images.shape[0], batch_size):
        logits = model(images[first : first + batch_size])
        correct += int((logits.argmax(1) == labels[first : first + batch_size]).sum())
    return correct / images.shape[0]


UNET_SHAPE_DEFAULTS: dict[str, Any] = {
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "attention": True,
    "norm_num_groups": 16,
}
"""``diffusion_models.<m>.unet`` defaults: the embedded benchmark's 16x16 UNet."""


def small_unet_kwargs(
    channels: int,
    sample_size: int,
    conditional: bool,
    num_classes: int | None = None,
    unet: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``UNet2DModel`` arguments of a small trained UNet, shaped by ``unet`` (config
    ``diffusion_models.<m>.unet``; defaults :data:`UNET_SHAPE_DEFAULTS`, about 1.6 M parameters).

    One block per entry of ``block_out_channels`` (each halving the resolution but the last),
    ``layers_per_block`` ResNet layers each; with ``attention`` the lowest-resolution block has
    self-attention (head dim 32), without it only diffusers' mid block has (its default head
    dim). With ``conditional`` the model gets ``num_classes + 1`` class embeddings; the last
    row is the null label of classifier-free guidance.
    """
    if conditional and (num_classes is None or num_classes < 2):
        raise ValueError("a conditional UNet needs num_classes >= 2")
    shape = {**UNET_SHAPE_DEFAULTS, **(unet or {})}
    unknown = sorted(set(shape) - set(UNET_SHAPE_DEFAULTS))
    if unknown:
        raise ValueError(f"diffusion_models.<m>.unet: unknown keys {unknown}")
    channels_out = tuple(int(c) for c in shape["block_out_channels"])
    groups = int(shape["norm_num_groups"])
    if not channels_out or any(c % groups for c in channels_out):
        raise ValueError(
            f"diffusion_models.<m>.unet: block_out_channels {channels_out} must be non-empty "
            f"multiples of norm_num_groups {groups}"
        )
    n = len(channels_out)
    attention = bool(shape["attention"])
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    kwargs: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": channels_out,
        "layers_per_block": int(shape["layers_per_block"]),
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
    }
    if attention:
        kwargs["attention_head_dim"] = 32
    kwargs["norm_num_groups"] = groups
    if conditional:
        kwargs["num_class_embeds"] = int(num_classes) + 1  # type: ignore[arg-type]
    return kwargs


class _Ema:
    """Exponential moving average of parameters with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Early on the average would be dominated by the random initialisation.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p, 1.0 - decay)
        for ema_b, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def _diffusion_labels(
    images: torch.Tensor, labels: torch.Tensor | None, unet_kwargs: dict[str, Any]
) -> tuple[torch.Tensor | None, int]:
    """Checked images in [-1, 1] and labels (long) with the number of classes (0 without
    labels); the null label is ``num_class_embeds - 1``."""
    _check_images(images, -1.0, 1.0, "images")
    num_class_embeds = unet_kwargs.get("num_class_embeds")
    if labels is None:
        if num_class_embeds is not None:
            raise ValueError("unet_kwargs sets 'num_class_embeds' but no labels were given")
        return None, 0
    if num_class_embeds is None:
        raise ValueError("labels given but unet_kwargs has no 'num_class_embeds'")
    num_classes = int(num_class_embeds) - 1
    bound = "num_class_embeds - 1 = null label"
    return _long_labels(labels, images.shape[0], num_classes, bound), num_classes


def _warmup_cosine(step: int, *, warmup_steps: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10%."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless index batches of reshuffles of ``range(n)``: a new permutation (from
    ``generator``) first and whenever fewer than ``batch_size`` indices are left."""
    order = torch.randperm(n, generator=generator)
    cursor = 0
    while True:
        if cursor + batch_size > n:
            order = torch.randperm(n, generator=generator)
            cursor = 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def _noised_batch(
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    noise_scheduler: Any,
    generator: torch.Generator,
    dropout: tuple[float, int],
    max_timestep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x_t, the noise to predict, t, class labels) of one batch; ``dropout`` = (probability,
    null label) of replacing a label; t is uniform in [0, ``max_timestep``) (default T).
    Draws noise, then t, then the dropout (this order)."""
    class_dropout, null_label = dropout
    noise = torch.randn(x0.shape, generator=generator)
    high = max_timestep or noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, high, (x0.shape[0],), generator=generator)
    x_t = noise_scheduler.add_noise(x0, noise, t)
    class_labels = None
    if labels is not None:
        class_labels = labels.clone()
        drop = torch.rand(x0.shape[0], generator=generator) < class_dropout
        class_labels[drop] = null_label
    return x_t, noise, t, class_labels


def _clipped_step(
    model: nn.Module, loss: torch.Tensor, steppers: tuple[torch.optim.Optimizer, Any], ema: Any
) -> None:
    """Backpropagate ``loss``, clip the gradient norm to 1, step optimiser, schedule and EMA."""
    optimizer, lr_sched = steppers
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    lr_sched.step()
    if ema is not None:
        ema.update(model)


# long: 17 parameters, each documented (45 lines of signature and docstring); the
# body (validation, set-up, the step loop and the saved schedule) is 75.
def train_diffusion(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    unet_kwargs: dict[str, Any],
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    class_dropout: float = 0.1,
    log_csv: str | Path | None = None,
    *,
    ema_decay: float | None = 0.995,
    warmup_steps: int = 100,
    log_every: int = 50,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_timestep: int | None = None,
) -> Any:
    """Train a DDPM ``UNet2DModel`` (epsilon prediction, MSE) on ``images`` in [-1, 1].

    Args:
        images: ``N x C x H x W`` in [-1, 1].
        labels: ``N`` class indices for a conditional model (``unet_kwargs`` must then set
            ``num_class_embeds = num_classes + 1``), or ``None`` for an unconditional one.
        unet_kwargs: ``UNet2DModel`` arguments, e.g. from :func:`small_unet_kwargs`.
        num_train_timesteps: Diffusion length T.
        beta_schedule: diffusers beta schedule name ("linear" as in DDPM/DDIM).
        steps: Optimiser steps.
        batch_size: Images per step (sampled with replacement-free reshuffles).
        lr: Peak AdamW learning rate (linear warm-up, then cosine decay to 10%).
        seed: Seed for initialisation, batches, timesteps and noise.
        class_dropout: Probability of replacing a label with the null label ``num_classes``
            (classifier-free guidance training, DiffNB's ``cond_ratio = 1 - class_dropout``).
        log_csv: Optional CSV: step, loss (mean over the last ``log_every`` steps), lr.
        ema_decay: EMA decay of the returned weights; ``None`` returns the raw weights.
        warmup_steps: Linear learning-rate warm-up length.
        log_every: Logging interval in steps.
        beta_start: First beta of the schedule.
        beta_end: Last beta of the schedule.
        max_timestep: Train only on timesteps t < max_timestep (None: all T). For a model that
            is only ever inverted part of the way (the embedded default), capacity goes where
            the detector uses it.

    Returns:
        The trained ``UNet2DModel`` in eval mode (EMA weights unless ``ema_decay`` is None), with
        ``model.diffguard_info`` describing the schedule (saved by :func:`save_model`).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    labels, num_classes = _diffusion_labels(images, labels, unet_kwargs)
    if not 0.0 <= class_dropout < 1.0:
        raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if max_timestep is not None and not 1 <= max_timestep <= num_train_timesteps:
        raise ValueError(f"max_timestep must be in 1..{num_train_timesteps}, got {max_timestep}")

    noise_scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
    )
    with _seeded(seed):
        model = UNet2DModel(**unet_kwargs)
    ema = _Ema(model, ema_decay) if ema_decay is not None else None
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_warmup_cosine, warmup_steps=warmup_steps, steps=steps)
    )
    csv_log = _CsvLog(log_csv, ["step", "loss", "lr"])
    batches = _shuffled_batches(images.shape[0], batch_size, generator)
    running, count = 0.0, 0
    start = time.perf_counter()
    model.train()
    try:
        # Anything in the UNet that draws from torch's global RNG (dropout) is seeded too.
        with _seeded(seed):
            for step, idx in zip(range(1, steps + 1), batches, strict=False):
                noisy, target, t, class_labels = _noised_batch(
                    images[idx],
                    None if labels is None else labels[idx],
                    noise_scheduler,
                    generator,
                    (class_dropout, num_classes),
                    max_timestep,
                )
                loss = F.mse_loss(model(noisy, t, class_labels=class_labels).sample, target)
                _clipped_step(model, loss, (optimizer, lr_sched), ema)
                running += loss.item()
                count += 1
                if step % log_every == 0 or step == steps:
                    elapsed = time.perf_counter() - start
                    csv_log.row(step=step, loss=running / count, lr=lr_sched.get_last_lr()[0])
                    log.info(
                        "diffusion step %d/%d: loss %.4f (%.0f s)",
                        step,
                        steps,
                        running / count,
                        elapsed,
                    )
                    running, count = 0.0, 0
        csv_log.commit()
    finally:
        csv_log.close()
    result = ema.shadow if ema is not None else model.eval()
    conditional = labels is not None
    result.diffguard_info = {
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": beta_schedule,
        "beta_start": beta_start,
        "beta_end": beta_end,
        "prediction_type": "epsilon",
        "conditional": conditional,
        "num_classes": num_classes if conditional else None,
        "null_label": num_classes if conditional else None,
        "class_dropout": class_dropout if conditional else 0.0,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "seed": seed,
    }
    if max_timestep is not None:  # only then: models trained on all of T keep their bytes
        result.diffguard_info["max_timestep"] = max_timestep
    return result


@torch.no_grad()
def sample_ddim(
    unet: Any,
    class_labels: torch.Tensor | None,
    num_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    num_samples: int | None = None,
) -> torch.Tensor:
    """Draw DDIM (eta 0) samples in [-1, 1], optionally with classifier-free guidance.

    For a conditional model ``eps = eps_null + guidance_scale * (eps_y - eps_null)``; with
    ``guidance_scale == 1`` only the conditional branch is evaluated. A sanity check of trained
    models, not the DiffGuard sampler.
    """
    from diffusers import DDIMScheduler

    info = getattr(unet, "diffguard_info", {}) or {}
    scheduler = DDIMScheduler(
        num_train_timesteps=info.get("num_train_timesteps", 1000),
        beta_schedule=info.get("beta_schedule", "linear"),
        beta_start=info.get("beta_start", 1e-4),
        beta_end=info.get("beta_end", 0.02),
        clip_sample=True,
    )
    scheduler.set_timesteps(num_steps)
    cfg = unet.config
    count = len(class_labels) if class_labels is not None else num_samples
    if count is None:
        raise ValueError("give class_labels or num_samples")
    shape = shape or (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((count, *shape), generator=generator)
    null = None
    if class_labels is not None and guidance_scale != 1.0:
        null = torch.full_like(class_labels, int(cfg.num_class_embeds) - 1)
    for t in scheduler.timesteps:
        eps = unet(x, t, class_labels=class_labels).sample
        if null is not None:
            eps_null = unet(x, t, class_labels=null).sample
            eps = eps_null + guidance_scale * (eps - eps_null)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)
