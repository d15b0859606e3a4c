"""The classifier under protection and the diffusion models (trained here or converted)."""

from pathlib import Path

from diffguard.plan import alternatives, run_plan

P = run_plan(config, workflow)


if P.classifier_source == "train":

    rule train_classifier:
        input:
            imglist=f"data/interim/{P.run}/lists/train.txt",
            benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
            code=P.script_code("train_classifier.py"),
        output:
            weights=f"data/interim/{P.run}/models/classifier/weights/model.safetensors",
            spec=f"data/interim/{P.run}/models/classifier/weights/spec.json",
            train_log=f"data/interim/{P.run}/models/classifier/train_log.csv",
        log:
            f"data/logs/train_classifier/{P.run}.log",
        conda:
            "../../envs/diffguard.yaml"
        threads: config["cpus_per_job"]
        params:
            classifier=config["classifier"],
            benchmark=config["benchmark"],
        script:
            "../scripts/train_classifier.py"

    # A deep-ensemble member of a trained classifier: the same training with another seed.
    use rule train_classifier as train_ensemble_member with:
        output:
            weights=f"{P.member_dir('{member}')}/weights/model.safetensors",
            spec=f"{P.member_dir('{member}')}/weights/spec.json",
            train_log=f"{P.member_dir('{member}')}/train_log.csv",
        log:
            f"data/logs/train_ensemble_member/{P.run}/{{member}}.log",
        wildcard_constraints:
            member=r"\d+",
        params:
            classifier=P.member_classifier,
            benchmark=config["benchmark"],

else:

    # The released classifier checkpoint -> the files train_classifier would write.
    rule prepare_classifier:
        input:
            checkpoint=P.downloaded(config["classifier"]["checkpoint"]),
            verified=P.verified_stamp(config["classifier"]["checkpoint"]),
            code=P.script_code("prepare_classifier.py"),
        output:
            weights=P.classifier_weights,
            spec=P.classifier_spec,
        log:
            f"data/logs/prepare_classifier/{P.run}.log",
        conda:
            "../../envs/diffguard.yaml"
        resources:
            mem_mb=P.job_mem_mb,
        params:
            spec=P.classifier_spec_params,
            path=config["classifier"].get("path"),
            out_dir=lambda wildcards, output: str(Path(output.weights).parent.parent),
        script:
            "../scripts/prepare_classifier.py"

    # A deep-ensemble member's released checkpoint (a file, or a file of an extracted archive).
    rule prepare_ensemble_member:
        input:
            checkpoint=P.member_checkpoint,
            verified=lambda wildcards: P.verified_stamp(
                P.ensemble_members[int(wildcards.member)]["checkpoint"]
            ),
            code=P.script_code("prepare_ensemble_member.py"),
        output:
            weights=f"{P.member_dir('{member}')}/weights/model.safetensors",
            spec=f"{P.member_dir('{member}')}/weights/spec.json",
        log:
            f"data/logs/prepare_ensemble_member/{P.run}/{{member}}.log",
        wildcard_constraints:
            member=r"\d+",
        conda:
            "../../envs/diffguard.yaml"
        resources:
            mem_mb=P.job_mem_mb,
        params:
            spec=P.classifier_spec_params,
            path=lambda wildcards: P.ensemble_members[int(wildcards.member)].get("path"),
            out_dir=lambda wildcards, output: str(Path(output.weights).parent.parent),
        script:
            "../scripts/prepare_ensemble_member.py"


rule train_diffusion:
    input:
        imglist=f"data/interim/{P.run}/lists/train.txt",
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        code=P.script_code("train_diffusion.py"),
    output:
        done=f"data/interim/{P.run}/models/{{model}}/model.done",
        train_log=f"data/interim/{P.run}/models/{{model}}/train_log.csv",
    log:
        f"data/logs/train_diffusion/{P.run}/{{model}}.log",
    wildcard_constraints:
        model=alternatives(P.trained_models),
    conda:
        "../../envs/diffguard.yaml"
    threads: P.train_threads
    resources:
        gpu=config["gpus_per_job"],
    params:
        spec=lambda wildcards: P.diffusion_models[wildcards.model],
        benchmark=config["benchmark"],
        out_dir=f"data/interim/{P.run}/models/{{model}}",
    script:
        "../scripts/train_diffusion.py"


# Convert a released diffusion checkpoint once (safetensors + backend.json).
rule prepare_diffusion_model:
    """Convert a released diffusion checkpoint once (safetensors + backend.json)."""
    input:
        checkpoints=lambda wildcards: [
            P.download_file(k) for k in P.diffusion_models[wildcards.model]["checkpoints"].values()
        ],
        verified=lambda wildcards: [
            P.verified_stamp(k)
            for k in P.diffusion_models[wildcards.model]["checkpoints"].values()
        ],
        code=P.script_code("prepare_diffusion_model.py"),
    output:
        done=f"data/interim/{P.run}/models/{{model}}/model.done",
    log:
        f"data/logs/prepare_diffusion_model/{P.run}/{{model}}.log",
    wildcard_constraints:
        model=alternatives(P.converted_models),
    retries: config["retries"]
    conda:
        "../../envs/diffguard.yaml"
    resources:
        mem_mb=P.job_mem_mb,
    params:
        source=lambda wildcards: P.diffusion_models[wildcards.model]["source"],
        roles=lambda wildcards: list(P.diffusion_models[wildcards.model]["checkpoints"]),
        options=lambda wildcards: P.diffusion_models[wildcards.model]["options"],
        out_dir=lambda wildcards, output: str(Path(output.done).parent),
    script:
        "../scripts/prepare_diffusion_model.py"


# Classifier outputs at benchmark.image_size: the baselines' inputs (MC-dropout passes and
# ensemble members' logits on the evaluation sets) and the default guidance labels.
rule cache_predictions:
    input:
        imglist=f"data/interim/{P.run}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        weights=P.classifier_weights,
        spec=P.classifier_spec,
        ensemble=P.ensemble_inputs,
        code=P.script_code("cache_predictions.py"),
    output:
        P.prediction_cache("{dataset}"),
    log:
        f"data/logs/cache_predictions/{P.run}/{{dataset}}.log",
    retries: config["retries"]
    conda:
        "../../envs/diffguard.yaml"
    threads: config["cpus_per_job"]
    resources:
        gpu=config["gpus_per_job"],
        mem_mb=P.job_mem_mb,
    params:
        benchmark=config["benchmark"],
        input_size=None,
        mc_passes=P.mc_passes,
        mc_dropout_p=P.mc_dropout["p"],
        batch_size=config["batch_size"],
    script:
        "../scripts/cache_predictions.py"


# Predictions at an experiment's own input size (the LDM's 256 crop): its guidance labels.
use rule cache_predictions as cache_guidance_predictions with:
    input:
        imglist=f"data/interim/{P.run}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
        weights=P.classifier_weights,
        spec=P.classifier_spec,
        code=P.script_code("cache_predictions.py"),
    output:
        P.prediction_cache("{dataset}", "{size}"),
    log:
        f"data/logs/cache_guidance_predictions/{P.run}/{{size}}/{{dataset}}.log",
    wildcard_constraints:
        size=r"\d+",
    params:
        benchmark=config["benchmark"],
        input_size=lambda wildcards: int(wildcards.size),
        mc_passes=0,
        mc_dropout_p=None,
        batch_size=config["batch_size"],
