"""Rule prepare_diffusion_model: convert a released checkpoint once (safetensors + backend.json)."""

from pathlib import Path

from diffguard.logs import setup_logging
from diffguard.preparation import prepare_diffusion_model_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
prepare_diffusion_model_stage(
    sm.params.source,
    {role: Path(path) for role, path in zip(sm.params.roles, sm.input.checkpoints, strict=True)},
    dict(sm.params.options),
    Path(sm.params.out_dir),
    sm.output.done,
)
