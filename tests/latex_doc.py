"""pdfLaTeX compiles a table as the paper inputs it (shared by the table tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def assert_compiles(tex: str, folder: Path) -> None:
    """Compile ``tex`` inside an article with the paper's table packages; fail with the log."""
    assert shutil.which("pdflatex"), "pdflatex not found: run `make setup` (texlive)"
    doc = (
        "\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
        "\\usepackage{graphicx}\\begin{document}\n" + tex + "\\end{document}\n"
    )
    (folder / "t.tex").write_text(doc)
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:]
