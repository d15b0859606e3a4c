"""Rule prepare_ensemble_member: a deep-ensemble member's checkpoint -> safetensors + spec.json."""

from diffguard.logs import setup_logging
from diffguard.pipeline import prepare_ensemble_member_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
prepare_ensemble_member_stage(
    dict(sm.params.spec), sm.input.checkpoint, sm.params.path, sm.params.out_dir
)
