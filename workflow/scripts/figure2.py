"""Rules fig2_predictions and plot_fig2 (the paper's Fig. 2; see diffguard.figure2).

fig2_predictions: inputs ``imglist``, ``benchmark``, ``classifier``, ``model``, ``noisy`` (the
noisy classifier's checkpoint and its verification stamp, or nothing); params ``settings``
(``figures.fig2``), ``image_size`` (fallback side), ``channels``, ``device``, ``dtype``; output
the per-image predictions CSV. The model directory is the folder of ``model`` (model.done).
plot_fig2: input ``predictions``; param ``noisy``; outputs ``.../fig2_accuracy.csv`` (and
``.../fig2_agreement.csv`` with a noisy classifier) and the figures (their folder receives them).
"""

from pathlib import Path

import torch

from diffguard.figure2 import Fig2Settings, compute_predictions, plot_figure2
from diffguard.logs import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
if sm.rule == "fig2_predictions":
    torch.set_num_threads(sm.threads)
    noisy = list(sm.input.noisy)
    compute_predictions(
        imglist=sm.input.imglist,
        benchmark_json=sm.input.benchmark,
        classifier_weights=sm.input.classifier,
        model_dir=str(Path(sm.input.model).parent),
        settings=Fig2Settings.from_config(dict(sm.params.settings), int(sm.params.image_size)),
        channels=int(sm.params.channels),
        out=sm.output[0],
        noisy_checkpoint=noisy[0] if noisy else None,
        device_name=sm.params.device,
        dtype=sm.params.dtype,
    )
else:
    outputs = [str(p) for p in sm.output]
    agreement = [p for p in outputs if p.endswith("fig2_agreement.csv")]
    plot_figure2(
        sm.input.predictions,
        next(p for p in outputs if p.endswith("fig2_accuracy.csv")),
        Path(next(p for p in outputs if p.endswith(".pdf"))).parent,
        agreement_csv=agreement[0] if sm.params.noisy else None,
    )
