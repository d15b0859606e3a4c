"""Rule plot_figures: every figure of the run (PDF + PNG)."""

from pathlib import Path

from diffguard.pipeline import setup_logging
from diffguard.report_figures import plot_all

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
plot_all(
    id_set=sm.params.id_set,
    ood_sets=sm.params.ood_sets,
    headline_experiment=sm.params.experiment,
    headline_distance=sm.params.distance,
    score_files=dict(zip(sm.params.datasets, sm.input.scores, strict=True)),
    baseline_files=dict(zip(sm.params.datasets, sm.input.baselines, strict=True)),
    baselines=sm.params.baselines,
    shard_files=dict(zip(sm.params.datasets, sm.input.shards, strict=True)),
    train_logs=dict(zip(sm.params.models, sm.input.train_logs, strict=True)),
    out_dir=Path(sm.output[0]).parent,
)
