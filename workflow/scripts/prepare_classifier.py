"""Rule prepare_classifier: a downloaded classifier checkpoint -> safetensors + spec.json."""

from pathlib import Path

from diffguard.preparation import prepare_classifier_stage
from diffguard.runtime import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
prepare_classifier_stage(dict(sm.params.spec), Path(sm.input.checkpoint), Path(sm.params.out_dir))
