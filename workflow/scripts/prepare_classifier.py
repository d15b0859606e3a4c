"""Rule prepare_classifier: a downloaded classifier checkpoint -> safetensors + spec.json."""

from diffguard.logs import setup_logging
from diffguard.pipeline import prepare_ensemble_member_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
# classifier.path: the checkpoint's file inside an extracted archive (None: the download itself)
prepare_ensemble_member_stage(
    dict(sm.params.spec), sm.input.checkpoint, sm.params.path, sm.params.out_dir, "classifier.path"
)
