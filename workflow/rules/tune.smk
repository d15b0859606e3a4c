"""Settings chosen on validation sets only (``tune:``): the sweep and the choice."""

from diffguard.plan import alternatives, run_plan
from diffguard.targets import FIGURE
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


if P.tunes:

    rule plot_tune_sweep:
        """The sweep figure: validation objective along each grid axis, the choice marked."""
        input:
            sweeps=[P.tune_outputs(name)["sweep"] for name in P.tunes],
            chosen=[P.tune_outputs(name)["chosen"] for name in P.tunes],
            code=P.script_code("plot_tune_sweep.py"),
        output:
            pdf=report(
                FIGURE["tune_sweep"].files(P.run)[0],
                caption=FIGURE["tune_sweep"].caption_file,
                category="Figures",
            ),
            png=FIGURE["tune_sweep"].files(P.run)[1],
        log:
            f"data/logs/plot_tune_sweep/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            tunes=list(P.tunes),
            objectives={name: tune.objective for name, tune in P.tunes.items()},
        script:
            "../scripts/plot_tune_sweep.py"
