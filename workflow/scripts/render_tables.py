"""Rule render_tables: the main results table as CSV, Markdown and LaTeX.

Input ``metrics``; outputs ``csv``, ``md`` and ``tex``; optional params ``run`` and ``note``.
"""

from pathlib import Path

from diffguard.logs import setup_logging
from diffguard.tables import render_tables_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
params = dict(sm.params.items())
render_tables_stage(
    sm.input.metrics,
    out_dir_csv=Path(sm.output.csv).parent,
    out_dir_tex=Path(sm.output.tex).parent,
    out_dir_md=Path(sm.output.md).parent,
    run=params.get("run"),
    note=params.get("note"),
)
