"""Print each rule's script and ``code`` input as JSON (run in a subprocess by test_code_deps.py).

Usage: ``python rule_code.py REPO CONFIGFILE``. Parses the workflow with the Snakemake API (no
DAG, nothing run), so every rule the config defines is listed, whether or not a target needs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    OutputSettings,
    ResourceSettings,
    StorageSettings,
)


def main(repo: Path, configfile: str) -> None:
    """Write ``{rule: {"script": path or null, "code": [paths] or null}}`` to stdout."""
    rules: dict[str, dict[str, object]] = {}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[repo / configfile]),
            storage_settings=StorageSettings(),
            snakefile=repo / "Snakefile",
            workdir=repo,
        )
        workflow = workflow_api._workflow  # the parsed rules; the API has no public accessor
        for rule in workflow.rules:
            script = None
            if rule.script:
                script = str(
                    (Path(rule.basedir.get_path_or_uri(secret_free=True)) / rule.script)
                    .resolve()
                    .relative_to(repo)
                )
            code = [str(f) for f in rule.input.code] if "code" in rule.input._names else None
            rules[rule.name] = {"script": script, "code": code}
    json.dump(rules, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2])
