"""Rule render_tables: main results (and published-vs-reproduced tables) as CSV, Markdown, LaTeX.

Input ``metrics``; outputs ``csv``, ``md`` and ``tex`` name the main tables (their folders take
every table); optional params ``run``, ``note``, ``published_dir`` and ``published_mapping``
(published CSV stem -> {published row: reproduced method}).
"""

from pathlib import Path

from diffguard.runtime import setup_logging
from diffguard.tables import render_tables

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
params = dict(sm.params.items())
render_tables(
    sm.input.metrics,
    out_dir_csv=Path(sm.output.csv).parent,
    out_dir_tex=Path(sm.output.tex).parent,
    out_dir_md=Path(sm.output.md).parent,
    published_dir=params.get("published_dir", "config/published"),
    mapping=params.get("published_mapping") or None,
    run=params.get("run"),
    note=params.get("note"),
)
