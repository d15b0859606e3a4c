"""Rule preflight: every experiment on a few images per dataset, checks and a cost estimate."""

import sys

import torch

from diffguard import io
from diffguard.logs import setup_logging
from diffguard.preflight import run_preflight

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
checks = run_preflight(
    imglists=dict(zip(sm.params.datasets, sm.input.imglists, strict=True)),
    other_lists=sm.input.other_lists,
    benchmark_json=sm.input.benchmark,
    classifier_weights=sm.input.classifier,
    experiments=sm.params.experiments,
    model_dirs=sm.params.model_dirs,
    experiment_seeds=sm.params.seeds,
    guidance_sizes=sm.params.guidance_sizes,
    benchmark=sm.params.benchmark,
    images=sm.params.images,
    shard_size=sm.params.shard_size,
    batch_size=sm.params.batch_size,
    distances=sm.params.distances,
    device_name=sm.params.device,
    dtype=sm.params.dtype,
    torch_hub_dir=sm.params.torch_hub_dir,
    out_md=sm.params.md,
    out_csv=sm.params.csv,
)
with open(sm.params.md) as summary:
    print(summary.read(), file=sys.stderr)
failed = [c.name for c in checks if not c.ok]
io.write_text(sm.output[0], "failed: " + ", ".join(failed) + "\n" if failed else "OK\n")
if failed:
    sys.exit(f"preflight failed: {', '.join(failed)} (see {sm.params.md})")
