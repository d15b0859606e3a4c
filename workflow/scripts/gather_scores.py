"""Rule gather_scores: per-image scores of one dataset from its shards."""

from diffguard.list_stages import gather_scores_stage
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
gather_scores_stage(sm.input.shards, sm.input.imglist, sm.output[0])
