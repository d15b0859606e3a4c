"""Tables, figures, the paper PDF and the exploration notebook (CPU, local)."""

FIGURES = ["score_histograms", "roc_curves", "recon_grid", "psnr_inversion", "training_curves"]
TABLE_FILES = [
    f"data/processed/{RUN}/tables/main_results.csv",
    f"data/processed/{RUN}/tables/main_results.md",
    "paper/tables/main_results.tex",
]
HEADLINE_EXPERIMENT = config.get("headline_experiment", next(iter(EXPERIMENTS)))
HEADLINE_SEED = SEEDS[0]


rule render_tables:
    input:
        metrics=f"data/processed/{RUN}/metrics.csv",
        code=pkg("tables.py", "io.py"),
    output:
        csv=report(
            f"data/processed/{RUN}/tables/main_results.csv",
            caption="../report/main_results.rst",
            category="Tables",
        ),
        md=f"data/processed/{RUN}/tables/main_results.md",
        tex="paper/tables/main_results.tex",
    log:
        f"data/logs/render_tables/{RUN}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        run=RUN,
        note=config.get(
            "published_note",
            "This benchmark has no published counterpart; compare methods within the table.",
        ),
    script:
        "../scripts/render_tables.py"


rule plot_figures:
    input:
        scores=expand(
            "data/processed/{run}/scores/{exp}/{dataset}/seed-{seed}.csv",
            run=RUN,
            exp=HEADLINE_EXPERIMENT,
            dataset=EVAL_SETS,
            seed=HEADLINE_SEED,
        ),
        baselines=expand("data/processed/{run}/baselines/{dataset}.csv", run=RUN, dataset=EVAL_SETS),
        shards=expand(
            "data/interim/{run}/recon/{exp}/{dataset}/seed-{seed}/shard-000.npz",
            run=RUN,
            exp=HEADLINE_EXPERIMENT,
            dataset=EVAL_SETS,
            seed=HEADLINE_SEED,
        ),
        train_logs=train_logs(),
        code=pkg("plotting.py", "io.py"),
    output:
        [
            report(
                f"figures/{RUN}/{name}.{ext}",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
            for ext in ("pdf", "png")
        ],
    log:
        f"data/logs/plot_figures/{RUN}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        id_set=ID_SET,
        ood_sets=OOD_SETS,
        datasets=EVAL_SETS,
        experiment=HEADLINE_EXPERIMENT,
        distance=config.get("headline_distance", "l2"),
        baselines=config.get("baselines", ["msp"]),
        models=train_log_names(),
    script:
        "../scripts/plot_figures.py"


rule write_paper_numbers:
    input:
        metrics=f"data/processed/{RUN}/metrics.csv",
        lists=expand("data/interim/{run}/lists/{dataset}.txt", run=RUN, dataset=EVAL_SETS),
        code=pkg("paper.py", "tables.py", "io.py"),
    output:
        "paper/numbers.tex",
    log:
        f"data/logs/write_paper_numbers/{RUN}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        run=RUN,
        figure_dir=f"../figures/{RUN}",
        datasets=EVAL_SETS,
    script:
        "../scripts/write_paper_numbers.py"


rule build_paper:
    input:
        tex="paper/ms.tex",
        numbers="paper/numbers.tex",
        tables=paper_tables(),
        figures=figure_files(),
    output:
        report("paper/ms.pdf", caption="../report/paper.rst", category="Paper"),
    log:
        f"data/logs/build_paper/{RUN}.log",
    localrule: True
    conda:
        "../../envs/tex.yaml"
    shell:
        "cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error ms.tex " "> ../{log} 2>&1"


rule explore_notebook:
    input:
        metrics=f"data/processed/{RUN}/metrics.csv",
        scores=expand(
            "data/processed/{run}/scores/{exp}/{dataset}/seed-{seed}.csv",
            run=RUN,
            exp=HEADLINE_EXPERIMENT,
            dataset=EVAL_SETS,
            seed=HEADLINE_SEED,
        ),
    output:
        f"data/processed/{RUN}/exploration_summary.csv",
    log:
        notebook=f"data/processed/{RUN}/exploration.ipynb",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        datasets=EVAL_SETS,
        experiment=HEADLINE_EXPERIMENT,
        distance=config.get("headline_distance", "l2"),
    notebook:
        "../notebooks/explore.py.ipynb"
