"""Rule prepare_classifier: a downloaded classifier checkpoint -> safetensors + spec.json."""

from pathlib import Path

from diffguard.logs import setup_logging
from diffguard.preparation import prepare_classifier_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
prepare_classifier_stage(dict(sm.params.spec), Path(sm.input.checkpoint), Path(sm.params.out_dir))
