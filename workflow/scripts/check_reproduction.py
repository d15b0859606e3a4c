"""Rule reproduction_check: pass/fail of every published cell (CSV, Markdown, LaTeX).

Input ``comparisons`` (one CSV per ``params.tables``, same order; none: not applicable);
params ``check`` (``report.check``) and ``run``; outputs ``csv``, ``md``, ``tex``.
"""

from diffguard.logs import setup_logging
from diffguard.reproduction import reproduction_check_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
comparisons = list(sm.input.comparisons)
reproduction_check_stage(
    dict(zip(sm.params.tables, comparisons, strict=True)),
    dict(sm.params.check),
    {"csv": sm.output.csv, "md": sm.output.md, "tex": sm.output.tex},
    run=sm.params.run,
)
