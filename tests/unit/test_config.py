"""Experiment resolution and config validation (every shipped config must validate)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import validate

from diffguard.config import (
    ConfigError,
    experiment_precision,
    method_settings,
    resolve_experiment,
)
from diffguard.gdm import GdmSettings
from diffguard.schema import MAX_ERRORS, load_schema, validate_config

SCHEMA = "workflow/schemas/config.schema.yaml"

EXPERIMENTS = {
    "base": {"method": "gdm", "gdm": {"classifier_scale": 3.0, "cutouts_num": 8}},
    "child": {"extends": "base", "gdm": {"cutouts_num": -1}},
    "grandchild": {"extends": "child", "oracle_labels": True},
}


def test_extends_chain_deep_merges() -> None:
    resolved = resolve_experiment(EXPERIMENTS, "grandchild")
    assert resolved["gdm"] == {"classifier_scale": 3.0, "cutouts_num": -1}
    assert resolved["oracle_labels"] is True
    settings = method_settings(resolved, seed=7)
    assert isinstance(settings, GdmSettings)
    assert settings.cutouts_num == -1 and settings.cutouts_seed == 100 + 7


def test_crop_seed_rule_released_run_fixed() -> None:
    """Seed 0 uses the released crop generator seed (100); ``run``/integers are named options."""
    base = {"name": "g", "method": "gdm", "gdm": {}}
    assert method_settings(base, seed=0).cutouts_seed == 100
    assert [method_settings(base, seed=s).cutouts_seed for s in range(4)] == [100, 101, 102, 103]
    run = {**base, "gdm": {"crop_seed": "run"}}
    assert method_settings(run, seed=3).cutouts_seed == 3
    fixed = {**base, "gdm": {"crop_seed": 100}}
    assert {method_settings(fixed, seed=s).cutouts_seed for s in range(4)} == {100}
    explicit = {**base, "gdm": {"cutouts_seed": 5}}
    assert method_settings(explicit, seed=2).cutouts_seed == 5
    with pytest.raises(ConfigError, match=r"experiments\.g\.gdm\.crop_seed"):
        method_settings({**base, "gdm": {"crop_seed": "paper"}}, seed=0)


def test_unknown_setting_is_named() -> None:
    bad = {"e": {"method": "gdm", "gdm": {"clasifier_scale": 1.0}}}
    with pytest.raises(ConfigError, match=r"experiments\.e\.gdm.*clasifier_scale"):
        resolve_experiment(bad, "e")


def test_inversion_trace_experiments_are_gdm_with_a_default_subsample() -> None:
    exps = {**EXPERIMENTS, "trace": {"extends": "base", "inversion_trace_only": True}}
    assert resolve_experiment(exps, "trace")["trace_images"] == 100
    assert resolve_experiment(exps, "base")["inversion_trace_only"] is False
    bad = {"c": {"method": "cfg", "inversion_trace_only": True}}
    with pytest.raises(ConfigError, match=r"experiments\.c\.inversion_trace_only.*'cfg'"):
        resolve_experiment(bad, "c")


def test_unknown_base_and_cycles_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        resolve_experiment({"a": {"extends": "nope"}}, "a")
    with pytest.raises(ConfigError, match="cycle"):
        resolve_experiment({"a": {"extends": "b"}, "b": {"extends": "a"}}, "a")


def test_released_code_defaults() -> None:
    settings = GdmSettings()
    assert settings.respacing == "ddim100" and settings.early_stop_steps == 10
    assert settings.early_stop_thresholds == (48.5, 0.38) and settings.forback_skip_diff == 3
    assert settings.uncond_aux and not settings.no_x0_hat and settings.cutouts_num == 8


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[2] / "config").glob("*.yaml"))
)
def test_shipped_configs_validate(repo_root: Path, name: str) -> None:
    config = yaml.safe_load((repo_root / "config" / name).read_text())
    ours = validate_config(copy.deepcopy(config), repo_root / SCHEMA)
    # the same defaults as snakemake.utils.validate(set_default=True), which it replaces
    validate(config, str(repo_root / SCHEMA))
    assert ours == config
    for exp in config["experiments"]:
        method_settings(resolve_experiment(config["experiments"], exp))


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (Path(__file__).parents[2] / "config" / "overlays").glob("*.yaml")),
)
def test_overlays_validate_on_the_default(repo_root: Path, name: str) -> None:
    """An overlay (``--configfile config/config.yaml config/overlays/<name>``) merged the way
    Snakemake merges config files gives a valid config under its own run name."""
    from snakemake.utils import update_config

    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    overlay = yaml.safe_load((repo_root / "config/overlays" / name).read_text())
    update_config(config, overlay)
    validate_config(config, repo_root / SCHEMA)
    assert config["run"] != "embedded", f"{name} would overwrite the default run's outputs"
    assert (repo_root / config["report_config"]).is_file()
    # merged key by key: the default's other benchmark and training settings survive
    assert config["benchmark"]["kind"] == "mnist"
    assert config["diffusion_models"]["unet_cond"]["train"]["steps"] > 0


def _error(repo_root: Path, **changes: Any) -> str:
    """The message of validating the default config with ``changes`` applied at dotted keys."""
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    for dotted_key, value in changes.items():
        *parents, leaf = dotted_key.split("__")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    with pytest.raises(ConfigError) as info:
        validate_config(config, repo_root / SCHEMA)
    message = str(info.value)
    assert len(message.splitlines()) < 30, message
    return message


def _schema_property(repo_root: Path, *path: str) -> dict[str, Any]:
    node = load_schema(repo_root / SCHEMA)
    for part in path:
        node = node["properties"][part] if "properties" in node else node["additionalProperties"]
    return node


def _first_words(description: str) -> str:
    return " ".join(description.split()[:4])


@pytest.mark.parametrize(
    ("changes", "where", "suggestion"),
    [
        ({"shard_sise": 10}, "shard_sise", ("shard_size",)),
        ({"speed": {"image": 4}}, "speed.image", ("speed", "images")),
        (
            {"experiments__gdm_main__modle": "unet_cond"},
            "experiments.gdm_main.modle",
            ("experiments", "gdm_main", "model"),
        ),
        (
            {"benchmark__embedded__n_nera": 3},
            "benchmark.embedded.n_nera",
            ("benchmark", "embedded", "n_near"),
        ),
    ],
)
def test_typo_names_the_key_and_the_closest_valid_one(
    repo_root: Path, changes: dict[str, Any], where: str, suggestion: tuple[str, ...]
) -> None:
    message = _error(repo_root, **changes)
    assert f"{where}: unknown key {where.split('.')[-1]!r}" in message
    assert f"did you mean {suggestion[-1]!r}?" in message
    description = _schema_property(repo_root, *suggestion).get("description")
    if description:
        assert _first_words(description) in " ".join(message.split())


def test_wrong_type_names_key_expected_type_value_and_description(repo_root: Path) -> None:
    message = _error(repo_root, shard_size="abc")
    assert "shard_size: invalid value 'abc'" in message
    assert "expected integer" in message
    description = _schema_property(repo_root, "shard_size")["description"]
    assert _first_words(description) in " ".join(message.split())
    nested = _error(repo_root, benchmark__image_size=[16])
    assert "benchmark.image_size: invalid value [16]" in nested and "expected integer" in nested


def test_one_of_and_array_items_report_the_closest_branch(repo_root: Path) -> None:
    message = _error(repo_root, speed={"dtypes": ["float33"]}, baselines=["msp", "mspp"])
    assert "baselines[1]: invalid value 'mspp'" in message
    assert "speed.dtypes" in message and "'float33'" in message


def test_missing_required_key_is_named(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    del config["benchmark"]["num_classes"]
    with pytest.raises(
        ConfigError, match=r"benchmark\.num_classes: missing \(required in benchmark"
    ):
        validate_config(config, repo_root / SCHEMA)


def test_errors_beyond_the_first_few_are_counted(repo_root: Path) -> None:
    typos = {f"extra_{i}": i for i in range(MAX_ERRORS + 4)}
    message = _error(repo_root, shard_size=0, **typos)
    assert message.count("unknown key") == MAX_ERRORS
    assert message.count("valid keys:") == 1  # a location's valid keys are listed once
    assert f"and {len(typos) + 1 - MAX_ERRORS} more problem(s)" in message


def test_method_setting_typo_suggests_the_field() -> None:
    bad = {"e": {"method": "gdm", "gdm": {"respacng": "ddim5"}}}
    with pytest.raises(ConfigError, match=r"'respacng' \(did you mean 'respacing'\?\)"):
        resolve_experiment(bad, "e")


def test_precision_released_per_backend_fallback_and_inheritance(repo_root: Path) -> None:
    """``precision``: own value, else the top-level dtype, else released for the model's source."""
    models = {
        "adm": {"source": "adm"},
        "ldm": {"source": "ldm"},
        "nb": {"source": "diffnb"},
        "own": {"source": "train"},
        "bare": {},
    }
    exps = {
        "g": {"method": "gdm", "model": "adm"},
        "c": {"method": "cfg", "model": "ldm"},
        "n": {"method": "cfg", "model": "nb"},
        "o": {"method": "gdm", "model": "own"},
        "b": {"method": "gdm", "model": "bare"},
        "g32": {"extends": "g", "precision": "float32"},
        "g32child": {"extends": "g32"},
        "cmixed": {"extends": "c", "precision": "mixed_fp16"},
    }
    config: dict[str, Any] = {"diffusion_models": models, "experiments": exps}
    # The schema accepts the key and fills no default in (that would override a base's value).
    shipped = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    base = next(iter(shipped["experiments"]))
    shipped["experiments"]["p32"] = {"extends": base, "precision": "float32"}
    shipped["experiments"]["p32child"] = {"extends": "p32"}
    validate_config(shipped, repo_root / SCHEMA)
    assert "precision" not in shipped["experiments"]["p32child"]
    child = resolve_experiment(shipped["experiments"], "p32child")
    assert experiment_precision(shipped, child) == "float32"

    def precision(name: str, **top: Any) -> str:
        return experiment_precision({**config, **top}, resolve_experiment(exps, name))

    assert [precision(n) for n in "gcnob"] == ["mixed_fp16", *["float32"] * 4]
    assert precision("g32") == precision("g32child") == "float32"
    assert precision("g", dtype="bfloat16") == "bfloat16"  # the documented fallback
    assert precision("g32", dtype="bfloat16") == "float32"  # an explicit value wins
    with pytest.raises(ConfigError, match=r"experiments\.cmixed\.precision.*mixed_fp16"):
        precision("cmixed")
    with pytest.raises(ConfigError, match=r"experiments\.x\.model.*'nope'"):
        experiment_precision(config, {"name": "x", "model": "nope"})
