"""Rules plot_sweeps (Fig. 7), plot_ablation_grid (Fig. 6), plot_psnr_inversion (Fig. 4).

plot_sweeps: input ``metrics``; params ``sweeps`` (name -> {label, points: {experiment: value},
reference: experiment}) and ``distance``; outputs ``pdf``, ``png``, ``csv`` (the points).
plot_ablation_grid: input ``shards`` (one per ``params.rows``); params ``rows``, ``images``,
``prefer_misclassified``, ``dataset``; outputs ``pdf``, ``png``.
plot_psnr_inversion: input ``traces`` (one per ``params.datasets``); param ``experiment`` (the
resolved trace experiment); outputs ``pdf``, ``png``, ``csv`` (mean and SD per set and step).
"""

import logging
from pathlib import Path

from diffguard.io import read_npz, write_csv
from diffguard.logs import setup_logging
from diffguard.plot_curves import plot_psnr_inversion, plot_sweeps, sweep_points, trace_summary
from diffguard.plot_images import ablation_rows, plot_ablation_grid
from diffguard.tables import read_metrics

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger(__name__)
stem = Path(sm.output.pdf).with_suffix("")
if sm.rule == "plot_sweeps":
    sweeps = dict(sm.params.sweeps)
    points = sweep_points(read_metrics(sm.input.metrics), sweeps, distance=sm.params.distance)
    write_csv(sm.output.csv, points)
    reference = {
        name: spec["points"][spec["reference"]]
        for name, spec in sweeps.items()
        if spec["reference"] in spec["points"]
    }
    plot_sweeps(points, stem, reference=reference, title=f"sweeps ({sm.params.distance})")
    log.info("sweeps: %d points", len(points))
elif sm.rule == "plot_psnr_inversion":
    import pandas as pd

    from diffguard.config import method_settings
    from diffguard.gdm import psnr_threshold

    frames = dict(zip(sm.params.datasets, map(pd.read_csv, sm.input.traces), strict=True))
    summary = trace_summary(frames)
    write_csv(sm.output.csv, summary)
    experiment = dict(sm.params.experiment)
    plot_psnr_inversion(
        summary,
        stem,
        threshold=psnr_threshold(method_settings(experiment)),
        title=f"{experiment['name']}: PSNR along the full inversion",
    )
    log.info("PSNR along the inversion: %d sets x %d steps", len(frames), summary["step"].max())
else:
    shards = {
        label: read_npz(path) for label, path in zip(sm.params.rows, sm.input.shards, strict=True)
    }
    ids, rows, captions = ablation_rows(
        shards, images=int(sm.params.images), prefer_misclassified=sm.params.prefer_misclassified
    )
    plot_ablation_grid(rows, stem, captions=captions, title=f"{sm.params.dataset}: regenerations")
    log.info("ablation grid: %d rows x %d images (%s)", len(rows), len(ids), ", ".join(ids))
