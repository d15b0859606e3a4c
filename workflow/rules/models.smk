"""The classifier under protection and the diffusion models (trained here or converted)."""

if CLASSIFIER_SOURCE == "train":

    rule train_classifier:
        input:
            imglist=f"data/interim/{RUN}/lists/train.txt",
            benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
            code=pkg("classifiers.py", "training.py", "data.py", "pipeline.py", "runtime.py"),
        output:
            weights=f"data/interim/{RUN}/models/classifier/weights/model.safetensors",
            spec=f"data/interim/{RUN}/models/classifier/weights/spec.json",
            train_log=f"data/interim/{RUN}/models/classifier/train_log.csv",
        log:
            f"data/logs/train_classifier/{RUN}.log",
        conda:
            "../../envs/diffguard.yaml"
        threads: CPUS_PER_JOB
        params:
            classifier=config["classifier"],
            benchmark=config["benchmark"],
        script:
            "../scripts/train_classifier.py"

else:

    # The released classifier checkpoint -> the files train_classifier would write.
    rule prepare_classifier:
        input:
            checkpoint=download_file(config["classifier"]["checkpoint"]),
            verified=verified_stamp(config["classifier"]["checkpoint"]),
            code=pkg("backends.py", "classifiers.py", "checkpoints.py"),
        output:
            weights=CLASSIFIER_WEIGHTS,
            spec=CLASSIFIER_SPEC,
        log:
            f"data/logs/prepare_classifier/{RUN}.log",
        conda:
            "../../envs/diffguard.yaml"
        resources:
            mem_mb=job_mem_mb,
        params:
            spec={
                **{
                    k: v
                    for k, v in config["classifier"].items()
                    if k not in ("source", "checkpoint")
                },
                "num_classes": config["benchmark"]["num_classes"],
                "in_channels": config["benchmark"]["channels"],
                "input_size": config["classifier"].get(
                    "input_size", config["benchmark"]["image_size"]
                ),
            },
            out_dir=lambda wildcards, output: str(Path(output.weights).parent.parent),
        script:
            "../scripts/prepare_classifier.py"


rule train_diffusion:
    input:
        imglist=f"data/interim/{RUN}/lists/train.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        code=pkg("training.py", "data.py", "pipeline.py", "runtime.py"),
    output:
        done=f"data/interim/{RUN}/models/{{model}}/model.done",
        train_log=f"data/interim/{RUN}/models/{{model}}/train_log.csv",
    log:
        f"data/logs/train_diffusion/{RUN}/{{model}}.log",
    wildcard_constraints:
        model=alternatives(TRAINED_MODELS),
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    resources:
        gpu=config.get("gpus_per_job", 0),
    params:
        spec=diffusion_model_spec,
        benchmark=config["benchmark"],
        out_dir=f"data/interim/{RUN}/models/{{model}}",
    script:
        "../scripts/train_diffusion.py"


# Convert a released diffusion checkpoint once (safetensors + backend.json).
rule prepare_diffusion_model:
    """Convert a released diffusion checkpoint once (safetensors + backend.json)."""
    input:
        checkpoints=lambda wildcards: [
            download_file(k) for k in DIFFUSION_MODELS[wildcards.model]["checkpoints"].values()
        ],
        verified=lambda wildcards: [
            verified_stamp(k) for k in DIFFUSION_MODELS[wildcards.model]["checkpoints"].values()
        ],
        code=pkg("backends.py", "convert/adm.py", "convert/ldm.py", "convert/diffnb.py"),
    output:
        done=f"data/interim/{RUN}/models/{{model}}/model.done",
    log:
        f"data/logs/prepare_diffusion_model/{RUN}/{{model}}.log",
    wildcard_constraints:
        model=alternatives(CONVERTED_MODELS),
    retries: RETRIES
    conda:
        "../../envs/diffguard.yaml"
    resources:
        mem_mb=job_mem_mb,
    params:
        source=lambda wildcards: DIFFUSION_MODELS[wildcards.model]["source"],
        roles=lambda wildcards: list(DIFFUSION_MODELS[wildcards.model]["checkpoints"]),
        options=lambda wildcards: DIFFUSION_MODELS[wildcards.model].get("options", {}),
        out_dir=lambda wildcards, output: str(Path(output.done).parent),
    script:
        "../scripts/prepare_diffusion_model.py"


rule cache_predictions:
    input:
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        weights=CLASSIFIER_WEIGHTS,
        spec=CLASSIFIER_SPEC,
        code=pkg("classifiers.py", "data.py", "pipeline.py", "runtime.py"),
    output:
        f"data/interim/{RUN}/predictions/{{dataset}}.npz",
    log:
        f"data/logs/cache_predictions/{RUN}/{{dataset}}.log",
    retries: RETRIES
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    resources:
        gpu=config.get("gpus_per_job", 0),
        mem_mb=job_mem_mb,
    params:
        benchmark=config["benchmark"],
        mc_passes=10 if "mc_dropout" in config.get("baselines", []) else 0,
        batch_size=config.get("batch_size", 64),
    script:
        "../scripts/cache_predictions.py"
