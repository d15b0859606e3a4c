"""Experiment resolution and config validation (every shipped config must validate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from diffguard.config import ConfigError, method_settings, resolve_experiment
from diffguard.gdm import GdmSettings

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
    validate(config, str(repo_root / "workflow/schemas/config.schema.yaml"))
    for exp in config["experiments"]:
        method_settings(resolve_experiment(config["experiments"], exp))


def test_typo_in_config_key_is_rejected(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    config["shard_sise"] = 10
    with pytest.raises(Exception, match="shard_sise"):
        validate(config, str(repo_root / "workflow/schemas/config.schema.yaml"))
