"""Typed settings of the config: GDM and CFG method settings, ``figures.fig2``.

Only the standard library is imported here: the workflow resolves and checks these settings
while it is parsed (every ``snakemake`` start, twice per SLURM job), so this module must not
pull in torch. The procedures that use the settings live in :mod:`diffguard.gdm`,
:mod:`diffguard.cfg` and :mod:`diffguard.figure2`, which re-export these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffguard.schedules import CfgSchedule, RespacedSchedule

# ----------------------------------------------------------------------------------------- GDM
EARLY_STOP_METRICS = ("psnr", "dists", "lpips")
"""Early-stop metrics the released tester offers (``psnr`` built in; the others perceptual)."""


@dataclass(frozen=True)
class GdmSettings:
    """Hyperparameters of the GDM procedure; defaults are the released exp6.1 settings."""

    respacing: str = "ddim100"
    num_train_steps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    early_stop_steps: int = 10
    early_stop_metrics: tuple[str, ...] = ("psnr", "dists")
    early_stop_thresholds: tuple[float, ...] = (48.5, 0.38)
    psnr_peak: float = 255.0
    forback_skip_diff: int = 3
    skip_first_steps: int = 0
    classifier_scale: float = 3.0
    no_x0_hat: bool = False
    cutouts_num: int = 8
    cutouts_size: int = 224
    cutouts_seed: int = 100
    uncond_aux: bool = True
    clip_denoised: bool = True
    clip_first_inversion_step: bool = False

    def __post_init__(self) -> None:
        if len(self.early_stop_metrics) != len(self.early_stop_thresholds):
            raise ValueError(
                "early_stop_metrics and early_stop_thresholds must have the same length, got "
                f"{self.early_stop_metrics} and {self.early_stop_thresholds}"
            )
        unknown = [m for m in self.early_stop_metrics if m not in EARLY_STOP_METRICS]
        if unknown:
            raise ValueError(
                f"early_stop_metrics: unknown {unknown}; expected some of {EARLY_STOP_METRICS}"
            )

    def schedule(self) -> RespacedSchedule:
        from diffguard.schedules import gdm_schedule  # torch: only where a job runs the method

        return gdm_schedule(
            self.respacing, self.num_train_steps, self.beta_schedule, self.beta_start, self.beta_end
        )


# ----------------------------------------------------------------------------------------- CFG
INVERSION_VARIANTS = ("next_t", "standard")


@dataclass(frozen=True)
class CfgSettings:
    """Hyperparameters of the CFG procedure; defaults are the released ldm-exp2.25 settings."""

    ddim_steps: int = 25
    num_train_steps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    timestep_offset: int = 1
    first_alpha_prev_one: bool = False
    guidance_scale: float = 10.0
    inversion_variant: str = "next_t"
    use_cam: bool = True
    cam_cut: float = 0.3
    # Also regenerate the inverted latent with the null label and no guidance (the unguided
    # twin, as gdm.uncond_aux); score_reference auto then compares with it. Off in the
    # released LDM runner, which scores against the input.
    uncond_aux: bool = False
    # Our addition (neither the paper nor the released code): invert only the first k DDIM
    # steps of the grid and regenerate the k steps back from there (partial depth, as GDM's
    # early stop at a fixed level), 1..grid_steps(). None: the whole grid (released).
    inversion_steps: int | None = None
    # Latent (LDM) models only: the released code's encode_first_stage returns the unquantised
    # latent, and decode_first_stage snaps to the VQ codebook before decoding.
    encode_quantize: bool = False
    decode_quantize: bool = True

    def __post_init__(self) -> None:
        if self.inversion_variant not in INVERSION_VARIANTS:
            raise ValueError(
                f"inversion_variant {self.inversion_variant!r} not in {INVERSION_VARIANTS}"
            )
        k = self.inversion_steps
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.grid_steps()
        ):
            raise ValueError(
                f"inversion_steps: expected null or an integer in 1..{self.grid_steps()} (the "
                f"steps of the DDIM grid of ddim_steps={self.ddim_steps}), got {k!r}"
            )

    def grid_steps(self) -> int:
        """Steps of the DDIM grid, ``schedule().num_steps`` without numpy: ``ddim_steps``, or
        one more where it does not divide ``num_train_steps`` (CompVis's uniform grid)."""
        stride = max(1, self.num_train_steps // self.ddim_steps)
        grid = range(self.timestep_offset, self.num_train_steps + self.timestep_offset, stride)
        return sum(1 for t in grid if t < self.num_train_steps)

    def schedule(self) -> CfgSchedule:
        from diffguard.schedules import cfg_schedule  # torch: only where a job runs the method

        return cfg_schedule(
            self.ddim_steps,
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            self.num_train_steps,
            self.timestep_offset,
            self.first_alpha_prev_one,
        )


# --------------------------------------------------------------------------------------- Fig. 2
DEFAULT_INDICES = (0, *range(9, 100, 10))
TIMESTEP_CONVENTIONS = ("respaced_index", "original")
FIGURE_A = "noisy_classifier_agreement"
FIGURE_B = "accuracy_over_timesteps"


@dataclass(frozen=True)
class Fig2Settings:
    """``figures.fig2`` of the config (defaults: the released scripts, see the schema)."""

    images: int | None = 1000
    seed: int = 0
    respacing: str = "ddim100"
    indices: tuple[int, ...] = DEFAULT_INDICES
    image_size: int = 256
    resize_size: int | None = None
    crop_size: int | None = None
    x0_crop_size: int | None = None
    classifier_timestep: str = "respaced_index"
    batch_size: int = 32
    noisy_classifier: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = "figures.fig2"
        if self.classifier_timestep not in TIMESTEP_CONVENTIONS:
            raise ValueError(
                f"{where}.classifier_timestep: expected one of {TIMESTEP_CONVENTIONS}, got "
                f"{self.classifier_timestep!r}"
            )
        if not self.indices or len(set(self.indices)) != len(self.indices):
            raise ValueError(f"{where}.indices: expected distinct indices, got {self.indices}")
        for key in ("crop_size", "x0_crop_size"):
            value = getattr(self, key)
            if value is not None and not 1 <= value <= self.image_size:
                raise ValueError(
                    f"{where}.{key}: {value} must lie in [1, image_size={self.image_size}]"
                )
        if self.noisy_classifier is not None and 0 not in self.indices:
            raise ValueError(f"{where}.indices: panel A (the noisy classifier) needs index 0")

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], image_size: int) -> Fig2Settings:
        """Settings from a ``figures.fig2`` mapping; ``image_size`` is the fallback side."""
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in spec.items() if k in known}
        values.setdefault("image_size", image_size)
        values["indices"] = tuple(int(i) for i in values.get("indices", DEFAULT_INDICES))
        return cls(**values)

    @property
    def curves(self) -> list[str]:
        """Prediction columns this figure has (the noisy classifier only when configured)."""
        noisy = ["pred_noisy"] if self.noisy_classifier is not None else []
        return [*noisy, "pred_xt", "pred_x0"]


def check_fig2_config(
    fig2: Mapping[str, Any], dataset: str, model: str | None, config: Mapping[str, Any]
) -> None:
    """Parse-time checks of ``figures.fig2`` against the rest of the config (keys named)."""
    where = "figures.fig2"
    if dataset not in config["datasets"]:
        raise ValueError(f"{where}.dataset: {dataset!r} is not a key of `datasets`")
    if config["datasets"][dataset]["role"] != "id":
        raise ValueError(f"{where}.dataset: {dataset!r} is not an ID set (labels are needed)")
    if model not in config.get("diffusion_models", {}):
        raise ValueError(
            f"{where}.model: {model!r} is not a key of `diffusion_models` "
            f"({sorted(config.get('diffusion_models', {}))})"
        )
    noisy = fig2.get("noisy_classifier")
    if noisy and noisy["checkpoint"] not in config.get("downloads", {}):
        raise ValueError(
            f"{where}.noisy_classifier.checkpoint: {noisy['checkpoint']!r} is not a key of "
            f"`downloads` ({sorted(config.get('downloads', {}))})"
        )
    Fig2Settings.from_config(fig2, int(config["benchmark"]["image_size"]))
