"""Rule evaluate: OOD metrics of baselines, DiffGuard experiments and combinations."""

from diffguard.evaluation import evaluate_stage
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
evaluate_stage(
    score_files=sm.input.scores,
    baseline_files=sm.input.baselines,
    id_set=sm.params.id_set,
    ood_sets=dict(sm.params.ood_sets),
    experiments=dict(sm.params.experiments),
    seeds=sm.params.seeds,
    distances=sm.params.distances,
    baselines=sm.params.baselines,
    combinations=sm.params.combinations,
    headline_distance=sm.params.headline_distance,
    take_best=sm.params.take_best,
    run=sm.params.run,
    out=sm.output[0],
)
