"""Rule train_diffusion: train a small diffusers UNet (unconditional or class-conditional)."""

import torch

from diffguard.logs import setup_logging
from diffguard.pipeline import train_diffusion_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
train_diffusion_stage(
    sm.input.imglist,
    sm.input.benchmark,
    sm.params.spec,
    sm.params.benchmark,
    sm.params.out_dir,
    sm.output.train_log,
    sm.output.done,
)
