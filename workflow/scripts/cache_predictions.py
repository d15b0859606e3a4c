"""Rules cache_predictions / cache_guidance_predictions: classifier outputs of one dataset."""

import torch

from diffguard.logs import setup_logging
from diffguard.predictions import cache_predictions_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
cache_predictions_stage(
    sm.input.imglist,
    sm.input.benchmark,
    sm.input.weights,
    sm.params.benchmark,
    sm.output[0],
    mc_passes=sm.params.mc_passes,
    batch_size=sm.params.batch_size,
    mc_dropout_p=sm.params.mc_dropout_p,
    ensemble_weights=[p for p in sm.input.get("ensemble", []) if p.endswith(".safetensors")],
    input_size=sm.params.input_size,
)
