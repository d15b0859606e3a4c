"""The classifier under protection and the diffusion models (trained here or converted)."""


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


rule cache_predictions:
    input:
        imglist=f"data/interim/{RUN}/lists/{{dataset}}.txt",
        benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
        weights=rules.train_classifier.output.weights,
        spec=rules.train_classifier.output.spec,
        code=pkg("classifiers.py", "data.py", "pipeline.py", "runtime.py"),
    output:
        f"data/interim/{RUN}/predictions/{{dataset}}.npz",
    log:
        f"data/logs/cache_predictions/{RUN}/{{dataset}}.log",
    conda:
        "../../envs/diffguard.yaml"
    threads: CPUS_PER_JOB
    params:
        benchmark=config["benchmark"],
        mc_passes=10 if "mc_dropout" in config.get("baselines", []) else 0,
        batch_size=config.get("batch_size", 64),
    script:
        "../scripts/cache_predictions.py"
