"""What a run plans, from its validated config: the names and paths the rule files read.

Every ``workflow/rules/*.smk`` file gets what it needs from :func:`run_plan` (validated once,
memoised per config object) instead of from globals another rule file defined, so the include
order does not matter (tests/workflow/test_smk_names.py). Defaults come from the schema
(``workflow/schemas/config.schema.yaml``), filled in by the validation here; the few blocks
passed whole to jobs (``classifier``) get theirs on a copy, so job parameters stay as written.
Imported while the workflow is parsed: standard library and torch-free package modules only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from diffguard import codedeps, targets, tuning
from diffguard.config import (
    ConfigError,
    ensemble_members,
    evaluation_datasets,
    experiment_seeds,
    guidance_input_size,
    method_settings,
    resolve_all,
    resolve_experiment,
    shard_count,
    sweep_spec,
    validation_datasets,
)
from diffguard.methods import METHODS

SCHEMA = "workflow/schemas/config.schema.yaml"
REPORT_SCHEMA = "workflow/schemas/report.schema.yaml"
PERCEPTUAL = frozenset({"dists", "lpips"})
"""Similarities whose networks load torch-hub weights (VGG16, DISTS/LPIPS)."""


def alternatives(names: Iterable[str]) -> str:
    """Regex matching exactly these names (experiment names may hold dots); none: never."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


def schema_filled(schema: Mapping[str, Any], dotted: str, value: Any) -> Any:
    """A copy of ``value`` (None: an empty block) with the schema defaults of the property
    ``dotted`` filled in.

    For blocks whose parent has no ``default`` on purpose (the classifier block is a job
    parameter: filling it would change the parameter, and rerun its jobs).
    """
    from diffguard.schema import config_errors

    sub: Mapping[str, Any] = schema
    for part in dotted.split("."):
        sub = sub["properties"][part]
    filled = {"value": copy.deepcopy(value) if value is not None else {}}
    errors = config_errors(filled, {"properties": {"value": sub}})
    if errors:
        raise ConfigError(f"{dotted}: {errors[0].message}")
    return filled["value"]


@dataclass(frozen=True)
class RunPlan:
    """The validated config and what the rule files derive from it (paths, sets, targets)."""

    config: dict[str, Any] = field(repr=False)
    basedir: Path
    schema: Mapping[str, Any] = field(repr=False)

    # ------------------------------------------------------------------ datasets, experiments
    @property
    def run(self) -> str:
        return str(self.config["run"])

    @cached_property
    def experiments(self) -> dict[str, dict[str, Any]]:
        """Every experiment, grid- and tune-generated ones included, resolved through
        ``extends``."""
        resolved = resolve_all(self.config["experiments"])
        raw = {**self.config["experiments"], **self.tune_raw}
        for tune in self.tunes.values():
            base = resolved[tune.experiment]
            if base["speed_only"] or base["inversion_trace_only"]:
                raise ConfigError(
                    f"tune.{tune.name}.experiment: {tune.experiment!r} is speed-only or an "
                    "inversion trace; tune an experiment that is evaluated on the datasets"
                )
            other = [k for k in tune.keys if k.split(".")[0] in set(METHODS) - {base["method"]}]
            if other:
                raise ConfigError(
                    f"tune.{tune.name}.grid: {other} set another method's settings; "
                    f"{tune.experiment!r} runs {base['method']!r}"
                )
            for index, name in enumerate(tune.point_experiments):
                try:
                    resolved[name] = resolve_experiment(raw, name)
                    method_settings(resolved[name])
                except ConfigError as err:
                    raise ConfigError(
                        f"tune.{tune.name}.grid: point {tune.settings(index)}: {err}"
                    ) from err
        return resolved

    # ------------------------------------------------------------------------------ tuning
    @cached_property
    def tunes(self) -> dict[str, tuning.Tune]:
        """``tune:`` entries, checked against the experiments and the validation sets."""
        tunes = tuning.parse_tunes(self.config)
        if tunes:
            roles = {d: self.config["datasets"][d]["role"] for d in self.val_sets[1]}
            for tune in tunes.values():
                tuning.check_objective(tune, roles)
        return tunes

    @cached_property
    def tune_raw(self) -> dict[str, dict[str, Any]]:
        """The generated (unresolved) grid experiments of every tune."""
        return tuning.tune_experiments(self.config, self.tunes)

    @cached_property
    def val_sets(self) -> tuple[str, list[str]]:
        """``(val ID set, val OOD sets)`` (``split: val``); raises without them."""
        return validation_datasets(self.config)

    @property
    def has_val_sets(self) -> bool:
        return any(v.get("split") == "val" for v in self.config["datasets"].values())

    @property
    def val_eval_sets(self) -> list[str]:
        return [self.val_sets[0], *self.val_sets[1]] if self.has_val_sets else []

    def val_roles(self) -> dict[str, str]:
        return {d: self.config["datasets"][d]["role"] for d in self.val_sets[1]}

    def tune_dir(self, name: str) -> str:
        return f"data/processed/{self.run}/tune/{name}"

    def tune_outputs(self, name: str) -> dict[str, str]:
        return {
            "sweep": f"{self.tune_dir(name)}/sweep.csv",
            "chosen": f"{self.tune_dir(name)}/chosen.json",
        }

    def tune_scores(self, wildcards: Any) -> list[str]:
        """The tune job's score inputs: its grid experiments on the validation sets only."""
        tune = self.tunes[wildcards.tune]
        return [
            f"data/processed/{self.run}/scores/{exp}/{dataset}/seed-{self.exp_seeds[exp][0]}.csv"
            for exp in tune.point_experiments
            for dataset in self.val_eval_sets
        ]

    def tune_baselines(self, wildcards: Any) -> list[str]:
        """Validation baseline tables (a combination rule is chosen): validation sets only."""
        if self.tunes[wildcards.tune].baseline is None:
            return []
        return [f"data/processed/{self.run}/baselines/{d}.csv" for d in self.val_eval_sets]

    def tuned_by(self, exp: str) -> tuning.Tune | None:
        """The tune whose choice ``exp`` runs with: the tuned experiment or one extending it
        (its own grid points excepted)."""
        raw = self.config["experiments"]
        for tune in self.tunes.values():
            if exp in raw and tuning.descends_from(raw, exp, tune.experiment):
                return tune
        return None

    def chosen_input(self, wildcards: Any) -> list[str]:
        """``chosen.json`` of the tune applied to a reconstruction job's experiment (or none)."""
        tune = self.tuned_by(wildcards.exp)
        return [] if tune is None else [self.tune_outputs(tune.name)["chosen"]]

    def tune_files(self) -> list[str]:
        return [f for name in self.tunes for f in self.tune_outputs(name).values()]

    @cached_property
    def sets(self) -> tuple[str, list[str]]:
        return evaluation_datasets(self.config)

    @property
    def id_set(self) -> str:
        return self.sets[0]

    @property
    def ood_sets(self) -> list[str]:
        return self.sets[1]

    @property
    def eval_sets(self) -> list[str]:
        return [self.id_set, *self.ood_sets]

    @property
    def all_sets(self) -> list[str]:
        return list(self.config["datasets"])

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.config["seeds"]]

    @cached_property
    def exp_seeds(self) -> dict[str, list[int]]:
        return {n: experiment_seeds(self.config, e) for n, e in self.experiments.items()}

    @cached_property
    def trace_experiments(self) -> dict[str, dict[str, Any]]:
        """Fig. 4's ``inversion_trace_only`` experiments (a subsample, never evaluated)."""
        return {n: e for n, e in self.experiments.items() if e["inversion_trace_only"]}

    @cached_property
    def eval_experiments(self) -> dict[str, dict[str, Any]]:
        """Experiments run over the datasets: not speed-only (timed only), not traces."""
        return {
            n: e
            for n, e in self.experiments.items()
            if not e["speed_only"] and n not in self.trace_experiments and n not in self.tune_raw
        }

    @property
    def headline_experiment(self) -> str:
        return self.config.get("headline_experiment") or next(iter(self.eval_experiments))

    @property
    def headline_seed(self) -> int:
        return self.seeds[0]

    def is_eval_set(self, dataset: str) -> bool:
        return self.config["datasets"][dataset]["role"] != "train"

    # ------------------------------------------------------------------------- code and models
    @property
    def package_root(self) -> str:
        return str(self.basedir / "workflow" / "scripts")

    def script_code(self, script: str) -> list[str]:
        """Code inputs of a job running ``workflow/scripts/<script>``: the script and the
        package modules it imports, transitively (read with ``ast``), so that editing one
        reruns exactly the jobs that can execute it."""
        return codedeps.script_code(script, self.package_root, self.basedir)

    def model_dir(self, name: str) -> str:
        return f"data/interim/{self.run}/models/{name}"

    def experiment_model_dir(self, wildcards: Any) -> str:
        return self.model_dir(self.experiments[wildcards.exp]["model"])

    def experiment_model(self, wildcards: Any) -> str:
        return str(Path(self.experiment_model_dir(wildcards), "model.done"))

    def experiment_spec(self, wildcards: Any) -> dict[str, Any]:
        """The resolved experiment; a tuned one lists the keys its job takes from
        ``chosen.json`` (``tuned_keys``, see :func:`diffguard.tuning.apply_chosen`)."""
        spec = self.experiments[wildcards.exp]
        tune = self.tuned_by(wildcards.exp)
        if tune is None:
            return spec
        own = tuning.own_keys(self.config["experiments"], wildcards.exp, tune.experiment)
        return {**spec, "tuned_keys": [k for k in tune.keys if k not in own]}

    @property
    def classifier_dir(self) -> str:
        return f"data/interim/{self.run}/models/classifier/weights"

    @property
    def classifier_weights(self) -> str:
        return f"{self.classifier_dir}/model.safetensors"

    @property
    def classifier_spec(self) -> str:
        return f"{self.classifier_dir}/spec.json"

    @property
    def classifier_source(self) -> str:
        return str(self.config["classifier"]["source"])

    @property
    def diffusion_models(self) -> dict[str, dict[str, Any]]:
        return self.config["diffusion_models"]

    @property
    def trained_models(self) -> list[str]:
        return [n for n, m in self.diffusion_models.items() if m["source"] == "train"]

    @property
    def converted_models(self) -> list[str]:
        return [n for n in self.diffusion_models if n not in self.trained_models]

    def train_threads(self, wildcards: Any) -> int:
        """``diffusion_models.<model>.train.threads``; no schema default: ``cpus_per_job``."""
        train = self.diffusion_models[wildcards.model].get("train", {})
        return int(train.get("threads", self.config["cpus_per_job"]))

    def train_log_names(self) -> list[str]:
        """Models trained by this workflow (downloaded ones have no training log)."""
        classifier = ["classifier"] if self.classifier_source == "train" else []
        return classifier + self.trained_models

    def train_logs(self) -> list[str]:
        return [f"{self.model_dir(name)}/train_log.csv" for name in self.train_log_names()]

    # --------------------------------------------------------------------- runtime resources
    def reconstruct_runtime(self, wildcards: Any, attempt: int) -> int:
        """Minutes per shard job, growing with each retry (preemption, slow nodes)."""
        return int(self.config["shard_runtime_minutes"]) * attempt

    def job_mem_mb(self, wildcards: Any, attempt: int) -> int:
        """Memory per model job, doubling with each retry (an out-of-memory kill is retried)."""
        return int(self.config["mem_mb_per_job"]) * 2 ** (attempt - 1)

    @property
    def dtype(self) -> str | None:
        """Top-level precision fallback: no schema default on purpose (None = per model)."""
        return self.config.get("dtype")

    # --------------------------------------------------------------------------- downloads
    @property
    def downloads(self) -> dict[str, dict[str, Any]]:
        return self.config["downloads"]

    def download_keys(self, kind: str) -> list[str]:
        """Keys of ``downloads`` of one kind: ``fetch`` (url/gdrive), ``manual_file``,
        ``manual_folder``, ``hashed`` (all but manual folders) or ``archive`` (extracted)."""
        d = self.downloads
        select = {
            "fetch": lambda v: not v.get("manual"),
            "manual_file": lambda v: bool(v.get("manual")) and not v["folder"],
            "manual_folder": lambda v: bool(v.get("manual")) and v["folder"],
            "hashed": lambda v: not (v.get("manual") and v["folder"]),
            "archive": lambda v: v["extract"],
        }[kind]
        return [k for k, v in d.items() if select(v)]

    def download_keys_re(self, kind: str) -> str:
        return alternatives(self.download_keys(kind))

    def download_file(self, key: str) -> str:
        return f"data/external/downloads/{key}/{self.downloads[key]['filename']}"

    @staticmethod
    def verified_stamp(key: str) -> str:
        """Written by verify_download after re-hashing the file (redone when it changes)."""
        return f"data/external/verified/{key}.sha256"

    @staticmethod
    def extracted_dir(key: str) -> str:
        return f"data/external/extracted/{key}"

    def verified_inputs(self, keys: Iterable[str]) -> list[str]:
        """Files (and their verification stamps) of download keys."""
        keys = list(keys)
        return [self.download_file(k) for k in keys] + [self.verified_stamp(k) for k in keys]

    def downloaded(self, key: str) -> str:
        """A download's input: the extracted archive, or the file (or linked manual folder)."""
        return (
            self.extracted_dir(key) if self.downloads[key]["extract"] else self.download_file(key)
        )

    @property
    def benchmark_source_keys(self) -> list[str]:
        """Download keys the mnist benchmark is cut from (``benchmark.mnist.sources``)."""
        benchmark = self.config["benchmark"]
        if benchmark["kind"] != "mnist":
            return []
        return list(benchmark.get("mnist", {}).get("sources", {}).values())

    @property
    def benchmark_sources(self) -> dict[str, str]:
        """Source role -> extracted download folder, for the mnist benchmark ({} otherwise)."""
        benchmark = self.config["benchmark"]
        if benchmark["kind"] != "mnist":
            return {}
        return {
            role: self.downloaded(key)
            for role, key in benchmark.get("mnist", {}).get("sources", {}).items()
        }

    @property
    def openood(self) -> dict[str, Any]:
        """``benchmark.openood`` (OpenOOD runs only)."""
        return self.config["benchmark"]["openood"]

    @staticmethod
    def mount_key(spec: str | Mapping[str, str]) -> str:
        return spec if isinstance(spec, str) else spec["key"]

    def mount_path(self, spec: str | Mapping[str, str]) -> str:
        source = self.downloaded(self.mount_key(spec))
        sub = "" if isinstance(spec, str) else spec["subdir"]
        return str(Path(source, sub)) if sub else source

    @property
    def hub_files(self) -> dict[str, str]:
        """File name piq/torchvision expect -> download key."""
        return dict(self.config["weights"]["files"])

    @property
    def torch_hub_dir(self) -> str:
        return str(self.config["weights"]["torch_hub_dir"])

    def hub_weights(self) -> list[str]:
        return [f"{self.torch_hub_dir}/checkpoints/{name}" for name in self.hub_files]

    def perceptual_weights(self) -> list[str]:
        """torch-hub files the configured distances or early-stop metrics need (DISTS, LPIPS)."""
        needed = set(self.config["distances"]) & PERCEPTUAL
        for exp in self.experiments.values():
            if exp["method"] == "gdm":
                needed |= set(method_settings(exp).early_stop_metrics) & PERCEPTUAL
        if not needed:
            return []
        if not self.hub_files:
            raise ConfigError(
                f"distances/early-stop metrics {sorted(needed)} need VGG16/DISTS weights: list "
                "their download keys in `weights.files`"
            )
        return self.hub_weights()

    def check_download_refs(self) -> None:
        """Every download key the config refers to exists (fails naming the key)."""
        config = self.config
        refs = [(f"weights.files.{name}", k) for name, k in self.hub_files.items()]
        if self.classifier_source == "download":
            refs.append(("classifier.checkpoint", config["classifier"].get("checkpoint")))
        for name in self.converted_models:
            for role, key in self.diffusion_models[name].get("checkpoints", {}).items():
                refs.append((f"diffusion_models.{name}.checkpoints.{role}", key))
        openood = config["benchmark"]["kind"] == "openood"
        if openood:
            refs.append(("benchmark.openood.imglists", self.openood["imglists"]))
            for mount, spec in self.openood["mounts"].items():
                refs.append((f"benchmark.openood.mounts.{mount}", self.mount_key(spec)))
        mnist_sources = config["benchmark"].get("mnist", {}).get("sources", {})
        refs += [(f"benchmark.mnist.sources.{role}", k) for role, k in mnist_sources.items()]
        for where, key in refs:
            if key not in self.downloads:
                raise ConfigError(
                    f"{where}: {key!r} is not a key of `downloads` ({sorted(self.downloads)})"
                )
        self._check_mnist_lists()
        for name, spec in config["datasets"].items():
            if openood and spec["list"] not in self.openood["lists"]:
                raise ConfigError(
                    f"datasets.{name}.list: {spec['list']!r} is not in benchmark.openood.lists"
                )

    def _check_mnist_lists(self) -> None:
        """mnist benchmark: known list names, archive sources (fails naming the key)."""
        benchmark = self.config["benchmark"]
        if benchmark["kind"] != "mnist":
            return
        from diffguard.mnist_lists import SET_NAMES, SOURCES_OF

        sources = benchmark.get("mnist", {}).get("sources", {})
        for role, key in sources.items():
            if not self.downloads[key]["extract"]:
                raise ConfigError(
                    f"benchmark.mnist.sources.{role}: downloads.{key} needs extract: true"
                )
        for name, spec in self.config["datasets"].items():
            if spec["list"] not in SET_NAMES:
                raise ConfigError(
                    f"datasets.{name}.list: {spec['list']!r} is not an mnist list {SET_NAMES}"
                )
            role = SOURCES_OF.get(spec["list"])
            if role is not None and role not in sources:
                raise ConfigError(
                    f"datasets.{name}.list {spec['list']!r} needs benchmark.mnist.sources.{role}"
                )

    # -------------------------------------------------------------------- classifier outputs
    @cached_property
    def ensemble_members(self) -> list[dict[str, Any]]:
        return ensemble_members(self.config)

    @property
    def baselines(self) -> list[str]:
        return list(self.config["baselines"])

    def member_dir(self, index: int | str) -> str:
        return f"data/interim/{self.run}/models/ensemble/member-{index}"

    def member_checkpoint(self, wildcards: Any) -> str:
        """A member's checkpoint file, or the extracted archive holding it."""
        return self.downloaded(self.ensemble_members[int(wildcards.member)]["checkpoint"])

    def member_classifier(self, wildcards: Any) -> dict[str, Any]:
        """The classifier block of a trained ensemble member: the same, another seed."""
        classifier = self.config["classifier"]
        seed = self.ensemble_members[int(wildcards.member)]["seed"]
        return {**classifier, "train": {**classifier.get("train", {}), "seed": seed}}

    @property
    def classifier_spec_params(self) -> dict[str, Any]:
        """The classifier spec a prepared checkpoint records (ensemble members share it)."""
        classifier, benchmark = self.config["classifier"], self.config["benchmark"]
        skip = ("source", "checkpoint", "path", "ensemble_members", "mc_dropout")
        return {
            **{k: v for k, v in classifier.items() if k not in skip},
            "num_classes": benchmark["num_classes"],
            "in_channels": benchmark["channels"],
            # no schema default: the benchmark's side unless the classifier has its own
            "input_size": classifier.get("input_size", benchmark["image_size"]),
        }

    @cached_property
    def mc_dropout(self) -> dict[str, Any]:
        """``classifier.mc_dropout`` with its schema defaults (on a copy, see the module)."""
        block = self.config["classifier"].get("mc_dropout")
        return schema_filled(self.schema, "classifier.mc_dropout", block)

    def mc_passes(self, wildcards: Any) -> int:
        """MC-Dropout passes of a prediction cache: on evaluation sets, with the baseline."""
        if "mc_dropout" in self.baselines and self.is_eval_set(wildcards.dataset):
            return int(self.mc_dropout["passes"])
        return 0

    def ensemble_inputs(self, wildcards: Any) -> list[str]:
        """Members' weights + specs, for the evaluation sets when deep_ensemble is a baseline."""
        if "deep_ensemble" not in self.baselines or not self.is_eval_set(wildcards.dataset):
            return []
        return [
            f"{self.member_dir(i)}/weights/{name}"
            for i in range(len(self.ensemble_members))
            for name in ("model.safetensors", "spec.json")
        ]

    def prediction_cache(self, dataset: str, size: int | str | None = None) -> str:
        """The benchmark-size prediction cache (size None) or the one at input size ``size``."""
        sub = "" if size is None else f"input-{size}/"
        return f"data/interim/{self.run}/predictions/{sub}{dataset}.npz"

    def guidance_predictions(self, wildcards: Any) -> str:
        """The cache a reconstruction job takes its guidance labels (``preds``) from."""
        size = guidance_input_size(self.config, self.experiments[wildcards.exp])
        return self.prediction_cache(wildcards.dataset, size)

    def list_size(self, dataset: str, select_images: Any) -> int | None:
        """Images of a dataset: None with ``n`` set, else the length of its selected list
        (``select_images``: the checkpoint; known once it ran)."""
        if self.config["datasets"][dataset].get("n") is not None:  # no schema default
            return None
        path = select_images.get(dataset=dataset).output[0]
        with open(path) as handle:
            return sum(1 for line in handle if line.strip() and not line.startswith("#"))

    def recon_shards(self, wildcards: Any, select_images: Any) -> list[str]:
        """The shards of one experiment, dataset and seed (count from the selected list)."""
        available = self.list_size(wildcards.dataset, select_images)
        count = shard_count(self.config, wildcards.dataset, available)
        folder = f"data/interim/{self.run}/recon/{wildcards.exp}/{wildcards.dataset}"
        return [f"{folder}/seed-{wildcards.seed}/shard-{i:03d}.npz" for i in range(count)]

    def score_tables(self) -> list[str]:
        return [
            f"data/processed/{self.run}/scores/{exp}/{dataset}/seed-{seed}.csv"
            for exp in self.eval_experiments
            for dataset in self.eval_sets
            for seed in self.exp_seeds[exp]
        ]

    # ------------------------------------------------------------------------------- claims
    @cached_property
    def claims(self) -> dict[str, Any] | None:
        """The ``claims:`` section (schema defaults filled in), checked against the run; None:
        the run checks no claims."""
        section = self.config.get("claims")  # no schema default: absent = no claims table
        if section is None:
            return None
        distances = list(self.config["distances"])
        fixed = [("claims.change_distance", section["change_distance"])]
        if section["tune"] is None:
            fixed.append(("claims.distance", section["distance"]))
        if section["x0_ablation"] is not None:
            fixed.append(("claims.x0_ablation.distance", section["x0_ablation"]["distance"]))
        for key, distance in fixed:
            if distance not in distances:
                raise ConfigError(f"{key}: {distance!r} is not one of `distances` {distances}")
        tunes = self.config.get("tune")  # no schema default: absent = no tuning stage
        if section["tune"] is not None and section["tune"] not in (tunes or {}):
            raise ConfigError(
                f"claims.tune: {section['tune']!r} is not a key of `tune` {sorted(tunes or {})}"
            )
        return section

    @cached_property
    def claim_sets(self) -> list[str]:
        """The OOD test sets the claims average over (``claims.sets``)."""
        role = self.claims["sets"] if self.claims else "near"
        roles = {d: self.config["datasets"][d]["role"] for d in self.ood_sets}
        sets = [d for d, r in roles.items() if role in ("all", r)]
        if not sets:
            raise ConfigError(
                f"claims.sets: {role!r}, but the run has no {role} OOD test set "
                f"(OOD sets and roles: {roles}); set claims.sets to one of their roles or all"
            )
        return sets

    def claim_experiments(self) -> list[str]:
        """Configured experiments the claims compare (the others are reported `not run`)."""
        section = self.claims or {}
        names = [section.get("diffguard")]
        for block, keys in (
            ("x0_ablation", ("with", "without")),
            ("oracle", ("predicted", "oracle")),
        ):
            names += [section[block][k] for k in keys] if section.get(block) else []
        return [n for n in dict.fromkeys(names) if n in self.eval_experiments]

    def claims_chosen(self) -> list[str]:
        """The tune's ``chosen.json`` the claims read (``claims.tune``), else nothing."""
        tune = (self.claims or {}).get("tune")
        return [] if tune is None else [self.tune_outputs(tune)["chosen"]]

    def claims_inputs(self) -> dict[str, list[str]]:
        """Test-split score tables of the compared experiments and baselines (ID + claim sets)."""
        sets = [self.id_set, *self.claim_sets]
        return {
            "scores": [
                f"data/processed/{self.run}/scores/{exp}/{dataset}/seed-{seed}.csv"
                for exp in self.claim_experiments()
                for dataset in sets
                for seed in self.exp_seeds[exp]
            ],
            "baselines": [f"data/processed/{self.run}/baselines/{d}.csv" for d in sets],
            "chosen": self.claims_chosen(),
        }

    def claims_tables(self) -> dict[str, str]:
        """``claims.{csv,md}`` and ``paper/tables/claims.tex`` (empty: no claims section)."""
        return targets.TABLE["claims"].files(self.run) if self.claims else {}

    # -------------------------------------------------------------------------------- speed
    @cached_property
    def speed_experiments(self) -> list[str]:
        """One GDM and one CFG experiment: ``speed.experiments``, else gdm_main / cfg_main,
        else the first experiment of each method."""
        names = self.config["speed"].get("experiments")  # no schema default: derived here
        if names is None:
            names = []
            for method, default in (("gdm", "gdm_main"), ("cfg", "cfg_main")):
                if default in self.experiments:
                    names.append(default)
                else:
                    names += [n for n, e in self.experiments.items() if e["method"] == method][:1]
        unknown = [n for n in names if n not in self.experiments]
        if unknown:
            raise ConfigError(f"speed.experiments: unknown experiment(s) {unknown}")
        return list(names)

    @property
    def speed_threads(self) -> int:
        """``speed.threads``; no schema default: the model jobs' ``cpus_per_job``."""
        return int(self.config["speed"].get("threads") or self.config["cpus_per_job"])

    def speed_tables(self) -> dict[str, str]:
        return targets.TABLE["speed"].files(self.run)

    # ------------------------------------------------------------------------ report, figures
    @cached_property
    def report(self) -> dict[str, Any]:
        """The run's ``report:`` section (paper tables, check, figures), validated."""
        from diffguard.report_config import load_report_section

        return load_report_section(
            self.config,
            default=self.basedir / "config" / "report" / f"{self.run}.yaml",
            schema=self.basedir / REPORT_SCHEMA,
            experiments=self.experiments,
        )

    @property
    def paper_tables(self) -> dict[str, dict[str, Any]]:
        return self.report["tables"]

    def paper_table_outputs(self) -> dict[str, dict[str, str]]:
        table = targets.TABLE["paper_table"]
        return {name: table.files(self.run, name) for name in self.paper_tables}

    def published_files(self) -> list[str]:
        """Published CSVs the paper tables compare with (a table's ``published``, no schema
        default: its own name; null: nothing was published)."""
        tables = self.paper_tables.items()
        stems = [spec.get("published", name) for name, spec in tables]
        return [f"{self.report['published_dir']}/{stem}.csv" for stem in stems if stem is not None]

    @property
    def ablation(self) -> dict[str, Any] | None:
        """Fig. 6 (``report.figures.ablation_grid``), its ``dataset`` filled in (the ID set)."""
        spec = self.report["figures"].get("ablation_grid")
        return None if spec is None else {"dataset": self.id_set, **spec}

    def ablation_shards(self) -> list[str]:
        """Fig. 6: the first shard of each row's experiment on the shown dataset (first seed)."""
        spec = self.ablation or {"rows": {}}
        return [
            f"data/interim/{self.run}/recon/{exp}/{spec['dataset']}/"
            f"seed-{self.exp_seeds[exp][0]}/shard-000.npz"
            for exp in spec["rows"].values()
        ]

    def check_outputs(self) -> dict[str, str]:
        return targets.TABLE["reproduction_check"].files(self.run)

    @property
    def check_gate(self) -> str:
        return f"data/processed/{self.run}/check/gate.txt"

    @cached_property
    def sweeps(self) -> dict[str, dict[str, Any]]:
        """Fig. 7: sweep name -> axis label, points (experiment -> value), reference."""
        return {
            name: {
                "label": spec.get("label", spec["setting"]),  # no schema default: the setting
                "points": sweep_spec(self.experiments, spec["experiment"], spec["setting"]),
                "reference": spec["experiment"],
            }
            for name, spec in self.report["figures"].get("sweeps", {}).items()
        }

    @property
    def fig2(self) -> dict[str, Any] | None:
        """``figures.fig2`` (None: the run draws no Fig. 2)."""
        return self.config["figures"].get("fig2")

    @property
    def fig2_dataset(self) -> str:
        """``figures.fig2.dataset``; no schema default: the ID set."""
        return self.fig2.get("dataset") or self.id_set  # type: ignore[union-attr]

    @property
    def fig2_model(self) -> str | None:
        """``figures.fig2.model``; no schema default: the model of the headline experiment
        (here: of the first experiment of any kind when no headline is configured)."""
        headline = self.config.get("headline_experiment") or next(iter(self.experiments))
        return self.fig2.get("model") or self.experiments[headline].get("model")  # type: ignore[union-attr]

    def figures(self) -> list[str]:
        """Figure stems of the run, in the registry's (the paper's) order."""
        fig2 = self.fig2
        return targets.run_figures(
            trains_models=bool(self.train_log_names()),
            report_figures=self.report["figures"],
            fig2_noisy=None if fig2 is None else bool(fig2.get("noisy_classifier")),
            tunes=bool(self.tunes),
        )

    def figure_registry(self, rule: str) -> list[targets.Figure]:
        """The registry entries of this run's figures that ``rule`` draws."""
        return [targets.FIGURE[s] for s in self.figures() if targets.FIGURE[s].rule == rule]

    def figure_files(self) -> list[str]:
        return targets.figure_files(self.run, self.figures())

    def table_files(self) -> list[str]:
        main = targets.TABLE["main_results"].files(self.run)
        papers = [f for outs in self.paper_table_outputs().values() for f in outs.values()]
        claims = self.claims_tables().values()
        return [*main.values(), *papers, *self.check_outputs().values(), *claims]

    def paper_inputs(self) -> list[str]:
        """Tables the paper inputs besides the published ones: main results, speed, claims."""
        claims = [self.claims_tables()["tex"]] if self.claims else []
        return [
            targets.TABLE["main_results"].files(self.run)["tex"],
            self.speed_tables()["tex"],
            *claims,
        ]

    def final_targets(self) -> list[str]:
        """What ``snakemake`` builds by default."""
        return [
            f"data/processed/{self.run}/metrics.csv",
            *self.tune_files(),
            *self.table_files(),
            *self.figure_files(),
            "paper/ms.pdf",
            f"data/processed/{self.run}/exploration_summary.csv",
        ]


_PLANS: dict[int, RunPlan] = {}


def run_plan(config: dict[str, Any], workflow: Any) -> RunPlan:
    """The plan of ``config``: validated (schema defaults filled in place) on the first call.

    Every rule file calls this; the config object is the same for all of them, so it is
    validated and resolved once, whichever file Snakemake includes first.
    """
    plan = _PLANS.get(id(config))
    if plan is not None and plan.config is config:
        return plan
    from diffguard.schema import config_errors, format_errors, load_schema

    basedir = Path(workflow.basedir)
    schema = load_schema(basedir / SCHEMA)
    # as snakemake.utils.validate (schema defaults filled in), but a typo costs a few lines
    # (key, dotted path, closest valid key), not the whole schema and config; the defaults
    # are filled in even where validation is skipped (they live in the schema only)
    errors = config_errors(config, schema)
    if errors and not workflow.modifier.skip_validation:
        raise ConfigError(format_errors(errors, source=f"schema {basedir / SCHEMA}"))
    plan = RunPlan(config, basedir, schema)
    plan.check_download_refs()
    _PLANS[id(config)] = plan
    return plan
