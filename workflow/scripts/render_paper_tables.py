"""Rule render_paper_tables: each configured paper table, published vs reproduced (CSV, MD, TeX).

Input ``metrics``; params ``tables`` (``report.tables``), ``outputs`` (table -> {csv, md, tex}),
``published_dir``, ``headline_distance``, ``run``.
"""

from diffguard.logs import setup_logging
from diffguard.paper_tables import render_paper_tables_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
render_paper_tables_stage(
    sm.input.metrics,
    dict(sm.params.tables),
    {name: dict(paths) for name, paths in dict(sm.params.outputs).items()},
    published_dir=sm.params.published_dir,
    headline_distance=sm.params.headline_distance,
    run=sm.params.run,
)
