"""Rule speed_benchmark: released-execution port vs ours, images/s, NFE, memory, score agreement."""

import torch

from diffguard.logs import setup_logging
from diffguard.speed import speed_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
speed_stage(
    classifier_weights=sm.input.classifier,
    experiments=[dict(e) for e in sm.params.experiments],
    model_dirs=sm.params.model_dirs,
    imglist=sm.input.imglist,
    benchmark_json=sm.input.benchmark,
    benchmark=dict(sm.params.benchmark),
    num_images=int(sm.params.images),
    batch_sizes=list(sm.params.batch_sizes),
    device_name=sm.params.device,
    dtypes=sm.params.dtypes,
    distances=list(sm.params.distances),
    run=sm.params.run,
    out_csv=sm.output.csv,
    out_md=sm.output.md,
    out_tex=sm.output.tex,
    seed=int(sm.params.seed),
    denoise_batch_size=int(sm.params.denoise_batch_size),
    torch_hub_dir=sm.params.torch_hub_dir,
    repeats=int(sm.params.repeats),
    variants=list(sm.params.variants),
)
