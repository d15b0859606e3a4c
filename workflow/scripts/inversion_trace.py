"""Rule inversion_trace: per-image PSNR along the full GDM inversion of each dataset (Fig. 4)."""

import torch

from diffguard.logs import setup_logging
from diffguard.reconstruction import inversion_trace_job
from diffguard.tuning import apply_chosen

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
datasets = list(sm.params.datasets)
inversion_trace_job(
    imglists=dict(zip(datasets, sm.input.imglists, strict=True)),
    benchmark_json=sm.input.benchmark,
    classifier_spec=sm.input.classifier_spec,
    model_dir=sm.params.model_dir,
    experiment=apply_chosen(dict(sm.params.experiment), next(iter(sm.input.chosen), None)),
    benchmark=dict(sm.params.benchmark),
    images=sm.params.experiment["trace_images"],
    batch_size=int(sm.params.batch_size),
    device_name=sm.params.device,
    outs=dict(zip(datasets, sm.output, strict=True)),
    dtype=sm.params.dtype,
)
