"""Fig. 2: a noise-aware classifier against the protected classifier over diffusion timesteps.

The released scripts (``scripts_cls/compare_classifier.py``, ``compare_classifier_noisy.py`` and
``compare_classifier_normal.py``) load ID images with Resize(256) + CenterCrop(256) in [-1, 1],
noise them with ``q_sample`` of the ``ddim100`` respaced schedule at respaced indices
0, 9, 19, ..., 99 (index 0: the clean image) and record, per image and index:

- the noisy classifier (guided-diffusion's ``256x256_classifier.pt``) on ``x_t``, called with
  the *respaced index* as its timestep (the released script passes ``ts`` straight to the
  classifier, without the respacing's timestep map; ``classifier_timestep: original`` gives it
  the original timestep instead);
- the protected classifier on ``x_t`` after an optional centre crop (a script argument);
- the protected classifier on ``x̂0(x_t)``, the clipped clean-image estimate of the diffusion
  model (``p_mean_variance(..., clip_denoised=True)``); index 0 uses the input itself.

Panel A is the agreement of the noisy and the protected classifier at index 0, panel B the
top-1 accuracy of each curve against the original timestep. The released scripts draw fresh
unseeded noise per batch; here each image's noise comes from a generator seeded by the
figure's seed and the image id, so results do not depend on batching.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF

from diffguard import io
from diffguard.data import read_imglist, subsample
from diffguard.schedules import RespacedSchedule, gdm_schedule
from diffguard.settings import (
    FIGURE_A,
    FIGURE_B,
    Fig2Settings,
    check_fig2_config,  # noqa: F401  (re-exported; torch-free to parse)
)

log = logging.getLogger(__name__)

CURVES: dict[str, str] = {
    # predictions column -> legend label
    "pred_noisy": "noisy classifier on $x_t$",
    "pred_xt": "classifier on $x_t$",
    "pred_x0": r"classifier on $\hat{x}_0(x_t)$",
}
AGREEMENT = ("both correct", "both wrong, same prediction", "predictions differ")


def classifier_timesteps(schedule: RespacedSchedule, indices: Sequence[int], convention: str):
    """Timesteps the noisy classifier is called with for each respaced index."""
    if convention == "respaced_index":
        return np.asarray(indices, dtype=np.int64)
    return schedule.timesteps[np.asarray(indices, dtype=np.int64)]


def image_noise(image_id: str, seed: int, count: int, shape: Sequence[int]) -> torch.Tensor:
    """``count`` standard-normal draws of ``shape`` for one image (seeded by seed and id)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn((count, *shape), generator=gen)


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, schedule: RespacedSchedule, index: int
) -> torch.Tensor:
    """guided-diffusion's ``q_sample`` at a respaced index (float64 coefficients cast to fp32)."""
    ac = schedule.alphas_cumprod[index]
    a = torch.tensor(np.sqrt(ac), dtype=torch.float32, device=x0.device)
    b = torch.tensor(np.sqrt(1.0 - ac), dtype=torch.float32, device=x0.device)
    return a * x0 + b * noise


def predict_x0(
    eps: torch.Tensor, x_t: torch.Tensor, schedule: RespacedSchedule, index: int
) -> torch.Tensor:
    """Clipped ``x̂0`` from epsilon (``p_mean_variance`` with ``clip_denoised=True``)."""
    idx = torch.full((x_t.shape[0],), index, dtype=torch.long, device=x_t.device)
    return schedule.predict_x0(x_t, eps, idx).clamp(-1, 1)


def _crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    return x if size is None or size == x.shape[-1] else TF.center_crop(x, [size, size])


@torch.no_grad()
def predict_over_timesteps(
    images: torch.Tensor,
    image_ids: Sequence[str],
    labels: Sequence[int],
    settings: Fig2Settings,
    schedule: RespacedSchedule,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noisy_classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Per-image predictions of every curve at every configured index (one batch of images).

    Args:
        images: ``N x C x S x S`` in [-1, 1] on the models' device.
        image_ids, labels: Of the same images.
        settings: The figure's settings.
        schedule: The diffusion model's respaced schedule (``settings.respacing``).
        classifier: The protected classifier (input in [0, 1]) -> logits.
        eps_model: ``eps(x_t, original_timesteps)`` of the diffusion model.
        noisy_classifier: ``(x_t in [-1, 1], timesteps) -> logits``, or None.

    Returns:
        Long frame: ``image_id, label, index, timestep`` and a ``pred_*`` column per curve.
    """
    n = images.shape[0]
    top = max(settings.indices)
    if top >= schedule.num_steps:
        raise ValueError(
            f"figures.fig2.indices: {top} is out of range for {settings.respacing} "
            f"({schedule.num_steps} steps)"
        )
    noise = torch.stack(
        [image_noise(i, settings.seed, len(settings.indices), images.shape[1:]) for i in image_ids],
        dim=1,
    ).to(images.device)
    cls_t = classifier_timesteps(schedule, settings.indices, settings.classifier_timestep)
    frames = []
    for k, index in enumerate(settings.indices):
        timestep = int(schedule.timesteps[index])
        # the released scripts skip the noise at index 0 (t == 0): the clean image
        x_t = images if index == 0 else q_sample(images, noise[k], schedule, index)
        row: dict[str, Any] = {
            "image_id": list(image_ids),
            "label": list(labels),
            "index": index,
            "timestep": timestep,
        }
        if noisy_classifier is not None:
            ts = torch.full((n,), int(cls_t[k]), dtype=torch.long, device=images.device)
            row["pred_noisy"] = noisy_classifier(x_t, ts).argmax(-1).cpu().numpy()
        x01 = (_crop(x_t, settings.crop_size) + 1) / 2
        row["pred_xt"] = classifier(x01).argmax(-1).cpu().numpy()
        if index == 0:
            x0_hat = images
        else:
            t = torch.full((n,), timestep, dtype=torch.long, device=images.device)
            x0_hat = predict_x0(eps_model(x_t, t).float(), x_t, schedule, index)
        x0_01 = (_crop(x0_hat, settings.x0_crop_size) + 1) / 2
        row["pred_x0"] = classifier(x0_01).argmax(-1).cpu().numpy()
        frames.append(pd.DataFrame(row))
    return pd.concat(frames, ignore_index=True)


def accuracy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Top-1 accuracy (%) per index and curve: ``index, timestep, curve, label, accuracy, n``."""
    curves = [c for c in CURVES if c in predictions]
    if not curves or predictions.empty:
        raise ValueError("Fig. 2 predictions: no prediction columns or no rows")
    rows = []
    for (index, timestep), group in predictions.groupby(["index", "timestep"], sort=True):
        for curve in curves:
            correct = (group[curve] == group["label"]).to_numpy()
            rows.append(
                {
                    "index": int(index),
                    "timestep": int(timestep),
                    "curve": curve,
                    "label": CURVES[curve],
                    "accuracy": 100.0 * float(correct.mean()),
                    "n": len(group),
                }
            )
    return pd.DataFrame(rows)


def agreement_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Panel A: fractions (%) of the three agreement cases at index 0 (noisy vs protected).

    The cases partition the images: both correct; both wrong with the same prediction; the
    two predictions differ (as ``show_data`` of the released ``compare_classifier.py``).
    """
    if "pred_noisy" not in predictions:
        raise ValueError("Fig. 2A needs the noisy classifier's predictions (pred_noisy)")
    clean = predictions[predictions["index"] == 0]
    if clean.empty:
        raise ValueError("Fig. 2A needs predictions at index 0")
    noisy, normal, label = (clean[c].to_numpy() for c in ("pred_noisy", "pred_xt", "label"))
    both_correct = (noisy == label) & (normal == label)
    both_wrong_same = (noisy != label) & (normal != label) & (noisy == normal)
    differ = noisy != normal
    counts = [int(both_correct.sum()), int(both_wrong_same.sum()), int(differ.sum())]
    if sum(counts) != len(clean):
        raise AssertionError("Fig. 2A cases do not partition the images")
    return pd.DataFrame(
        {
            "case": list(AGREEMENT),
            "count": counts,
            "percent": [100.0 * c / len(clean) for c in counts],
        }
    )


def plot_accuracy(accuracy: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Fig. 2B: top-1 accuracy against the original timestep, one line per curve."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from diffguard.plotting import _theme, save_figure

    _theme()
    fig, ax = plt.subplots(figsize=(4.2, 2.9))
    sns.lineplot(
        data=accuracy,
        x="timestep",
        y="accuracy",
        hue="label",
        hue_order=[CURVES[c] for c in CURVES if c in set(accuracy["curve"])],
        style="label",
        markers=True,
        dashes=False,
        ax=ax,
    )
    ax.set_xlabel("diffusion timestep $t$")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(title=None, fontsize=7, loc="best")
    n = int(accuracy["n"].iloc[0])
    ax.set_title(f"(B) accuracy over timesteps, {n} ID images", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def plot_agreement(agreement: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Fig. 2A: one stacked bar of the three agreement cases (percent of the images)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from diffguard.plotting import _theme, save_figure

    _theme()
    fig, ax = plt.subplots(figsize=(2.6, 2.9))
    bottom = 0.0
    for (_, row), colour in zip(agreement.iterrows(), sns.color_palette(n_colors=3), strict=True):
        ax.bar(
            ["ID"], [row["percent"]], bottom=[bottom], width=0.5, color=colour, label=row["case"]
        )
        if row["percent"] >= 3:  # label segments tall enough to hold their number
            ax.text(
                0, bottom + row["percent"] / 2, f"{row['percent']:.1f}%", ha="center", fontsize=7
            )
        bottom += row["percent"]
    ax.set_ylim(0, 100)
    ax.set_ylabel("images (%)")
    ax.set_title("(A) noisy vs. protected classifier, $t=0$", fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ------------------------------------------------------------------------------ rule stages


def compute_predictions(
    *,
    imglist: str | Path,
    benchmark_json: str | Path,
    classifier_weights: str | Path,
    model_dir: str | Path,
    settings: Fig2Settings,
    channels: int,
    out: str | Path,
    noisy_checkpoint: str | Path | None = None,
    device_name: str = "cpu",
    dtype: str | None = None,
) -> pd.DataFrame:
    """Rule fig2_predictions: per-image predictions of every curve, written as CSV."""
    from diffguard.method_api import unconditional_eps
    from diffguard.runtime import (
        image_root,
        load_diffusion_model,
        load_records_images,
        load_trained_classifier,
        resolve_device,
    )

    device = resolve_device(device_name)
    available = read_imglist(imglist)
    if settings.images is not None and settings.images > len(available):
        raise ValueError(
            f"figures.fig2.images = {settings.images} but {imglist} holds only "
            f"{len(available)} images"
        )
    records = subsample(available, settings.images, settings.seed)
    if not records:
        raise ValueError(f"{imglist}: no images for Fig. 2")
    classifier = load_trained_classifier(classifier_weights, device)
    # the top-level dtype fallback, else the released precision of the model's source
    backend = load_diffusion_model(model_dir, device, dtype or "released", "dtype")
    schedule = _model_schedule(backend, settings, model_dir)
    noisy = _noisy_classifier(settings, noisy_checkpoint, device)
    root = image_root(benchmark_json)
    pre = max(settings.resize_size or settings.image_size, settings.image_size)
    log.info(
        "Fig. 2: %d images of %s, indices %s of %s (timesteps %s), curves %s, device %s",
        len(records),
        imglist,
        list(settings.indices),
        settings.respacing,
        schedule.timesteps[list(settings.indices)].tolist(),
        settings.curves,
        device,
    )
    eps_model = unconditional_eps(backend)  # a conditional model's unconditional branch
    frames = []
    for start in range(0, len(records), settings.batch_size):
        chunk = records[start : start + settings.batch_size]
        x = load_records_images(chunk, root, settings.image_size, channels, pre).to(device) * 2 - 1
        ids, labels = [r.image_id for r in chunk], [r.label for r in chunk]
        frames.append(
            predict_over_timesteps(x, ids, labels, settings, schedule, classifier, eps_model, noisy)
        )
        log.info("%d/%d images", min(start + settings.batch_size, len(records)), len(records))
    predictions = pd.concat(frames, ignore_index=True).sort_values(
        ["index", "image_id"], kind="stable", ignore_index=True
    )
    io.write_csv(out, predictions)
    return predictions


def _model_schedule(
    backend: Any, settings: Fig2Settings, model_dir: str | Path
) -> RespacedSchedule:
    """The pixel-space model's respaced schedule (``settings.respacing``) at its sample size."""
    if backend.latent:
        raise ValueError(
            f"figures.fig2.model: x̂0 needs a pixel-space diffusion model, got {backend.source}"
        )
    if backend.sample_size != settings.image_size:
        raise ValueError(
            f"figures.fig2.image_size = {settings.image_size} but the diffusion model in "
            f"{model_dir} works at {backend.sample_size} px (the released scripts use 256 for both)"
        )
    sched_info = backend.info.get("schedule") or {}
    if not sched_info:
        log.warning("%s records no noise schedule: assuming the ADM linear schedule", model_dir)
    return gdm_schedule(
        settings.respacing,
        int(sched_info.get("num_train_steps", 1000)),
        sched_info.get("beta_schedule", "linear"),
        float(sched_info.get("beta_start", 1e-4)),
        float(sched_info.get("beta_end", 0.02)),
    )


def _noisy_classifier(
    settings: Fig2Settings, checkpoint: str | Path | None, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """guided-diffusion's noise-aware classifier (``figures.fig2.noisy_classifier``), or None."""
    if settings.noisy_classifier is None:
        return None
    if checkpoint is None:
        raise ValueError("figures.fig2.noisy_classifier is set but no checkpoint was given")
    from diffguard.convert.adm_classifier import load_adm_classifier

    noisy = load_adm_classifier(
        checkpoint, dict(settings.noisy_classifier.get("options", {})), device
    )
    if noisy.image_size != settings.image_size:
        raise ValueError(
            f"figures.fig2.noisy_classifier.options.image_size = {noisy.image_size} but "
            f"figures.fig2.image_size = {settings.image_size}"
        )
    return noisy


def plot_figure2(
    predictions_csv: str | Path,
    accuracy_csv: str | Path,
    figure_dir: str | Path,
    agreement_csv: str | Path | None = None,
) -> None:
    """Rule plot_fig2: accuracy (and agreement) tables and Figs. 2B (and 2A)."""
    predictions = pd.read_csv(predictions_csv, dtype={"image_id": str})
    accuracy = accuracy_table(predictions)
    io.write_csv(accuracy_csv, accuracy)
    plot_accuracy(accuracy, Path(figure_dir) / FIGURE_B)
    for curve, group in accuracy.groupby("curve", sort=False):
        log.info("%s: %s", curve, ", ".join(f"{a:.1f}" for a in group["accuracy"]))
    if agreement_csv is not None:
        agreement = agreement_table(predictions)
        io.write_csv(agreement_csv, agreement)
        plot_agreement(agreement, Path(figure_dir) / FIGURE_A)
        log.info("agreement at t=0 (%%): %s", agreement.set_index("case")["percent"].to_dict())
