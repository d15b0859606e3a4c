"""Config validation, experiment resolution and input functions (no rules here)."""

import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from diffguard.config import (  # noqa: E402
    evaluation_datasets,
    resolve_experiment,
    shard_count,
)

RUN = config["run"]
EXPERIMENTS = {
    name: resolve_experiment(config["experiments"], name) for name in config["experiments"]
}
ID_SET, OOD_SETS = evaluation_datasets(config)
EVAL_SETS = [ID_SET, *OOD_SETS]
ALL_SETS = list(config["datasets"])
SEEDS = [int(s) for s in config.get("seeds", [0])]
PKG = "workflow/scripts/diffguard"
SPEED_TABLES = {}  # filled by workflow/rules/speed.smk when included
CPUS_PER_JOB = int(config.get("cpus_per_job", 1))


wildcard_constraints:
    exp="|".join(EXPERIMENTS),
    dataset="|".join(ALL_SETS),
    seed=r"\d+",
    shard=r"\d{3}",
    model="|".join(config.get("diffusion_models", {})) or "none",


def pkg(*modules):
    """Package modules a rule depends on, so that editing them reruns that rule only."""
    return [f"{PKG}/{m}" for m in ("__init__.py", *modules)]


def model_dir(name):
    return f"data/interim/{RUN}/models/{name}"


def experiment_model_dir(wildcards):
    return model_dir(EXPERIMENTS[wildcards.exp]["model"])


def reconstruct_runtime(wildcards, attempt):
    """Minutes per shard job, growing with each retry (preemption, slow nodes)."""
    return int(config.get("shard_runtime_minutes", 60)) * attempt


def experiment_model(wildcards):
    return str(Path(model_dir(EXPERIMENTS[wildcards.exp]["model"]), "model.done"))


def benchmark_list(wildcards):
    name = config["datasets"][wildcards.dataset]["list"]
    return f"data/external/{RUN}/benchmark/imglists/{name}.txt"


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def experiment_spec(wildcards):
    return EXPERIMENTS[wildcards.exp]


def diffusion_model_spec(wildcards):
    return config["diffusion_models"][wildcards.model]


def recon_shards(wildcards):
    return expand(
        "data/interim/{run}/recon/{exp}/{dataset}/seed-{seed}/shard-{shard:03d}.npz",
        run=RUN,
        exp=wildcards.exp,
        dataset=wildcards.dataset,
        seed=wildcards.seed,
        shard=range(shard_count(config, wildcards.dataset)),
    )


def score_tables():
    return expand(
        "data/processed/{run}/scores/{exp}/{dataset}/seed-{seed}.csv",
        run=RUN,
        exp=list(EXPERIMENTS),
        dataset=EVAL_SETS,
        seed=SEEDS,
    )


def figure_files():
    return [f"figures/{RUN}/{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")]


def train_log_names():
    return ["classifier", *config.get("diffusion_models", {})]


def train_logs():
    return [f"data/interim/{RUN}/models/{name}/train_log.csv" for name in train_log_names()]


def paper_tables():
    """Tables the paper inputs; the speed table once the benchmark rule is part of the workflow."""
    tables = ["paper/tables/main_results.tex"]
    if "speed" in SPEED_TABLES:
        tables.append(SPEED_TABLES["speed"])
    return tables


def final_targets():
    return [
        f"data/processed/{RUN}/metrics.csv",
        *TABLE_FILES,
        *figure_files(),
        "paper/ms.pdf",
        f"data/processed/{RUN}/exploration_summary.csv",
    ]


SPEED = config.get("speed", {})


def speed_experiments():
    """One GDM and one CFG experiment: `speed.experiments`, else gdm_main / cfg_main, else the
    first experiment of each method."""
    names = SPEED.get("experiments")
    if names is None:
        names = []
        for method, default in (("gdm", "gdm_main"), ("cfg", "cfg_main")):
            if default in EXPERIMENTS:
                names.append(default)
            else:
                names += [n for n, e in EXPERIMENTS.items() if e["method"] == method][:1]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"speed.experiments: unknown experiment(s) {unknown}")
    return names
