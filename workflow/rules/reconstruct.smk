"""DiffGuard itself: sharded inversion + guided regeneration jobs, then per-dataset gathering."""

from pathlib import Path

from diffguard.plan import run_plan

P = run_plan(config, workflow)


rule reconstruct:
    input:
        imglist=f"data/interim/{P.run}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        # guidance labels: predictions at the experiment's input size (guidance_predictions)
        predictions=P.guidance_predictions,
        classifier=P.classifier_weights,
        classifier_spec=P.classifier_spec,
        model=P.experiment_model,
        perceptual=P.perceptual_weights(),
        # a tuned experiment (or one extending it) runs with the settings chosen on val sets
        chosen=P.chosen_input,
        code=P.script_code("reconstruct.py"),
    output:
        f"data/interim/{P.run}/recon/{{exp}}/{{dataset}}/seed-{{seed}}/shard-{{shard}}.npz",
    log:
        f"data/logs/reconstruct/{P.run}/{{exp}}/{{dataset}}/seed-{{seed}}/shard-{{shard}}.log",
    retries: config["retries"]
    conda:
        "../../envs/diffguard.yaml"
    threads: config["cpus_per_job"]
    resources:
        gpu=config["gpus_per_job"],
        mem_mb=P.job_mem_mb,
        runtime=P.reconstruct_runtime,
    params:
        experiment=P.experiment_spec,
        benchmark=config["benchmark"],
        shard_size=config["shard_size"],
        batch_size=config["batch_size"],
        distances=config["distances"],
        save_images=config["save_images"],
        device=config["device"],
        dtype=P.dtype,
        model_dir=P.experiment_model_dir,
        torch_hub_dir=lambda wildcards, input: (
            str(Path(input.perceptual[0]).parent.parent) if input.perceptual else None
        ),
    script:
        "../scripts/reconstruct.py"


rule gather_scores:
    input:
        shards=lambda wildcards: P.recon_shards(wildcards, checkpoints.select_images),
        imglist=f"data/interim/{P.run}/lists/{{dataset}}.txt",
        code=P.script_code("gather_scores.py"),
    output:
        f"data/processed/{P.run}/scores/{{exp}}/{{dataset}}/seed-{{seed}}.csv",
    log:
        f"data/logs/gather_scores/{P.run}/{{exp}}/{{dataset}}/seed-{{seed}}.log",
    conda:
        "../../envs/diffguard.yaml"
    script:
        "../scripts/gather_scores.py"


rule inversion_trace:
    """Fig. 4: PSNR(x_t, x_0) along the full GDM inversion (no early stop) of a subsample of
    every evaluation set, in one job (the model is loaded once)."""
    input:
        imglists=expand("data/interim/{run}/lists/{dataset}.txt", run=P.run, dataset=P.eval_sets),
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        classifier_spec=P.classifier_spec,
        model=P.experiment_model,
        chosen=P.chosen_input,
        code=P.script_code("inversion_trace.py"),
    output:
        expand(
            "data/processed/{run}/inversion_trace/{{exp}}/{dataset}.csv",
            run=P.run,
            dataset=P.eval_sets,
        ),
    log:
        f"data/logs/inversion_trace/{P.run}/{{exp}}.log",
    retries: config["retries"]
    conda:
        "../../envs/diffguard.yaml"
    threads: config["cpus_per_job"]
    resources:
        gpu=config["gpus_per_job"],
        mem_mb=P.job_mem_mb,
        runtime=P.reconstruct_runtime,
    params:
        experiment=P.experiment_spec,
        benchmark=config["benchmark"],
        batch_size=config["batch_size"],
        device=config["device"],
        dtype=P.dtype,
        model_dir=P.experiment_model_dir,
        datasets=P.eval_sets,
    script:
        "../scripts/inversion_trace.py"
