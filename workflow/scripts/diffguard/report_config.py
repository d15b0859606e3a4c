"""The ``report:`` section of a workflow config (paper tables and figures), checked at parse time.

Only the standard library, yaml and (when called) the jsonschema-based :mod:`diffguard.schema`
are imported: the workflow loads this section while it is parsed. What the tables mean:
:mod:`diffguard.paper_tables`; how the check uses them: :mod:`diffguard.reproduction`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def load_report_section(
    config: Mapping[str, Any],
    *,
    default: str | Path,
    schema: str | Path,
    experiments: Mapping[str, Any],
) -> dict[str, Any]:
    """The `report:` section of a workflow config, validated, defaults filled in.

    Taken from the config key ``report``, else the file named by ``report_config``, else
    ``default`` (``config/report/<run>.yaml``) when it exists, else empty (main table and
    figures only; the check says ``not applicable``).

    Raises:
        ValueError: A named file that does not exist or has another top-level key than
            ``report``; schema errors name the key.
    """
    # jsonschema only when called: the parse imports this module for every run
    from diffguard.schema import SAFE_LOADER, validate_config

    if "report" in config:
        section, where = dict(config["report"] or {}), "config key report"
    else:
        path = Path(config.get("report_config") or default)
        if not path.is_file():
            if "report_config" in config:
                raise ValueError(f"report_config: {path} does not exist")
            section, where = {}, "defaults"
        else:
            data = yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}
            if not isinstance(data, dict) or set(data) != {"report"}:
                keys = sorted(data) if isinstance(data, dict) else type(data).__name__
                raise ValueError(f"{path}: expected one top-level key `report`, got {keys}")
            section, where = dict(data["report"] or {}), str(path)
    validate_config(section, schema, prefix="report", source=where)
    baselines = set(config.get("baselines", []))
    for name, spec in section["tables"].items():
        for row, selector in spec["rows"].items():
            for key, known in (("experiment", set(experiments)), ("baseline", baselines)):
                if key in selector and selector[key] not in known:
                    # a table may name what a reduced config leaves out: its cells are missing
                    log.warning(
                        "%s: report.tables.%s.rows.%s: %s %r is not part of this run; its cells "
                        "will be 'missing'",
                        where,
                        name,
                        row,
                        key,
                        selector[key],
                    )
    trace = section["figures"].get("psnr_inversion", {}).get("experiment")
    if trace is not None and not experiments.get(trace, {}).get("inversion_trace_only"):
        raise ValueError(
            f"{where}: report.figures.psnr_inversion.experiment: {trace!r} is not an "
            "experiment with `inversion_trace_only: true`"
        )
    for label, exp in section["figures"].get("ablation_grid", {}).get("rows", {}).items():
        if exp not in experiments:
            raise ValueError(
                f"{where}: report.figures.ablation_grid.rows.{label}: experiment {exp!r} does "
                "not exist"
            )
    return section
