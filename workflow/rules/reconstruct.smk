"""DiffGuard itself: sharded inversion + guided regeneration jobs, then per-dataset gathering."""


rule reconstruct:
    input:
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        # guidance labels: predictions at the experiment's input size (guidance_predictions)
        predictions=guidance_predictions,
        classifier=CLASSIFIER_WEIGHTS,
        classifier_spec=CLASSIFIER_SPEC,
        model=experiment_model,
        perceptual=perceptual_weights(),
        code=script_code("reconstruct.py"),
    output:
        f"data/interim/{RUN}/recon/{{exp}}/{{dataset}}/seed-{{seed}}/shard-{{shard}}.npz",
    log:
        f"data/logs/reconstruct/{RUN}/{{exp}}/{{dataset}}/seed-{{seed}}/shard-{{shard}}.log",
    retries: RETRIES
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    resources:
        gpu=config.get("gpus_per_job", 0),
        mem_mb=job_mem_mb,
        runtime=reconstruct_runtime,
    params:
        experiment=experiment_spec,
        benchmark=config["benchmark"],
        shard_size=config.get("shard_size", 500),
        batch_size=config.get("batch_size", 64),
        distances=config.get("distances", ["l2"]),
        save_images=config.get("save_images", 16),
        device=config.get("device", "auto"),
        dtype=config.get("dtype"),
        model_dir=experiment_model_dir,
        torch_hub_dir=lambda wildcards, input: (
            str(Path(input.perceptual[0]).parent.parent) if input.perceptual else None
        ),
    script:
        "../scripts/reconstruct.py"


rule gather_scores:
    input:
        shards=recon_shards,
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        code=script_code("gather_scores.py"),
    output:
        f"data/processed/{RUN}/scores/{{exp}}/{{dataset}}/seed-{{seed}}.csv",
    log:
        f"data/logs/gather_scores/{RUN}/{{exp}}/{{dataset}}/seed-{{seed}}.log",
    conda:
        "../../envs/diffguard.yaml"
    script:
        "../scripts/gather_scores.py"


rule inversion_trace:
    """Fig. 4: PSNR(x_t, x_0) along the full GDM inversion (no early stop) of a subsample of
    every evaluation set, in one job (the model is loaded once)."""
    input:
        imglists=expand("data/interim/{run}/lists/{dataset}.txt", run=RUN, dataset=EVAL_SETS),
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        classifier_spec=CLASSIFIER_SPEC,
        model=experiment_model,
        code=script_code("inversion_trace.py"),
    output:
        expand(
            "data/processed/{run}/inversion_trace/{{exp}}/{dataset}.csv",
            run=RUN,
            dataset=EVAL_SETS,
        ),
    log:
        f"data/logs/inversion_trace/{RUN}/{{exp}}.log",
    retries: RETRIES
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    resources:
        gpu=config.get("gpus_per_job", 0),
        mem_mb=job_mem_mb,
        runtime=reconstruct_runtime,
    params:
        experiment=experiment_spec,
        benchmark=config["benchmark"],
        batch_size=config.get("batch_size", 64),
        device=config.get("device", "auto"),
        dtype=config.get("dtype"),
        model_dir=experiment_model_dir,
        datasets=EVAL_SETS,
    script:
        "../scripts/inversion_trace.py"
