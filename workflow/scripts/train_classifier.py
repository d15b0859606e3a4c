"""Rule train_classifier: train the classifier under protection (embedded benchmark)."""

from pathlib import Path

import torch

from diffguard.logs import setup_logging
from diffguard.pipeline import train_classifier_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
train_classifier_stage(
    sm.input.imglist,
    sm.input.benchmark,
    sm.params.classifier,
    sm.params.benchmark,
    Path(sm.output.weights).parent,
    sm.output.train_log,
)
