"""Logging set-up of a rule's job, kept apart from the runtime so that a rule's code inputs
(``diffguard.codedeps``: the import closure of its script) do not include the diffusion methods
merely because the job logs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("diffguard")


def setup_logging(log_file: str | Path | None) -> None:
    """Log to the rule's log file (and stderr), with timestamps and the software versions."""
    import torch

    from diffguard import __version__
    from diffguard.io import setup_file_logging

    setup_file_logging(log_file)
    log.info(
        "diffguard %s, torch %s, python %s", __version__, torch.__version__, sys.version.split()[0]
    )
