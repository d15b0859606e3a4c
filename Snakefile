"""DiffGuard, reproduced: from images and checkpoints to tables, figures and the paper PDF."""

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces the default instead of being deep-merged into it, so a paper or test
# config never inherits the embedded benchmark's experiments; `--config key=value` (run=NAME
# included) still overrides the default. workflow.overwrite_configfiles = the --configfile list.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# The rule files import the package from this checkout; each reads what it needs from
# diffguard.plan.run_plan(config) (validated once), never another file's names: any order works.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))
from diffguard.config import child_processes_import  # noqa: E402
from diffguard.plan import run_plan  # noqa: E402

# Rule scripts run in child processes: they must import this checkout's package, not a copy
# an editable install (or a stale site-packages) would put first on their path.
child_processes_import(run_plan(config, workflow).package_root)


include: "workflow/rules/common.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/speed.smk"
include: "workflow/rules/figure2.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/preflight.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        run_plan(config, workflow).final_targets(),
