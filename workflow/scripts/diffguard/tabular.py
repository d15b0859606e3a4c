"""The one table renderer: Markdown and booktabs LaTeX for every table of the workflow.

The main results (:mod:`diffguard.tables`), the paper tables with published versus reproduced
values (:mod:`diffguard.paper_tables`), the reproduction check (:mod:`diffguard.reproduction`)
and the speed tables (:mod:`diffguard.speed_tables`) build their cells and call these
functions, so a table looks the same wherever it is written.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Sequence

import pandas as pd

LEFT, RIGHT, PLAIN = ":---", "---:", "---"
"""Markdown column alignments."""

SHRINK = "shrink"
"""LaTeX box: shrink a table wider than the text, never enlarge a narrow one."""

LINEWIDTH = "linewidth"
"""LaTeX box: scale the table to the text width."""

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "–": "--",
    "—": "---",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "≈": r"$\approx$",
    "×": r"$\times$",
    "ℓ": r"$\ell$",
    "−": "$-$",
    "Δ": r"$\Delta$",
    "\u00a0": "~",
    "‘": "`",
    "’": "'",
    "“": "``",
    "”": "''",
}
# Combining marks (NFD) as text-mode accent commands, e.g. x̂ -> \^{x}.
_COMBINING_ACCENTS = {
    "\u0300": "`",
    "\u0301": "'",
    "\u0302": "^",
    "\u0303": "~",
    "\u0304": "=",
    "\u0308": '"',
}


# --------------------------------------------------------------------------------------- cells


def fmt(value: object, decimals: int) -> str:
    """A number with ``decimals`` digits after the point; ``--`` for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{float(value):.{decimals}f}"


def value_cell(value: float, sd: float | None, decimals: int = 2, pm: str = " ± ") -> str:
    """``value`` with ``pm`` and its SD when it has one; ``--`` for a missing value."""
    if value is None or pd.isna(value):
        return "--"
    text = f"{value:.{decimals}f}"
    if sd is not None and not pd.isna(sd):
        text += f"{pm}{sd:.{decimals}f}"
    return text


def md_escape(text: str) -> str:
    """Escape a Markdown cell: the pipe breaks a GitHub table cell; * and _ would emphasise."""
    return re.sub(r"([|*_])", r"\\\1", text)


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (one pass, so nothing is escaped twice).

    A few non-ASCII symbols become their LaTeX commands and combining accents become accent
    commands (``x̂`` -> ``\\^{x}``), so that pdfLaTeX compiles any method or dataset name.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", str(text)):
        if ch in _COMBINING_ACCENTS and out:
            out[-1] = "\\" + _COMBINING_ACCENTS[ch] + "{" + out[-1] + "}"
        elif unicodedata.combining(ch):
            continue  # an accent pdfLaTeX cannot place: drop it rather than fail the build
        else:
            out.append(_LATEX_SPECIAL.get(ch, _LATEX_UNICODE.get(ch, ch)))
    text = unicodedata.normalize("NFC", "".join(out))
    # A cell starting with "[" right after "\\" would be read as the row-skip argument.
    return "{}" + text if text.startswith("[") else text


def latex_notes(notes: Sequence[str]) -> list[str]:
    """Plain-text notes as LaTeX; ``FPR@95 (a) = ...`` becomes a superscript mark."""
    lines = []
    for note in notes:
        mark = re.match(r"^FPR@95 \((?P<m>[ab])\) = ", note)
        if mark:
            body = note[mark.end() :]
            lines.append(rf"$^{{{mark['m']}}}$\,{latex_escape(body)}.")
        else:
            lines.append(latex_escape(note))
    return lines


# ------------------------------------------------------------------------------------ Markdown


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]
) -> list[str]:
    """Lines of a GitHub Markdown table (cells as given: escape them first).

    Args:
        header: Header cells.
        rows: Body cells, one sequence per row.
        align: One of :data:`LEFT`, :data:`RIGHT`, :data:`PLAIN` per column.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def markdown_notes(notes: Sequence[str]) -> list[str]:
    """A blank line and one ``- note`` line per note (nothing without notes)."""
    return ["", *(f"- {note}" for note in notes)] if notes else []


# --------------------------------------------------------------------------------------- LaTeX


def latex_tabular(
    colspec: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    groups: Sequence[Hashable] | None = None,
) -> list[str]:
    """Lines of a booktabs ``tabular``.

    Args:
        colspec: Column specification (``lrr``).
        header: Header lines as they stand (rows ending in ``\\\\``, ``\\cmidrule`` lines).
        rows: Body cells, one sequence per row (LaTeX already).
        groups: One key per row; a ``\\midrule`` separates rows whose keys differ.
    """
    lines = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *header, r"\midrule"]
    previous = None
    for i, cells in enumerate(rows):
        if groups is not None:
            if previous is not None and groups[i] != previous:
                lines.append(r"\midrule")
            previous = groups[i]
        lines.append(" & ".join(cells) + r" \\")
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def _boxed(tabular: list[str], box: str | None) -> list[str]:
    if box is None:
        return tabular
    if box == SHRINK:
        return [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]
    if box == LINEWIDTH:
        return [r"\resizebox{\linewidth}{!}{%", *tabular[:-1], tabular[-1] + "}"]
    raise ValueError(f"latex box {box!r}: expected None, {SHRINK!r} or {LINEWIDTH!r}")


def latex_float(
    tabular: list[str],
    *,
    caption: str | None,
    label: str | None = None,
    placement: str = "tbp",
    size: str = r"\small",
    box: str | None = SHRINK,
    notes: Sequence[str] = (),
    ragged: bool = True,
) -> str:
    """A tabular in a ``table`` float (``center`` environment without a caption), with notes.

    Args:
        tabular: Lines from :func:`latex_tabular`.
        caption: LaTeX caption (not escaped); None: no float, a ``center`` environment.
        label: ``\\label`` of the float.
        placement: Float placement.
        size: Font size command.
        box: :data:`SHRINK`, :data:`LINEWIDTH` or None (no ``\\resizebox``).
        notes: LaTeX notes set in small print below the table.
        ragged: Set the notes ragged right.
    """
    lines = _boxed(tabular, box)
    if notes:
        start = r"\par\smallskip{\footnotesize" + (r"\raggedright " if ragged else " ")
        lines = [*lines, start + " ".join(notes) + r"\par}"]
    if caption is None:
        return "\n".join([r"\begin{center}" + size, *lines, r"\end{center}"]) + "\n"
    head = [rf"\begin{{table}}[{placement}]", r"\centering" + size, rf"\caption{{{caption}}}"]
    if label:
        head.append(rf"\label{{{label}}}")
    return "\n".join([*head, *lines, r"\end{table}"]) + "\n"
