"""The batch interface of a diffusion method: what a job hands it and what it gives back.

Every method module (:mod:`diffguard.gdm`, :mod:`diffguard.cfg`, any later one registered in
:mod:`diffguard.methods`) exposes ``run_batch(job, batch, counter) -> MethodOutput``: it runs at
the model's sample size, owns its masking and its unguided twins, and returns the
reconstructions at the batch's size with the score reference already chosen
(:func:`finish`). Reconstruction jobs, the speed benchmark and the traces all call it.

The registry imports this module while the workflow is parsed: torch only inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SCORE_REFERENCES = ("auto", "uncond_recon", "input")
"""What a reconstruction is scored against: ``auto`` is the unguided twin when the method
regenerates one (``uncond_aux``) and the input otherwise."""


@dataclass
class MethodJob:
    """What stays fixed over a job's batches: one method, its settings, one model."""

    method: str
    model: Any  # a diffguard.backends.DiffusionBackend, or anything with its interface
    classifier: Any
    settings: Any
    entry: Callable[..., MethodOutput]
    where: str = "method"  # the config key errors name, e.g. experiments.gdm_main
    reference: str = "auto"
    extras: dict[str, Any] = field(default_factory=dict)  # what the method's prepare built

    def run(self, batch: MethodBatch, counter: Any = None) -> MethodOutput:
        """The method's entry point on one batch (``counter``: a gdm.CallCounter or None)."""
        return self.entry(self, batch, counter)


@dataclass
class MethodBatch:
    """One batch of images at the classifier's input size, on the device."""

    x: torch.Tensor  # N x C x H x W in [-1, 1]
    labels: torch.Tensor  # guidance labels
    x01: torch.Tensor | None = None  # the same images in [0, 1], as loaded (Grad-CAM input)

    def images01(self) -> torch.Tensor:
        """The images in [0, 1]: as loaded, else ``(x + 1) / 2``."""
        return self.x01 if self.x01 is not None else (self.x + 1) / 2


@dataclass
class MethodOutput:
    """A method's batch result; images on the CPU at the batch's size, in [-1, 1]."""

    recon: torch.Tensor
    recon_uncond: torch.Tensor | None  # the unguided twin (``uncond_aux``)
    reference: torch.Tensor  # what the scores compare ``recon`` with
    rev_t: torch.Tensor  # per image: the inversion step it stopped at
    start_index: torch.Tensor  # per image: the first respaced index of regeneration
    psnr_trace: torch.Tensor  # N x steps (N x 0 where the method records none)


def to_model_size(job: MethodJob, x: torch.Tensor) -> torch.Tensor:
    """``x`` resized to the model's ``sample_size`` (None: the model takes any size)."""
    from diffguard.backends import resize_images

    size = job.model.sample_size
    return x if size is None else resize_images(x, size)


def score_reference(
    kind: str, x: torch.Tensor, twin: torch.Tensor | None, where: str
) -> torch.Tensor:
    """The image the scores compare a reconstruction with (:data:`SCORE_REFERENCES`)."""
    if kind == "auto":
        kind = "uncond_recon" if twin is not None else "input"
    if kind == "uncond_recon":
        if twin is None:
            raise ValueError(f"{where}: score_reference uncond_recon needs uncond_aux")
        return twin
    return x.cpu()


def finish(
    job: MethodJob,
    batch: MethodBatch,
    recon: torch.Tensor,
    recon_uncond: torch.Tensor | None,
    rev_t: torch.Tensor,
    start_index: torch.Tensor,
    psnr_trace: torch.Tensor,
) -> MethodOutput:
    """Back to the batch's size (scores compare images at the classifier's size), reference."""
    from diffguard.backends import resize_images

    size = batch.x.shape[-1]
    recon = resize_images(recon, size)
    if recon_uncond is not None:
        recon_uncond = resize_images(recon_uncond, size)
    return MethodOutput(
        recon=recon,
        recon_uncond=recon_uncond,
        reference=score_reference(job.reference, batch.x, recon_uncond, job.where),
        rev_t=rev_t,
        start_index=start_index,
        psnr_trace=psnr_trace,
    )


def unconditional_eps(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``eps(x, t)`` of a model without guidance (a conditional model's null label)."""
    import torch

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if model.conditional:
            null = torch.full((x.shape[0],), model.null_label, dtype=torch.long)
            return model.eps(x, t, null.to(x.device))
        return model.eps(x, t)

    return eps
