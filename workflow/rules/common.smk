"""Config validation, experiment resolution and input functions (no rules here)."""

import re
import sys
from pathlib import Path

PACKAGE_ROOT = str(Path(workflow.basedir) / "workflow" / "scripts")
sys.path.insert(0, PACKAGE_ROOT)
from diffguard import codedeps  # noqa: E402
from diffguard.schema import validate_config  # noqa: E402

if not workflow.modifier.skip_validation:
    # as snakemake.utils.validate (schema defaults filled in), but a typo costs a few lines
    # (key, dotted path, closest valid key), not the whole schema and config
    validate_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")

from diffguard.config import (  # noqa: E402
    child_processes_import,
    ensemble_members,
    evaluation_datasets,
    experiment_seeds,
    guidance_input_size,
    resolve_all,
    shard_count,
)

# Rule scripts run in child processes: they must import this checkout's package, not a copy
# an editable install (or a stale site-packages) would put first on their path.
child_processes_import(PACKAGE_ROOT)

RUN = config["run"]
EXPERIMENTS = resolve_all(config["experiments"])  # grid-generated experiments included
ID_SET, OOD_SETS = evaluation_datasets(config)
EVAL_SETS = [ID_SET, *OOD_SETS]
ALL_SETS = list(config["datasets"])
SEEDS = [int(s) for s in config.get("seeds", [0])]
EXP_SEEDS = {name: experiment_seeds(config, exp) for name, exp in EXPERIMENTS.items()}
# speed-only experiments (the released speed configs) are timed, never run over the datasets;
# inversion-trace experiments (Fig. 4) only invert a subsample of each evaluation set
TRACE_EXPERIMENTS = {n: e for n, e in EXPERIMENTS.items() if e["inversion_trace_only"]}
EVAL_EXPERIMENTS = {
    n: e
    for n, e in EXPERIMENTS.items()
    if not e.get("speed_only", False) and n not in TRACE_EXPERIMENTS
}
SPEED_TABLES = {}  # filled by workflow/rules/speed.smk when included
CPUS_PER_JOB = int(config.get("cpus_per_job", 1))
BENCHMARK_KIND = config["benchmark"]["kind"]
OPENOOD = config["benchmark"].get("openood", {})


def alternatives(names):
    """Regex matching exactly these names (experiment names may hold dots)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


# ----------------------------------------------------------------- downloads and models
DOWNLOADS = config.get("downloads", {})
CHECKSUM_DIR = config.get("checksum_dir", "config/checksums")
FETCH_KEYS = [k for k, v in DOWNLOADS.items() if not v.get("manual")]
MANUAL_FOLDER_KEYS = [k for k, v in DOWNLOADS.items() if v.get("manual") and v.get("folder")]
MANUAL_FILE_KEYS = [k for k, v in DOWNLOADS.items() if v.get("manual") and not v.get("folder")]
HASHED_KEYS = [k for k in DOWNLOADS if k not in MANUAL_FOLDER_KEYS]
ARCHIVE_KEYS = [k for k, v in DOWNLOADS.items() if v.get("extract")]
FETCH_KEYS_RE = alternatives(FETCH_KEYS)
MANUAL_FILE_KEYS_RE = alternatives(MANUAL_FILE_KEYS)
MANUAL_FOLDER_KEYS_RE = alternatives(MANUAL_FOLDER_KEYS)
HASHED_KEYS_RE = alternatives(HASHED_KEYS)
ARCHIVE_KEYS_RE = alternatives(ARCHIVE_KEYS)
WEIGHTS = config.get("weights", {})
TORCH_HUB_DIR = WEIGHTS.get("torch_hub_dir", "data/external/torch_hub")
HUB_FILES = dict(WEIGHTS.get("files", {}))  # name piq/torchvision expect -> download key
HUB_KEYS = list(HUB_FILES.values())
CLASSIFIER_SOURCE = config["classifier"].get("source", "train")
DIFFUSION_MODELS = config.get("diffusion_models", {})
TRAINED_MODELS = [n for n, m in DIFFUSION_MODELS.items() if m.get("source", "train") == "train"]
CONVERTED_MODELS = [n for n in DIFFUSION_MODELS if n not in TRAINED_MODELS]
CLASSIFIER_WEIGHTS = f"data/interim/{RUN}/models/classifier/weights/model.safetensors"
CLASSIFIER_SPEC = f"data/interim/{RUN}/models/classifier/weights/spec.json"


def _check_download_refs():
    """Every download key the config refers to exists (fail at parse time, naming the key)."""
    refs = [(f"weights.files.{name}", k) for name, k in HUB_FILES.items()]
    if CLASSIFIER_SOURCE == "download":
        refs.append(("classifier.checkpoint", config["classifier"].get("checkpoint")))
    for name in CONVERTED_MODELS:
        for role, key in DIFFUSION_MODELS[name].get("checkpoints", {}).items():
            refs.append((f"diffusion_models.{name}.checkpoints.{role}", key))
    if BENCHMARK_KIND == "openood":
        refs.append(("benchmark.openood.imglists", OPENOOD["imglists"]))
        for mount, spec in OPENOOD["mounts"].items():
            refs.append((f"benchmark.openood.mounts.{mount}", mount_key(spec)))
    for where, key in refs:
        if key not in DOWNLOADS:
            raise ValueError(f"{where}: {key!r} is not a key of `downloads` ({sorted(DOWNLOADS)})")
    for name, spec in config["datasets"].items():
        if BENCHMARK_KIND == "openood" and spec["list"] not in OPENOOD["lists"]:
            raise ValueError(
                f"datasets.{name}.list: {spec['list']!r} is not in benchmark.openood.lists"
            )


def download_file(key):
    return f"data/external/downloads/{key}/{DOWNLOADS[key]['filename']}"


def verified_stamp(key):
    """Written by verify_download after re-hashing the file (redone whenever the file changes)."""
    return f"data/external/verified/{key}.sha256"


def extracted_dir(key):
    return f"data/external/extracted/{key}"


def mount_key(spec):
    return spec if isinstance(spec, str) else spec["key"]


def mount_source(spec):
    """Input a mount needs: the extracted archive, or the linked manual folder."""
    key = mount_key(spec)
    return extracted_dir(key) if DOWNLOADS[key].get("extract") else download_file(key)


def mount_path(spec):
    sub = "" if isinstance(spec, str) else spec.get("subdir", "")
    return str(Path(mount_source(spec), sub)) if sub else mount_source(spec)


def verified_inputs(keys):
    """Files (and their verification stamps) of download keys."""
    return [download_file(k) for k in keys] + [verified_stamp(k) for k in keys]


_check_download_refs()


wildcard_constraints:
    exp=alternatives(EXPERIMENTS),
    dataset=alternatives(ALL_SETS),
    seed=r"\d+",
    shard=r"\d{3}",
    model=alternatives(DIFFUSION_MODELS),


def script_code(script):
    """Code inputs of a job running ``workflow/scripts/<script>`` (the script and the package
    modules it imports, transitively, read with ``ast``), so that editing one reruns exactly the
    jobs that can execute it."""
    return codedeps.script_code(script, PACKAGE_ROOT, workflow.basedir)


def model_dir(name):
    return f"data/interim/{RUN}/models/{name}"


def experiment_model_dir(wildcards):
    return model_dir(EXPERIMENTS[wildcards.exp]["model"])


def reconstruct_runtime(wildcards, attempt):
    """Minutes per shard job, growing with each retry (preemption, slow nodes)."""
    return int(config.get("shard_runtime_minutes", 60)) * attempt


def job_mem_mb(wildcards, attempt):
    """Memory per model job, doubling with each retry (an out-of-memory kill is retried)."""
    return int(config.get("mem_mb_per_job", 8000)) * 2 ** (attempt - 1)


RETRIES = int(config.get("retries", 2))


def perceptual_weights():
    """torch-hub files the configured distances or early-stop metrics need (DISTS, LPIPS)."""
    needed = set(config.get("distances", [])) & {"dists", "lpips"}
    for exp in EXPERIMENTS.values():
        if exp["method"] == "gdm":
            metrics = exp.get("gdm", {}).get("early_stop_metrics", ["psnr", "dists"])
            needed |= set(metrics) & {"dists", "lpips"}
    if not needed:
        return []
    if not HUB_KEYS:
        raise ValueError(
            f"distances/early-stop metrics {sorted(needed)} need VGG16/DISTS weights: list their "
            "download keys in `weights.files`"
        )
    return [f"{TORCH_HUB_DIR}/checkpoints/{name}" for name in HUB_FILES]


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


def list_size(dataset):
    """Images of a dataset: its `n`, else the length of its selected list (a checkpoint)."""
    if config["datasets"][dataset].get("n") is not None:
        return None
    path = checkpoints.select_images.get(dataset=dataset).output[0]
    with open(path) as handle:
        return sum(1 for line in handle if line.strip() and not line.startswith("#"))


def recon_shards(wildcards):
    return expand(
        "data/interim/{run}/recon/{exp}/{dataset}/seed-{seed}/shard-{shard:03d}.npz",
        run=RUN,
        exp=wildcards.exp,
        dataset=wildcards.dataset,
        seed=wildcards.seed,
        shard=range(shard_count(config, wildcards.dataset, list_size(wildcards.dataset))),
    )


def score_tables():
    return [
        f"data/processed/{RUN}/scores/{exp}/{dataset}/seed-{seed}.csv"
        for exp in EVAL_EXPERIMENTS
        for dataset in EVAL_SETS
        for seed in EXP_SEEDS[exp]
    ]


def figure_files():
    return [f"figures/{RUN}/{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")]


def train_log_names():
    """Models trained by this workflow (downloaded ones have no training log)."""
    return (["classifier"] if CLASSIFIER_SOURCE == "train" else []) + TRAINED_MODELS


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


# ------------------------------------------- classifier outputs: caches, MC-dropout, ensemble
# The classifier spec a prepared checkpoint records (ensemble members share it).
CLASSIFIER_SPEC_PARAMS = {
    **{
        k: v
        for k, v in config["classifier"].items()
        if k not in ("source", "checkpoint", "ensemble_members", "mc_dropout")
    },
    "num_classes": config["benchmark"]["num_classes"],
    "in_channels": config["benchmark"]["channels"],
    "input_size": config["classifier"].get("input_size", config["benchmark"]["image_size"]),
}
ENSEMBLE_MEMBERS = ensemble_members(config)
BASELINES = config.get("baselines", ["msp"])
MC_DROPOUT = config["classifier"].get("mc_dropout", {})


def member_dir(index):
    return f"data/interim/{RUN}/models/ensemble/member-{index}"


def member_checkpoint(wildcards):
    """A member's checkpoint file, or the extracted archive holding it."""
    key = ENSEMBLE_MEMBERS[int(wildcards.member)]["checkpoint"]
    return extracted_dir(key) if DOWNLOADS[key].get("extract") else download_file(key)


def eval_set(dataset):
    return config["datasets"][dataset]["role"] != "train"


def ensemble_inputs(wildcards):
    """Members' weights + specs, for the evaluation sets when deep_ensemble is a baseline."""
    if "deep_ensemble" not in BASELINES or not eval_set(wildcards.dataset):
        return []
    return [
        f"{member_dir(i)}/weights/{name}"
        for i in range(len(ENSEMBLE_MEMBERS))
        for name in ("model.safetensors", "spec.json")
    ]


def prediction_cache(dataset, size=None):
    """The benchmark-size prediction cache (size None) or the one at input size ``size``."""
    sub = "" if size is None else f"input-{size}/"
    return f"data/interim/{RUN}/predictions/{sub}{dataset}.npz"


def guidance_predictions(wildcards):
    """The cache a reconstruction job takes its guidance labels (`preds`) from."""
    size = guidance_input_size(config, EXPERIMENTS[wildcards.exp])
    return prediction_cache(wildcards.dataset, size)
