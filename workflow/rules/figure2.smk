"""Fig. 2: a noise-aware classifier against the protected one over diffusion timesteps."""

from diffguard.plan import run_plan
from diffguard.settings import check_fig2_config

P = run_plan(config, workflow)
FIG2 = P.fig2
if FIG2:
    FIG2_NOISY = FIG2.get("noisy_classifier")  # no schema default: absent = no panel A
    check_fig2_config(FIG2, P.fig2_dataset, P.fig2_model, config)
    FIG2_TABLES = [f"data/processed/{P.run}/tables/fig2_accuracy.csv"]
    if FIG2_NOISY:
        FIG2_TABLES.append(f"data/processed/{P.run}/tables/fig2_agreement.csv")

    rule fig2_predictions:
        """Per-image predictions of the noisy classifier and the protected classifier on x_t and
        on the diffusion model's x0 estimate, at the configured respaced indices (seeded noise).
        """
        input:
            imglist=f"data/interim/{P.run}/lists/{P.fig2_dataset}.txt",
            benchmark=f"data/external/{P.run}/benchmark/benchmark.json",
            classifier=P.classifier_weights,
            classifier_spec=P.classifier_spec,
            model=f"{P.model_dir(P.fig2_model)}/model.done",
            noisy=P.verified_inputs([FIG2_NOISY["checkpoint"]]) if FIG2_NOISY else [],
            code=P.script_code("figure2.py"),
        output:
            f"data/processed/{P.run}/fig2/predictions.csv",
        log:
            f"data/logs/fig2_predictions/{P.run}.log",
        retries: config["retries"]
        conda:
            "../../envs/diffguard.yaml"
        threads: config["cpus_per_job"]
        resources:
            gpu=config["gpus_per_job"],
            mem_mb=P.job_mem_mb,
            runtime=P.reconstruct_runtime,
        params:
            settings=FIG2,
            image_size=config["benchmark"]["image_size"],
            channels=config["benchmark"]["channels"],
            device=config["device"],
            dtype=P.dtype,
        script:
            "../scripts/figure2.py"

    rule plot_fig2:
        """Fig. 2A (agreement at t=0, with a noisy classifier) and 2B (accuracy over t)."""
        input:
            predictions=f"data/processed/{P.run}/fig2/predictions.csv",
            code=P.script_code("figure2.py"),
        output:
            FIG2_TABLES,
            [
                report(path, caption=figure.caption_file, category="Figures")
                for figure in P.figure_registry("plot_fig2")
                for path in figure.files(P.run)
            ],
        log:
            f"data/logs/plot_fig2/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            noisy=bool(FIG2_NOISY),
        script:
            "../scripts/figure2.py"
