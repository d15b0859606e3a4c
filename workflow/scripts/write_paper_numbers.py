"""Rule write_paper_numbers: ``paper/numbers.tex``, the macros behind every number of ms.tex.

Inputs ``metrics``, ``lists`` (one per ``params.datasets``, ID set first) and optional
``benchmarks`` (Snakemake benchmark files adding up to the runtime); params ``run``,
``figure_dir`` (relative to ``paper/``) and optional ``published_tables`` (LaTeX files relative
to ``paper/``), ``figures`` (figure stems in ``figure_dir``), ``runtime_s`` and input
``check`` (the reproduction check CSV) and optional ``claims`` (the claims CSV). Experiments and
switches come from the workflow config.
"""

from diffguard.logs import setup_logging
from diffguard.paper import write_paper_numbers

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
params = dict(sm.params.items())
inputs = dict(sm.input.items())


def as_list(value: object) -> list:
    """One file or a list of files -> a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


write_paper_numbers(
    sm.input.metrics,
    sm.output[0],
    run=sm.params.run,
    figure_dir=sm.params.figure_dir,
    lists=dict(zip(sm.params.datasets, sm.input.lists, strict=True)),
    benchmarks=as_list(inputs.get("benchmarks")),
    runtime_s=params.get("runtime_s"),
    config=sm.config,
    published_tables=as_list(params.get("published_tables")),
    figures=as_list(params.get("figures")),
    check_csv=inputs.get("check"),
    claims_csv=next(iter(as_list(inputs.get("claims"))), None),
    tune_chosen=as_list(inputs.get("tune_chosen")),
)
