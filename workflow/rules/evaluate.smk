"""Baselines on cached classifier outputs, combinations and OOD metrics."""


rule baseline_scores:
    input:
        train=f"data/interim/{RUN}/predictions/train.npz",
        test=expand("data/interim/{run}/predictions/{dataset}.npz", run=RUN, dataset=EVAL_SETS),
        classifier=CLASSIFIER_WEIGHTS,
        classifier_spec=CLASSIFIER_SPEC,
        code=script_code("baseline_scores.py"),
    output:
        expand("data/processed/{run}/baselines/{dataset}.csv", run=RUN, dataset=EVAL_SETS),
    log:
        f"data/logs/baseline_scores/{RUN}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        baselines=config.get("baselines", ["msp"]),
        datasets=EVAL_SETS,
    script:
        "../scripts/baseline_scores.py"


rule evaluate:
    input:
        scores=score_tables(),
        baselines=rules.baseline_scores.output,
        code=script_code("evaluate.py"),
    output:
        f"data/processed/{RUN}/metrics.csv",
    log:
        f"data/logs/evaluate/{RUN}.log",
    conda:
        "../../envs/diffguard.yaml"
    params:
        id_set=ID_SET,
        ood_sets={name: config["datasets"][name]["role"] for name in OOD_SETS},
        experiments={name: exp["method"] for name, exp in EVAL_EXPERIMENTS.items()},
        seeds=EXP_SEEDS,
        distances=config.get("distances", ["l2"]),
        baselines=config.get("baselines", ["msp"]),
        combinations=config.get("combinations", []),
        headline_distance=config.get("headline_distance", "l2"),
        take_best=config.get("take_best_over_distances", False),
        run=RUN,
    script:
        "../scripts/evaluate.py"
