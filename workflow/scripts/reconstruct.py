"""Rule reconstruct: DiffGuard inversion + guided regeneration + scores for one shard."""

import torch

from diffguard.logs import setup_logging
from diffguard.reconstruction import reconstruct_shard
from diffguard.tuning import apply_chosen

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
reconstruct_shard(
    imglist=sm.input.imglist,
    benchmark_json=sm.input.benchmark,
    predictions=sm.input.predictions,
    classifier_weights=sm.input.classifier,
    model_dir=sm.params.model_dir,
    experiment=apply_chosen(dict(sm.params.experiment), next(iter(sm.input.chosen), None)),
    benchmark=sm.params.benchmark,
    seed=int(sm.wildcards.seed),
    shard=int(sm.wildcards.shard),
    shard_size=sm.params.shard_size,
    batch_size=sm.params.batch_size,
    distances=sm.params.distances,
    save_images=sm.params.save_images,
    device_name=sm.params.device,
    out=sm.output[0],
    torch_hub_dir=sm.params.torch_hub_dir,
    dtype=sm.params.dtype,
)
