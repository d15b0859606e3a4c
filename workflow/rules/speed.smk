"""Speed benchmark (target `speed`): the released code's execution of GDM / CFG against ours.

Settings come from the `speed:` config block (images, batch_sizes, dtypes, distances,
experiments, denoise_batch_size, repeats, variants, threads); its defaults are the schema's.
"""

from diffguard.plan import run_plan

P = run_plan(config, workflow)
SPEED = config["speed"]


rule speed:
    input:
        list(P.speed_tables().values()),


rule speed_benchmark:
    input:
        classifier=P.classifier_weights,
        classifier_spec=P.classifier_spec,
        models=[
            f"{P.model_dir(P.experiments[name]['model'])}/model.done"
            for name in P.speed_experiments
        ],
        imglist=f"data/interim/{P.run}/lists/{P.id_set}.txt",
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        code=P.script_code("benchmark_speed.py"),
    output:
        **P.speed_tables(),
    log:
        f"data/logs/speed/{P.run}.log",
    conda:
        "../../envs/diffguard.yaml"
    threads: P.speed_threads
    resources:
        gpu=config["gpus_per_job"],
        runtime=config["shard_runtime_minutes"],
    params:
        experiments=[P.experiments[name] for name in P.speed_experiments],
        model_dirs=[P.model_dir(P.experiments[name]["model"]) for name in P.speed_experiments],
        benchmark=config["benchmark"],
        images=SPEED["images"],
        batch_sizes=SPEED["batch_sizes"],
        dtypes=SPEED["dtypes"],
        distances=SPEED["distances"],
        denoise_batch_size=SPEED["denoise_batch_size"],
        repeats=SPEED["repeats"],
        variants=SPEED["variants"],
        device=config["device"],
        run=P.run,
        seed=P.seeds[0],
        # the configured folder, or None where no perceptual weights are configured
        torch_hub_dir=P.torch_hub_dir if P.hub_files else None,
    script:
        "../scripts/benchmark_speed.py"
