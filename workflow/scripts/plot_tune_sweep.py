"""Rule plot_tune_sweep: each tune's validation objective along its grid axes."""

import json
from pathlib import Path

import pandas as pd

from diffguard.logs import setup_logging
from diffguard.plot_tune import plot_tune_sweeps

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
names = list(sm.params.tunes)
sweeps = {n: pd.read_csv(p) for n, p in zip(names, sm.input.sweeps, strict=True)}
chosen = {n: json.loads(Path(p).read_text()) for n, p in zip(names, sm.input.chosen, strict=True)}
for name, objective in sm.params.objectives.items():
    sweeps[name].attrs["objective"] = objective
plot_tune_sweeps(sweeps, chosen, sm.output.pdf.removesuffix(".pdf"))
