"""The classifier under protection and the diffusion models (trained here or converted)."""

if CLASSIFIER_SOURCE == "train":

    rule train_classifier:
        input:
            imglist=f"data/interim/{RUN}/lists/train.txt",
            benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
            code=script_code("train_classifier.py"),
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

    # A deep-ensemble member of a trained classifier: the same training with another seed.
    use rule train_classifier as train_ensemble_member with:
        output:
            weights=f"{member_dir('{member}')}/weights/model.safetensors",
            spec=f"{member_dir('{member}')}/weights/spec.json",
            train_log=f"{member_dir('{member}')}/train_log.csv",
        log:
            f"data/logs/train_ensemble_member/{RUN}/{{member}}.log",
        wildcard_constraints:
            member=r"\d+",
        params:
            classifier=lambda wildcards: {
                **config["classifier"],
                "train": {
                    **config["classifier"].get("train", {}),
                    "seed": ENSEMBLE_MEMBERS[int(wildcards.member)]["seed"],
                },
            },
            benchmark=config["benchmark"],

else:

    # The released classifier checkpoint -> the files train_classifier would write.
    rule prepare_classifier:
        input:
            checkpoint=download_file(config["classifier"]["checkpoint"]),
            verified=verified_stamp(config["classifier"]["checkpoint"]),
            code=script_code("prepare_classifier.py"),
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
            spec=CLASSIFIER_SPEC_PARAMS,
            out_dir=lambda wildcards, output: str(Path(output.weights).parent.parent),
        script:
            "../scripts/prepare_classifier.py"

    # A deep-ensemble member's released checkpoint (a file, or a file of an extracted archive).
    rule prepare_ensemble_member:
        input:
            checkpoint=member_checkpoint,
            verified=lambda wildcards: verified_stamp(
                ENSEMBLE_MEMBERS[int(wildcards.member)]["checkpoint"]
            ),
            code=script_code("prepare_ensemble_member.py"),
        output:
            weights=f"{member_dir('{member}')}/weights/model.safetensors",
            spec=f"{member_dir('{member}')}/weights/spec.json",
        log:
            f"data/logs/prepare_ensemble_member/{RUN}/{{member}}.log",
        wildcard_constraints:
            member=r"\d+",
        conda:
            "../../envs/diffguard.yaml"
        resources:
            mem_mb=job_mem_mb,
        params:
            spec=CLASSIFIER_SPEC_PARAMS,
            path=lambda wildcards: ENSEMBLE_MEMBERS[int(wildcards.member)].get("path"),
            out_dir=lambda wildcards, output: str(Path(output.weights).parent.parent),
        script:
            "../scripts/prepare_ensemble_member.py"


rule train_diffusion:
    input:
        imglist=f"data/interim/{RUN}/lists/train.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        code=script_code("train_diffusion.py"),
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
        code=script_code("prepare_diffusion_model.py"),
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


# Classifier outputs at benchmark.image_size: the baselines' inputs (MC-dropout passes and
# ensemble members' logits on the evaluation sets) and the default guidance labels.
rule cache_predictions:
    input:
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        weights=CLASSIFIER_WEIGHTS,
        spec=CLASSIFIER_SPEC,
        ensemble=ensemble_inputs,
        code=script_code("cache_predictions.py"),
    output:
        prediction_cache("{dataset}"),
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
        input_size=None,
        mc_passes=lambda wildcards: (
            int(MC_DROPOUT.get("passes", 5))
            if "mc_dropout" in BASELINES and eval_set(wildcards.dataset)
            else 0
        ),
        mc_dropout_p=MC_DROPOUT.get("p"),
        batch_size=config.get("batch_size", 64),
    script:
        "../scripts/cache_predictions.py"


# Predictions at an experiment's own input size (the LDM's 256 crop): its guidance labels.
use rule cache_predictions as cache_guidance_predictions with:
    input:
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        weights=CLASSIFIER_WEIGHTS,
        spec=CLASSIFIER_SPEC,
        code=script_code("cache_predictions.py"),
    output:
        prediction_cache("{dataset}", "{size}"),
    log:
        f"data/logs/cache_guidance_predictions/{RUN}/{{size}}/{{dataset}}.log",
    wildcard_constraints:
        size=r"\d+",
    params:
        benchmark=config["benchmark"],
        input_size=lambda wildcards: int(wildcards.size),
        mc_passes=0,
        mc_dropout_p=None,
        batch_size=config.get("batch_size", 64),
