"""Rule build_embedded_benchmark: write the embedded benchmark's images and image lists."""

from diffguard.pipeline import build_embedded_benchmark, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
build_embedded_benchmark(snakemake.params.benchmark, snakemake.params.out_dir)  # noqa: F821
