"""Speed benchmark (target `speed`): the released code's execution of GDM / CFG against ours.

Settings come from an optional `speed:` config block (images, batch_sizes, dtypes, distances,
experiments, denoise_batch_size, repeats, variants, threads); the defaults below apply without it.
"""

SPEED_EXPERIMENTS = speed_experiments()
SPEED_OUTPUTS = {
    "csv": f"data/processed/{RUN}/speed.csv",
    "md": f"data/processed/{RUN}/speed.md",
    "tex": "paper/tables/speed.tex",
}
SPEED_TABLES["speed"] = SPEED_OUTPUTS["tex"]


rule speed:
    input:
        list(SPEED_OUTPUTS.values()),


rule speed_benchmark:
    input:
        classifier=f"data/interim/{RUN}/models/classifier/weights/model.safetensors",
        classifier_spec=f"data/interim/{RUN}/models/classifier/weights/spec.json",
        models=[f"{model_dir(EXPERIMENTS[name]['model'])}/model.done" for name in SPEED_EXPERIMENTS],
        imglist=f"data/interim/{RUN}/lists/{ID_SET}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        code=script_code("benchmark_speed.py"),
    output:
        **SPEED_OUTPUTS,
    log:
        f"data/logs/speed/{RUN}.log",
    conda:
        "../../envs/diffguard.yaml"
    threads: int(SPEED.get("threads", CPUS_PER_JOB))
    resources:
        gpu=config.get("gpus_per_job", 0),
        runtime=int(config.get("shard_runtime_minutes", 60)),
    params:
        experiments=[EXPERIMENTS[name] for name in SPEED_EXPERIMENTS],
        model_dirs=[model_dir(EXPERIMENTS[name]["model"]) for name in SPEED_EXPERIMENTS],
        benchmark=config["benchmark"],
        images=SPEED.get("images", 32),
        batch_sizes=SPEED.get("batch_sizes", [1, 8, 32]),
        dtypes=SPEED.get("dtypes", "auto"),
        distances=SPEED.get("distances", ["ssim", "l2", "logits"]),
        denoise_batch_size=SPEED.get("denoise_batch_size", 5),
        repeats=SPEED.get("repeats", 1),
        variants=SPEED.get("variants", []),
        device=config.get("device", "auto"),
        run=RUN,
        seed=SEEDS[0],
        torch_hub_dir=config.get("weights", {}).get("torch_hub_dir"),
    script:
        "../scripts/benchmark_speed.py"
