"""Settings chosen on validation sets only (``tune:``): the sweep and the choice."""

from diffguard.plan import alternatives, run_plan
from diffguard.tuning import tune_params

P = run_plan(config, workflow)


rule tune:
    """Every input is a validation-split table (tests/workflow/test_tune_dag.py checks it)."""
    input:
        scores=P.tune_scores,
        baselines=P.tune_baselines,
        code=P.script_code("tune.py"),
    output:
        sweep=f"data/processed/{P.run}/tune/{{tune}}/sweep.csv",
        chosen=f"data/processed/{P.run}/tune/{{tune}}/chosen.json",
    log:
        f"data/logs/tune/{P.run}/{{tune}}.log",
    wildcard_constraints:
        tune=alternatives(P.tunes),
    conda:
        "../../envs/diffguard.yaml"
    params:
        tune=lambda wildcards: tune_params(P.tunes[wildcards.tune]),
        id_set=lambda wildcards: P.val_sets[0],
        roles=lambda wildcards: P.val_roles(),
    script:
        "../scripts/tune.py"
