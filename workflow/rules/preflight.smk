"""Preflight before the GPU hours: every evaluation experiment on a few images per dataset."""

from pathlib import Path

from diffguard.config import guidance_input_size
from diffguard.plan import run_plan

P = run_plan(config, workflow)


rule preflight:
    """Runs each evaluation experiment (reconstruct's entry point) and the classifier pass on
    `preflight.images` images per evaluation set; writes preflight.md + preflight.csv (checks,
    s/image, GPU-hour estimates) and fails naming the failed checks. The summary files are not
    declared outputs so that Snakemake keeps them when the rule fails."""
    input:
        imglists=expand("data/interim/{run}/lists/{dataset}.txt", run=P.run, dataset=P.eval_sets),
        other_lists=expand(
            "data/interim/{run}/lists/{dataset}.txt",
            run=P.run,
            dataset=[d for d in P.all_sets if d not in P.eval_sets],
        ),
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        classifier=P.classifier_weights,
        classifier_spec=P.classifier_spec,
        models=sorted(
            {f"{P.model_dir(e['model'])}/model.done" for e in P.eval_experiments.values()}
        ),
        perceptual=P.perceptual_weights(),
        code=P.script_code("preflight.py"),
    output:
        f"data/processed/{P.run}/preflight.status",
    log:
        f"data/logs/preflight/{P.run}.log",
    conda:
        "../../envs/diffguard.yaml"
    threads: config["cpus_per_job"]
    resources:
        gpu=config["gpus_per_job"],
        mem_mb=P.job_mem_mb,
    params:
        md=f"data/processed/{P.run}/preflight.md",
        csv=f"data/processed/{P.run}/preflight.csv",
        datasets=P.eval_sets,
        experiments=P.eval_experiments,
        model_dirs={n: P.model_dir(e["model"]) for n, e in P.eval_experiments.items()},
        seeds={n: P.exp_seeds[n] for n in P.eval_experiments},
        guidance_sizes={n: guidance_input_size(config, e) for n, e in P.eval_experiments.items()},
        benchmark=config["benchmark"],
        images=config["preflight"]["images"],
        shard_size=config["shard_size"],
        batch_size=config["batch_size"],
        distances=config["distances"],
        device=config["device"],
        dtype=P.dtype,
        torch_hub_dir=lambda wildcards, input: (
            str(Path(input.perceptual[0]).parent.parent) if input.perceptual else None
        ),
    script:
        "../scripts/preflight.py"
