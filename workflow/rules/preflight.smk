"""Preflight before the GPU hours: every evaluation experiment on a few images per dataset."""


rule preflight:
    """Runs each evaluation experiment (reconstruct's entry point) and the classifier pass on
    `preflight.images` images per evaluation set; writes preflight.md + preflight.csv (checks,
    s/image, GPU-hour estimates) and fails naming the failed checks. The summary files are not
    declared outputs so that Snakemake keeps them when the rule fails."""
    input:
        imglists=expand("data/interim/{run}/lists/{dataset}.txt", run=RUN, dataset=EVAL_SETS),
        other_lists=expand(
            "data/interim/{run}/lists/{dataset}.txt",
            run=RUN,
            dataset=[d for d in ALL_SETS if d not in EVAL_SETS],
        ),
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        classifier=CLASSIFIER_WEIGHTS,
        classifier_spec=CLASSIFIER_SPEC,
        models=sorted({f"{model_dir(e['model'])}/model.done" for e in EVAL_EXPERIMENTS.values()}),
        perceptual=perceptual_weights(),
        code=script_code("preflight.py"),
    output:
        f"data/processed/{RUN}/preflight.status",
    log:
        f"data/logs/preflight/{RUN}.log",
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    resources:
        gpu=config.get("gpus_per_job", 0),
        mem_mb=job_mem_mb,
    params:
        md=f"data/processed/{RUN}/preflight.md",
        csv=f"data/processed/{RUN}/preflight.csv",
        datasets=EVAL_SETS,
        experiments=EVAL_EXPERIMENTS,
        model_dirs={n: model_dir(e["model"]) for n, e in EVAL_EXPERIMENTS.items()},
        seeds={n: EXP_SEEDS[n] for n in EVAL_EXPERIMENTS},
        guidance_sizes={n: guidance_input_size(config, e) for n, e in EVAL_EXPERIMENTS.items()},
        benchmark=config["benchmark"],
        images=config.get("preflight", {}).get("images", 2),
        shard_size=config.get("shard_size", 500),
        batch_size=config.get("batch_size", 64),
        distances=config.get("distances", ["l2"]),
        device=config.get("device", "auto"),
        dtype=config.get("dtype"),
        torch_hub_dir=lambda wildcards, input: (
            str(Path(input.perceptual[0]).parent.parent) if input.perceptual else None
        ),
    script:
        "../scripts/preflight.py"
