"""Rule gather_scores: per-image scores of one dataset from its shards."""

from diffguard.pipeline import gather_scores, setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
gather_scores(sm.input.shards, sm.input.imglist, sm.output[0])
