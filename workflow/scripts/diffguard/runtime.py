"""Runtime helpers shared by the workflow stages: logging, devices, images, model loading."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffguard.config import (  # noqa: F401  (crop_sizes re-exported; torch-free for parsing)
    crop_sizes,
    experiment_image_sizes,
)
from diffguard.data import (  # noqa: F401  (image loading re-exported for the stages)
    ImageRecord,
    image_root,
    load_records_images,
)
from diffguard.logs import setup_logging  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from diffguard.backends import DiffusionBackend
    from diffguard.method_api import MethodJob

log = logging.getLogger("diffguard")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def load_truncated_images(benchmark: Mapping[str, Any]) -> bool:
    """``benchmark.load_truncated_images`` (default true: OpenOOD's and DiffGuard's loaders)."""
    return bool(benchmark.get("load_truncated_images", True))


def load_experiment_images(
    records: Sequence[ImageRecord],
    root: Path,
    experiment: Mapping[str, Any],
    benchmark: Mapping[str, Any],
    classifier_spec: Mapping[str, Any] | None = None,
    truncated: list[str] | None = None,
) -> torch.Tensor:
    """Images of ``records`` in [0, 1] at :func:`experiment_image_sizes` (N x C x H x W).

    Truncated files follow ``benchmark.load_truncated_images``; their paths go to ``truncated``.
    """
    size, pre_size = experiment_image_sizes(experiment, benchmark, classifier_spec)
    return load_records_images(
        records,
        root,
        size,
        int(benchmark["channels"]),
        pre_size,
        load_truncated=load_truncated_images(benchmark),
        truncated=truncated,
    )


def load_trained_classifier(weights: str | Path, device: torch.device) -> torch.nn.Module:
    """A classifier directory's ``model.safetensors`` + ``spec.json`` (trained or prepared)."""
    from diffguard.model_io import load_classifier

    return load_classifier(Path(weights).parent).to(device).eval()


def load_diffusion_model(
    model_dir: str | Path,
    device: torch.device,
    precision: str | torch.dtype = "float32",
    where: str = "precision",
) -> DiffusionBackend:
    """The diffusion model of ``model_dir`` as a backend (trained or converted; see backends).

    ``precision``: a :data:`diffguard.precision.PRECISIONS` name (``released`` = the released
    code's setting for the model's source) or a dtype; ``where`` names its config key.
    """
    from diffguard.backends import load_backend

    return load_backend(model_dir, device, precision, where=where)


@dataclass(frozen=True)
class ExperimentSetup:
    """What a job resolves from one experiment, once: method, settings, model, image sizes."""

    name: str
    method: str
    settings: Any  # the registered method's settings dataclass
    model: DiffusionBackend
    image_size: int
    pre_size: int | None
    reference: str  # score_reference (:data:`diffguard.method_api.SCORE_REFERENCES`)

    @property
    def where(self) -> str:
        return f"experiments.{self.name}"

    def start_job(
        self, classifier: Any, torch_hub_dir: str | None = None, device: Any = None
    ) -> MethodJob:
        """The method's job on this experiment's model (:func:`diffguard.methods.start_job`)."""
        from diffguard.methods import start_job

        return start_job(
            self.method,
            self.model,
            classifier,
            self.settings,
            where=self.where,
            reference=self.reference,
            torch_hub_dir=torch_hub_dir,
            device=device,
        )

    def load_images(
        self,
        records: Sequence[ImageRecord],
        root: Path,
        benchmark: Mapping[str, Any],
        truncated: list[str] | None = None,
    ) -> torch.Tensor:
        """Images of ``records`` in [0, 1] at the experiment's sizes (N x C x H x W)."""
        return load_records_images(
            records,
            root,
            self.image_size,
            int(benchmark["channels"]),
            self.pre_size,
            load_truncated=load_truncated_images(benchmark),
            truncated=truncated,
        )


def open_experiment(
    experiment: Mapping[str, Any],
    benchmark: Mapping[str, Any],
    model_dir: str | Path,
    device: torch.device,
    *,
    classifier_spec: Mapping[str, Any] | None = None,
    seed: int | None = None,
    dtype: str | None = None,
    precision: str | None = None,
) -> ExperimentSetup:
    """Resolve an experiment for a job in one pass: its method's settings (``seed`` drives the
    GDM crops), its diffusion model, its image sizes; the model checked against the method
    and the method's noise schedule.

    The model runs in ``precision`` when given, else the experiment's ``precision``, else the
    top-level ``dtype`` fallback, else ``released`` (:func:`diffguard.precision.select_precision`).
    """
    from diffguard.backends import check_schedule, load_backend
    from diffguard.config import method_settings
    from diffguard.methods import get_method
    from diffguard.precision import select_precision

    name = experiment["name"]
    where = f"experiments.{name}"
    size, pre_size = experiment_image_sizes(experiment, benchmark, classifier_spec)
    settings = method_settings(dict(experiment), seed)
    method = get_method(experiment["method"], f"{where}.method")
    precision = precision or select_precision(experiment.get("precision"), dtype)
    model = load_backend(model_dir, device, precision, where=f"{where}.precision")
    method.module().check_model(model, where)
    check_schedule(model, settings, f"{where}.{method.name}")
    return ExperimentSetup(
        name=name,
        method=method.name,
        settings=settings,
        model=model,
        image_size=size,
        pre_size=pre_size,
        reference=experiment.get("score_reference", "auto"),
    )
