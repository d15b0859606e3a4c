"""Rule render_tables: main results as CSV, Markdown and LaTeX."""

from diffguard.pipeline import setup_logging
from diffguard.report_tables import render_tables

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
render_tables(
    sm.input.metrics, sm.output.csv, sm.output.md, sm.output.tex, sm.params.run, sm.params.note
)
