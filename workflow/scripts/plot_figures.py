"""Rule plot_figures: every figure of the run (PDF + PNG) into the folder of ``output[0]``.

Inputs ``scores``, ``baselines`` (one per dataset, in ``params.datasets`` order), ``shards``
(any number per dataset; assigned by the ``<dataset>`` folder in their path) and ``train_logs``
(one per ``params.models``); params ``id_set``, ``ood_sets``, ``datasets``, ``experiment``,
``distance``, ``baselines``, ``models``.
"""

from pathlib import Path

from diffguard.baselines import BASELINE_LABELS
from diffguard.logs import setup_logging
from diffguard.plotting import plot_all

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
datasets = list(sm.params.datasets)
shards = {d: [p for p in sm.input.shards if d in Path(p).parts] for d in datasets}
plot_all(
    id_set=sm.params.id_set,
    ood_sets=list(sm.params.ood_sets),
    score_files=dict(zip(datasets, sm.input.scores, strict=True)),
    baseline_files=dict(zip(datasets, sm.input.baselines, strict=True)),
    baselines=list(sm.params.baselines),
    baseline_labels=BASELINE_LABELS,
    shard_files=shards,
    train_logs=dict(zip(sm.params.models, sm.input.train_logs, strict=True)),
    out_dir=Path(sm.output[0]).parent,
    experiment=sm.params.experiment,
    distance=sm.params.distance,
)
