"""Tables, figures, the reproduction check, the paper PDF and the exploration notebook (CPU).

Which figures and tables exist, their files and captions: diffguard.targets (the registry)."""

from pathlib import Path

from diffguard.plan import run_plan
from diffguard.targets import FIGURE, TABLE

P = run_plan(config, workflow)
MAIN_TABLE = TABLE["main_results"].files(P.run)
PAPER_TABLE_OUTPUTS = P.paper_table_outputs()
CHECK_OUTPUTS = P.check_outputs()
HEADLINE_SCORES = expand(
    "data/processed/{run}/scores/{exp}/{dataset}/seed-{seed}.csv",
    run=P.run,
    exp=P.headline_experiment,
    dataset=P.eval_sets,
    seed=P.headline_seed,
)


rule render_tables:
    input:
        metrics=f"data/processed/{P.run}/metrics.csv",
        code=P.script_code("render_tables.py"),
    output:
        csv=report(
            MAIN_TABLE["csv"],
            caption=TABLE["main_results"].caption_file,
            category="Tables",
        ),
        md=MAIN_TABLE["md"],
        tex=MAIN_TABLE["tex"],
    log:
        f"data/logs/render_tables/{P.run}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        run=P.run,
        note=config["published_note"],
    script:
        "../scripts/render_tables.py"


rule plot_figures:
    input:
        scores=HEADLINE_SCORES,
        baselines=expand(
            "data/processed/{run}/baselines/{dataset}.csv", run=P.run, dataset=P.eval_sets
        ),
        shards=expand(
            "data/interim/{run}/recon/{exp}/{dataset}/seed-{seed}/shard-000.npz",
            run=P.run,
            exp=P.headline_experiment,
            dataset=P.eval_sets,
            seed=P.headline_seed,
        ),
        train_logs=P.train_logs(),
        code=P.script_code("plot_figures.py"),
    output:
        [
            report(path, caption=figure.caption_file, category="Figures")
            for figure in P.figure_registry("plot_figures")
            for path in figure.files(P.run)
        ],
    log:
        f"data/logs/plot_figures/{P.run}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        id_set=P.id_set,
        ood_sets=P.ood_sets,
        datasets=P.eval_sets,
        experiment=P.headline_experiment,
        distance=config["headline_distance"],
        baselines=config["baselines"],
        models=P.train_log_names(),
    script:
        "../scripts/plot_figures.py"


if P.paper_tables:

    rule render_paper_tables:
        """Each configured paper table: published vs reproduced, cell by cell."""
        input:
            metrics=f"data/processed/{P.run}/metrics.csv",
            published=P.published_files(),
            code=P.script_code("render_paper_tables.py"),
        output:
            [
                (
                    report(
                        path,
                        caption=TABLE["paper_table"].caption_file,
                        category="Tables",
                    )
                    if path.endswith(".csv")
                    else path
                )
                for outs in PAPER_TABLE_OUTPUTS.values()
                for path in outs.values()
            ],
        log:
            f"data/logs/render_paper_tables/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            tables=P.paper_tables,
            outputs=PAPER_TABLE_OUTPUTS,
            # from the inputs, not a hardcoded prefix (no shared filesystem needed); a run whose
            # tables have no published numbers (OpenOOD v1.5) reads none
            published_dir=lambda wildcards, input: (
                str(Path(input.published[0]).parent)
                if input.published
                else P.report["published_dir"]
            ),
            headline_distance=config["headline_distance"],
            run=P.run,
        script:
            "../scripts/render_paper_tables.py"


rule reproduction_check:
    """Pass/fail of every published cell within its band (or an explicit 'not applicable')."""
    input:
        comparisons=[outs["csv"] for outs in PAPER_TABLE_OUTPUTS.values()],
        code=P.script_code("check_reproduction.py"),
    output:
        csv=report(
            CHECK_OUTPUTS["csv"],
            caption=TABLE["reproduction_check"].caption_file,
            category="Reproduction check",
        ),
        md=CHECK_OUTPUTS["md"],
        tex=CHECK_OUTPUTS["tex"],
    log:
        f"data/logs/reproduction_check/{P.run}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        tables=list(P.paper_tables),
        check=P.report["check"],
        run=P.run,
    script:
        "../scripts/check_reproduction.py"


rule reproduction_gate:
    """Fails (after the check report is written) when the check's status is not allowed, so
    the paper is not built from a failed reproduction; --keep-going builds everything else."""
    input:
        CHECK_OUTPUTS["csv"],
        code=P.script_code("reproduction_gate.py"),
    output:
        P.check_gate,
    log:
        f"data/logs/reproduction_gate/{P.run}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        allow=P.report["check"]["allow"],
    script:
        "../scripts/reproduction_gate.py"


if P.sweeps:

    rule plot_sweeps:
        """Fig. 7: average AUROC along each configured sweep."""
        input:
            metrics=f"data/processed/{P.run}/metrics.csv",
            code=P.script_code("plot_report_figures.py"),
        output:
            pdf=report(
                FIGURE["sweeps"].files(P.run)[0],
                caption=FIGURE["sweeps"].caption_file,
                category="Figures",
            ),
            png=FIGURE["sweeps"].files(P.run)[1],
            csv=f"data/processed/{P.run}/tables/sweeps.csv",
        log:
            f"data/logs/plot_sweeps/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            sweeps=P.sweeps,
            distance=config["headline_distance"],
        script:
            "../scripts/plot_report_figures.py"


if P.ablation:

    rule plot_ablation_grid:
        """Fig. 6: the same images regenerated by each configured experiment."""
        input:
            shards=P.ablation_shards(),
            code=P.script_code("plot_report_figures.py"),
        output:
            pdf=report(
                FIGURE["ablation_grid"].files(P.run)[0],
                caption=FIGURE["ablation_grid"].caption_file,
                category="Figures",
            ),
            png=FIGURE["ablation_grid"].files(P.run)[1],
        log:
            f"data/logs/plot_ablation_grid/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            rows=list(P.ablation["rows"]),
            images=P.ablation["images"],
            prefer_misclassified=P.ablation["prefer_misclassified"],
            dataset=P.ablation["dataset"],
        script:
            "../scripts/plot_report_figures.py"


if "psnr_inversion" in P.figures():

    rule plot_psnr_inversion:
        """Fig. 4: PSNR(x_t, x_0) along the full inversion, from the inversion traces."""
        input:
            traces=expand(
                "data/processed/{run}/inversion_trace/{exp}/{dataset}.csv",
                run=P.run,
                exp=P.report["figures"]["psnr_inversion"]["experiment"],
                dataset=P.eval_sets,
            ),
            code=P.script_code("plot_report_figures.py"),
        output:
            pdf=report(
                FIGURE["psnr_inversion"].files(P.run)[0],
                caption=FIGURE["psnr_inversion"].caption_file,
                category="Figures",
            ),
            png=FIGURE["psnr_inversion"].files(P.run)[1],
            csv=f"data/processed/{P.run}/tables/psnr_inversion.csv",
        log:
            f"data/logs/plot_psnr_inversion/{P.run}.log",
        localrule: True
        conda:
            "../../envs/diffguard.yaml"
        params:
            datasets=P.eval_sets,
            experiment=P.experiments[P.report["figures"]["psnr_inversion"]["experiment"]],
        script:
            "../scripts/plot_report_figures.py"


rule write_paper_numbers:
    input:
        metrics=f"data/processed/{P.run}/metrics.csv",
        lists=expand("data/interim/{run}/lists/{dataset}.txt", run=P.run, dataset=P.eval_sets),
        check=CHECK_OUTPUTS["csv"],
        claims=[P.claims_tables()["csv"]] if P.claims else [],
        tune_chosen=[P.tune_outputs(name)["chosen"] for name in P.tunes],
        code=P.script_code("write_paper_numbers.py"),
    output:
        "paper/numbers.tex",
    log:
        f"data/logs/write_paper_numbers/{P.run}.log",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        run=P.run,
        figure_dir=f"../figures/{P.run}",
        datasets=P.eval_sets,
        figures=P.figures(),
        published_tables=[f"tables/{name}.tex" for name in P.paper_tables],
    script:
        "../scripts/write_paper_numbers.py"


rule build_paper:
    input:
        tex="paper/ms.tex",
        numbers="paper/numbers.tex",
        tables=P.paper_inputs(),
        paper_tables=[outs["tex"] for outs in PAPER_TABLE_OUTPUTS.values()],
        check=CHECK_OUTPUTS["tex"],
        gate=P.check_gate,
        figures=P.figure_files(),
    output:
        report("paper/ms.pdf", caption="../report/paper.rst", category="Paper"),
    log:
        f"data/logs/build_paper/{P.run}.log",
    localrule: True
    conda:
        "../../envs/tex.yaml"
    shell:
        "cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error ms.tex " "> ../{log} 2>&1"


rule explore_notebook:
    input:
        metrics=f"data/processed/{P.run}/metrics.csv",
        scores=HEADLINE_SCORES,
    output:
        f"data/processed/{P.run}/exploration_summary.csv",
    log:
        notebook=f"data/processed/{P.run}/exploration.ipynb",
    localrule: True
    conda:
        "../../envs/diffguard.yaml"
    params:
        datasets=P.eval_sets,
        experiment=P.headline_experiment,
        distance=config["headline_distance"],
    notebook:
        "../notebooks/explore.py.ipynb"
