"""Rule tune: choose an experiment's settings (and distance, combination rule) on val sets."""

from diffguard.logs import setup_logging
from diffguard.tuning import tune_from_params, tune_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
tune_stage(
    tune=tune_from_params(sm.params.tune),
    score_files=sm.input.scores,
    baseline_files=sm.input.baselines,
    id_set=sm.params.id_set,
    roles=dict(sm.params.roles),
    sweep_out=sm.output.sweep,
    chosen_out=sm.output.chosen,
)
