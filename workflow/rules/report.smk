"""Tables, figures, the reproduction check, the paper PDF and the exploration notebook (CPU)."""

from diffguard.config import sweep_spec
from diffguard.report_config import load_report_section

REPORT = load_report_section(
    config,
    default=Path(workflow.basedir) / "config" / "report" / f"{RUN}.yaml",
    schema=Path(workflow.basedir) / "workflow" / "schemas" / "report.schema.yaml",
    experiments=EXPERIMENTS,
)
PAPER_TABLES = REPORT["tables"]
PUBLISHED_DIR = REPORT["published_dir"]
REPORT_FIGURES = REPORT["figures"]
HEADLINE_EXPERIMENT = config.get("headline_experiment", next(iter(EVAL_EXPERIMENTS)))
HEADLINE_SEED = SEEDS[0]
HEADLINE_DISTANCE = config.get("headline_distance", "l2")
SWEEPS = {
    name: {
        "label": spec.get("label", spec["setting"]),
        "points": sweep_spec(EXPERIMENTS, spec["experiment"], spec["setting"]),
        "reference": spec["experiment"],
    }
    for name, spec in REPORT_FIGURES.get("sweeps", {}).items()
}
ABLATION = REPORT_FIGURES.get("ablation_grid")
PSNR_FIGURE = REPORT_FIGURES.get("psnr_inversion")

FIGURES = ["score_histograms", "roc_curves", "recon_grid"]
if train_log_names():
    FIGURES.append("training_curves")
EXTRA_FIGURES = (
    (["sweeps"] if SWEEPS else [])
    + (["ablation_grid"] if ABLATION else [])
    + (["psnr_inversion"] if PSNR_FIGURE else [])
)
EXTRA_FIGURES += FIG2_FIGURES  # rule plot_fig2 (workflow/rules/figure2.smk)
FIGURES += EXTRA_FIGURES
TABLE_FILES = [
    f"data/processed/{RUN}/tables/main_results.csv",
    f"data/processed/{RUN}/tables/main_results.md",
    "paper/tables/main_results.tex",
]
PAPER_TABLE_OUTPUTS = {
    name: {
        "csv": f"data/processed/{RUN}/tables/{name}.csv",
        "md": f"data/processed/{RUN}/tables/{name}.md",
        "tex": f"paper/tables/{name}.tex",
    }
    for name in PAPER_TABLES
}
CHECK_OUTPUTS = {
    "csv": f"data/processed/{RUN}/check/reproduction_check.csv",
    "md": f"data/processed/{RUN}/check/reproduction_check.md",
    "tex": "paper/tables/reproduction_check.tex",
}
CHECK_GATE = f"data/processed/{RUN}/check/gate.txt"
TABLE_FILES += [f for outs in PAPER_TABLE_OUTPUTS.values() for f in outs.values()]
TABLE_FILES += [*CHECK_OUTPUTS.values()]


# Fig. 6: first shard of each row's experiment on the shown dataset (its first seed)
ABLATION_SHARDS = [
    f"data/interim/{RUN}/recon/{exp}/{ABLATION.get('dataset', ID_SET)}/"
    f"seed-{EXP_SEEDS[exp][0]}/shard-000.npz"
    for exp in (ABLATION or {}).get("rows", {}).values()
]


rule render_tables:
    input:
        metrics=f"data/processed/{RUN}/metrics.csv",
        code=script_code("render_tables.py"),
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
        code=script_code("plot_figures.py"),
    output:
        [
            report(
                f"figures/{RUN}/{name}.{ext}",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
            if name not in EXTRA_FIGURES
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
        distance=HEADLINE_DISTANCE,
        baselines=config.get("baselines", ["msp"]),
        models=train_log_names(),
    script:
        "../scripts/plot_figures.py"


if PAPER_TABLES:

    rule render_paper_tables:
        """Each configured paper table: published vs reproduced, cell by cell."""
        input:
            metrics=f"data/processed/{RUN}/metrics.csv",
            published=[
                f"{PUBLISHED_DIR}/{spec.get('published', name)}.csv"
                for name, spec in PAPER_TABLES.items()
                if spec.get("published", name) is not None
            ],
            code=script_code("render_paper_tables.py"),
        output:
            [
                (
                    report(path, caption="../report/paper_table.rst", category="Tables")
                    if path.endswith(".csv")
                    else path
                )
                for outs in PAPER_TABLE_OUTPUTS.values()
                for path in outs.values()
            ],
        log:
            f"data/logs/render_paper_tables/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            tables=PAPER_TABLES,
            outputs=PAPER_TABLE_OUTPUTS,
            # from the inputs, not a hardcoded prefix (no shared filesystem needed); a run whose
            # tables have no published numbers (OpenOOD v1.5) reads none
            published_dir=lambda wildcards, input: (
                str(Path(input.published[0]).parent) if input.published else PUBLISHED_DIR
            ),
            headline_distance=HEADLINE_DISTANCE,
            run=RUN,
        script:
            "../scripts/render_paper_tables.py"


rule reproduction_check:
    """Pass/fail of every published cell within its band (or an explicit 'not applicable')."""
    input:
        comparisons=[outs["csv"] for outs in PAPER_TABLE_OUTPUTS.values()],
        code=script_code("check_reproduction.py"),
    output:
        csv=report(
            CHECK_OUTPUTS["csv"],
            caption="../report/reproduction_check.rst",
            category="Reproduction check",
        ),
        md=CHECK_OUTPUTS["md"],
        tex=CHECK_OUTPUTS["tex"],
    log:
        f"data/logs/reproduction_check/{RUN}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        tables=list(PAPER_TABLES),
        check=REPORT["check"],
        run=RUN,
    script:
        "../scripts/check_reproduction.py"


rule reproduction_gate:
    """Fails (after the check report is written) when the check's status is not allowed, so
    the paper is not built from a failed reproduction; --keep-going builds everything else."""
    input:
        CHECK_OUTPUTS["csv"],
        code=script_code("reproduction_gate.py"),
    output:
        CHECK_GATE,
    log:
        f"data/logs/reproduction_gate/{RUN}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        allow=REPORT["check"]["allow"],
    script:
        "../scripts/reproduction_gate.py"


if SWEEPS:

    rule plot_sweeps:
        """Fig. 7: average AUROC along each configured sweep."""
        input:
            metrics=f"data/processed/{RUN}/metrics.csv",
            code=script_code("plot_report_figures.py"),
        output:
            pdf=report(
                f"figures/{RUN}/sweeps.pdf", caption="../report/sweeps.rst", category="Figures"
            ),
            png=f"figures/{RUN}/sweeps.png",
            csv=f"data/processed/{RUN}/tables/sweeps.csv",
        log:
            f"data/logs/plot_sweeps/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            sweeps=SWEEPS,
            distance=HEADLINE_DISTANCE,
        script:
            "../scripts/plot_report_figures.py"


if ABLATION:

    rule plot_ablation_grid:
        """Fig. 6: the same images regenerated by each configured experiment."""
        input:
            shards=ABLATION_SHARDS,
            code=script_code("plot_report_figures.py"),
        output:
            pdf=report(
                f"figures/{RUN}/ablation_grid.pdf",
                caption="../report/ablation_grid.rst",
                category="Figures",
            ),
            png=f"figures/{RUN}/ablation_grid.png",
        log:
            f"data/logs/plot_ablation_grid/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            rows=list((ABLATION or {}).get("rows", {})),
            images=(ABLATION or {}).get("images", 6),
            prefer_misclassified=(ABLATION or {}).get("prefer_misclassified", True),
            dataset=(ABLATION or {}).get("dataset", ID_SET),
        script:
            "../scripts/plot_report_figures.py"


if PSNR_FIGURE:

    rule plot_psnr_inversion:
        """Fig. 4: PSNR(x_t, x_0) along the full inversion, from the inversion traces."""
        input:
            traces=expand(
                "data/processed/{run}/inversion_trace/{exp}/{dataset}.csv",
                run=RUN,
                exp=PSNR_FIGURE["experiment"],
                dataset=EVAL_SETS,
            ),
            code=script_code("plot_report_figures.py"),
        output:
            pdf=report(
                f"figures/{RUN}/psnr_inversion.pdf",
                caption="../report/psnr_inversion.rst",
                category="Figures",
            ),
            png=f"figures/{RUN}/psnr_inversion.png",
            csv=f"data/processed/{RUN}/tables/psnr_inversion.csv",
        log:
            f"data/logs/plot_psnr_inversion/{RUN}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            datasets=EVAL_SETS,
            experiment=EXPERIMENTS[PSNR_FIGURE["experiment"]],
        script:
            "../scripts/plot_report_figures.py"


rule write_paper_numbers:
    input:
        metrics=f"data/processed/{RUN}/metrics.csv",
        lists=expand("data/interim/{run}/lists/{dataset}.txt", run=RUN, dataset=EVAL_SETS),
        check=CHECK_OUTPUTS["csv"],
        code=script_code("write_paper_numbers.py"),
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
        figures=FIGURES,
        published_tables=[f"tables/{name}.tex" for name in PAPER_TABLES],
    script:
        "../scripts/write_paper_numbers.py"


rule build_paper:
    input:
        tex="paper/ms.tex",
        numbers="paper/numbers.tex",
        tables=paper_tables(),
        paper_tables=[outs["tex"] for outs in PAPER_TABLE_OUTPUTS.values()],
        check=CHECK_OUTPUTS["tex"],
        gate=CHECK_GATE,
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
        distance=HEADLINE_DISTANCE,
    notebook:
        "../notebooks/explore.py.ipynb"
