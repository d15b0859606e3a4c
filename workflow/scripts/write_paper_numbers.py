"""Rule write_paper_numbers: headline numbers as LaTeX macros."""

from diffguard.pipeline import setup_logging
from diffguard.report_paper import write_paper_numbers

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
write_paper_numbers(
    sm.input.metrics,
    sm.params.run,
    sm.params.figure_dir,
    dict(zip(sm.params.datasets, sm.input.lists, strict=True)),
    sm.output[0],
)
