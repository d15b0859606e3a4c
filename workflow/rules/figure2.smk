"""Fig. 2: a noise-aware classifier against the protected one over diffusion timesteps."""

from diffguard.settings import FIGURE_A, FIGURE_B, check_fig2_config

FIG2 = config.get("figures", {}).get("fig2")
FIG2_FIGURES = []  # figure stems, included by report.smk's FIGURES
if FIG2:
    FIG2_DATASET = FIG2.get("dataset", ID_SET)
    FIG2_MODEL = FIG2.get("model") or EXPERIMENTS[
        config.get("headline_experiment", next(iter(EXPERIMENTS)))
    ].get("model")
    FIG2_NOISY = FIG2.get("noisy_classifier")
    check_fig2_config(FIG2, FIG2_DATASET, FIG2_MODEL, config)
    FIG2_FIGURES = ([FIGURE_A] if FIG2_NOISY else []) + [FIGURE_B]
    FIG2_TABLES = [f"data/processed/{RUN}/tables/fig2_accuracy.csv"]
    if FIG2_NOISY:
        FIG2_TABLES.append(f"data/processed/{RUN}/tables/fig2_agreement.csv")

    rule fig2_predictions:
        """Per-image predictions of the noisy classifier and the protected classifier on x_t and
        on the diffusion model's x0 estimate, at the configured respaced indices (seeded noise).
        """
        input:
            imglist=f"data/interim/{RUN}/lists/{FIG2_DATASET}.txt",
            benchmark=f"data/external/{RUN}/benchmark/benchmark.json",
            classifier=CLASSIFIER_WEIGHTS,
            classifier_spec=CLASSIFIER_SPEC,
            model=f"{model_dir(FIG2_MODEL)}/model.done",
            noisy=verified_inputs([FIG2_NOISY["checkpoint"]]) if FIG2_NOISY else [],
            code=script_code("figure2.py"),
        output:
            f"data/processed/{RUN}/fig2/predictions.csv",
        log:
            f"data/logs/fig2_predictions/{RUN}.log",
        retries: RETRIES
        conda:
            "../../envs/diffguard.yaml"
        threads: CPUS_PER_JOB
        resources:
            gpu=config.get("gpus_per_job", 0),
            mem_mb=job_mem_mb,
            runtime=reconstruct_runtime,
        params:
            settings=FIG2,
            image_size=config["benchmark"]["image_size"],
            channels=config["benchmark"]["channels"],
            device=config.get("device", "auto"),
            dtype=config.get("dtype"),
        script:
            "../scripts/figure2.py"

    rule plot_fig2:
        """Fig. 2A (agreement at t=0, with a noisy classifier) and 2B (accuracy over t)."""
        input:
            predictions=f"data/processed/{RUN}/fig2/predictions.csv",
            code=script_code("figure2.py"),
        output:
            FIG2_TABLES,
            [
                report(
                    f"figures/{RUN}/{name}.{ext}",
                    caption="../report/fig2.rst",
                    category="Figures",
                )
                for name in FIG2_FIGURES
                for ext in ("pdf", "png")
            ],
        log:
            f"data/logs/plot_fig2/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            noisy=bool(FIG2_NOISY),
        script:
            "../scripts/figure2.py"
