"""Baselines on cached classifier outputs, combinations and OOD metrics."""

from diffguard.plan import run_plan

P = run_plan(config, workflow)


rule baseline_scores:
    input:
        train=f"data/interim/{P.run}/predictions/train.npz",
        test=expand("data/interim/{run}/predictions/{dataset}.npz", run=P.run, dataset=P.eval_sets),
        classifier=P.classifier_weights,
        classifier_spec=P.classifier_spec,
        code=P.script_code("baseline_scores.py"),
    output:
        expand("data/processed/{run}/baselines/{dataset}.csv", run=P.run, dataset=P.eval_sets),
    log:
        f"data/logs/baseline_scores/{P.run}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        baselines=config["baselines"],
        datasets=P.eval_sets,
    script:
        "../scripts/baseline_scores.py"


if P.val_eval_sets:

    rule baseline_scores_val:
        """The validation sets' baseline tables (rule tune chooses a combination rule on
        them), in a job of their own: nothing upstream of tune reads a test image."""
        input:
            train=f"data/interim/{P.run}/predictions/train.npz",
            test=expand(
                "data/interim/{run}/predictions/{dataset}.npz",
                run=P.run,
                dataset=P.val_eval_sets,
            ),
            classifier=P.classifier_weights,
            classifier_spec=P.classifier_spec,
            code=P.script_code("baseline_scores.py"),
        output:
            expand(
                "data/processed/{run}/baselines/{dataset}.csv",
                run=P.run,
                dataset=P.val_eval_sets,
            ),
        log:
            f"data/logs/baseline_scores/{P.run}-val.log",
        conda:
            "../../envs/diffguard.yaml"
        params:
            baselines=config["baselines"],
            datasets=P.val_eval_sets,
        script:
            "../scripts/baseline_scores.py"


rule evaluate:
    input:
        scores=P.score_tables(),
        baselines=rules.baseline_scores.output,
        code=P.script_code("evaluate.py"),
    output:
        f"data/processed/{P.run}/metrics.csv",
    log:
        f"data/logs/evaluate/{P.run}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        id_set=P.id_set,
        ood_sets={name: config["datasets"][name]["role"] for name in P.ood_sets},
        experiments={name: exp["method"] for name, exp in P.eval_experiments.items()},
        seeds=P.exp_seeds,
        distances=config["distances"],
        baselines=config["baselines"],
        combinations=config["combinations"],
        headline_distance=config["headline_distance"],
        take_best=config["take_best_over_distances"],
        run=P.run,
    script:
        "../scripts/evaluate.py"
