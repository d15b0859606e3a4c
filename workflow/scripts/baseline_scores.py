"""Rule baseline_scores: classic post-hoc OOD scores on the cached classifier outputs."""

from diffguard.evaluation import baseline_scores_stage
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
baseline_scores_stage(
    sm.input.train, sm.input.test, sm.input.classifier, sm.params.baselines, sm.output
)
