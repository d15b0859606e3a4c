"""Rule build_embedded_benchmark: write the benchmark's images and image lists (embedded, mnist)."""

from pathlib import Path

from diffguard.logs import setup_logging
from diffguard.pipeline import build_embedded_benchmark_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
build_embedded_benchmark_stage(
    sm.params.benchmark,
    Path(sm.output.summary).parent,
    lists=sm.params.lists,
    sources=dict(sm.params.sources),
)
