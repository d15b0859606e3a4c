"""The speed tables: the benchmark frame of :mod:`diffguard.speed` as Markdown and LaTeX.

One row per method, dtype, implementation and loader batch size (the columns of
:data:`diffguard.speed.SPEED_COLUMNS`); drawn by :mod:`diffguard.tabular`. No torch.
"""

from __future__ import annotations

import os

import pandas as pd

from diffguard.tabular import (
    LINEWIDTH,
    PLAIN,
    latex_escape,
    latex_float,
    latex_tabular,
    markdown_table,
)

_SHOWN = (
    # column, Markdown header, LaTeX header, number format
    ("method", "Method", "Method", None),
    ("implementation", "Implementation", "Implementation", None),
    ("batch_size", "Batch", "Batch", "{:d}"),
    ("images_per_s", "img/s", "img/s", "{:.3f}"),
    ("speedup_vs_port", "Speed-up", "Speed-up", "{:.2f}x"),
    ("cpu_speedup_vs_port", "CPU-time speed-up", "CPU-time speed-up", "{:.2f}x"),
    ("nfe_per_image", "NFE/img", "NFE/img", "{:.1f}"),
    ("classifier_fwd_per_image", "Clf fwd/img", "Clf fwd/img", "{:.1f}"),
    ("classifier_bwd_per_image", "Clf bwd/img", "Clf bwd/img", "{:.1f}"),
    ("peak_mem_mb", "Peak MiB", "Peak MiB", "{:.1f}"),
    ("max_abs_score_diff", "max \\|Δscore\\|", r"max $|\Delta\mathrm{score}|$", "{:.1e}"),
)


def implementation_label(implementation: str) -> str:
    """Display name of an implementation: ``released (port)``, ``ours``, ``ours + <variant>``
    (``ours+channels_last`` -> ``ours + channels last``)."""
    if implementation == "released_port":
        return "released (port)"
    if implementation.startswith("ours+"):
        return "ours + " + implementation.removeprefix("ours+").replace("_", " ")
    return str(implementation)


def _cells(frame: pd.DataFrame, latex: bool) -> tuple[list[str], list[list[str]]]:
    """Header and body cells; a dtype column when the frame holds more than one dtype."""
    with_dtype = frame["dtype"].nunique() > 1
    # CPU seconds say little about a GPU run (the host mostly waits)
    shown = [c for c in _SHOWN if c[0] != "cpu_speedup_vs_port" or set(frame["device"]) == {"cpu"}]
    header = [tex if latex else md for _, md, tex, _ in shown]
    if with_dtype:
        header.insert(2, "dtype")
    body = []
    for _, row in frame.iterrows():
        cells = []
        for col, _, _, fmt in shown:
            value = row[col]
            if col == "implementation":
                text = implementation_label(value)
            elif fmt is None:
                text = str(value)
            elif col == "max_abs_score_diff" and row["implementation"] == "released_port":
                text = "--"
            else:
                text = fmt.format(int(value) if fmt == "{:d}" else float(value))
            cells.append(latex_escape(text) if latex else text)
        if with_dtype:
            cells.insert(2, str(row["dtype"]))
        body.append(cells)
    return header, body


def _summary(frame: pd.DataFrame, run: str) -> str:
    first = frame.iloc[0]
    device = first["device"]
    where = f"{device}, {int(first['threads'])} threads" if device == "cpu" else device
    dtypes = ", ".join(sorted(frame["dtype"].unique()))
    return (
        f"Run {run}: {int(first['images'])} images on {where} ({dtypes}). A port of the released "
        "code's execution (batch 1 under adaptive early stop, a second UNet forward inside the "
        "guidance function, the graph through the UNet kept) against this implementation, in "
        "the same run on the same inputs, weights and guidance labels, alternating per loader "
        f"batch; times are the fastest of {int(first['repeats'])} pass(es) over all images. "
        "CPU-time speed-up: the ratio of process CPU seconds, which a busy machine distorts "
        "less than wall time. NFE: UNet rows evaluated per image; classifier passes count "
        "every crop. Timed: inversion, CAM mask (CFG) and guided regeneration. Peak memory: "
        f"{first['mem_method']}. max |dscore|: the largest difference of any score from the "
        "port's on the same images. The paper reports 0.05 (GDM) and 0.53 (LDM) images/s per "
        "V100 with its full-size models; these models are the run's own, so only the ratios "
        "carry over."
    )


def speed_markdown(frame: pd.DataFrame, run: str) -> str:
    """GitHub Markdown of the benchmark table with its explanatory note."""
    header, body = _cells(frame, latex=False)
    lines = markdown_table(header, body, [PLAIN] * len(header))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        "\n".join(lines)
        + "\n\n"
        + _summary(frame, run)
        + f" Load average (1 min) when the table was written: {load:.2f}.\n"
    )


def speed_latex(frame: pd.DataFrame, run: str) -> str:
    """booktabs LaTeX of the benchmark table (the paper's speed table), a rule between the
    method/dtype groups."""
    header, body = _cells(frame, latex=True)
    numeric = len(header) - (3 if frame["dtype"].nunique() > 1 else 2)
    tabular = latex_tabular(
        "l" + ("l" * (len(header) - numeric - 1)) + "r" * numeric,
        [" & ".join(header) + r" \\"],
        body,
        groups=list(zip(frame["method"], frame["dtype"], strict=True)),
    )
    return latex_float(
        tabular,
        caption=latex_escape(_summary(frame, run)),
        label="tab:speed",
        placement="t",
        size=r"\scriptsize",
        box=LINEWIDTH,
    )
