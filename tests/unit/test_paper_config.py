"""Paper configs: schema validation, contract names, PAPER.md hyperparameters, grids and seeds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import validate

from diffguard.config import (
    ConfigError,
    expand_grid,
    experiment_precision,
    experiment_seeds,
    method_settings,
    resolve_all,
)
from diffguard.downloads import parse_spec

REPO = Path(__file__).resolve().parents[2]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def load(name: str) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, SCHEMA)
    return config


@pytest.mark.parametrize("name", ["imagenet.yaml", "cifar10.yaml", "config.yaml", "tiny.yaml"])
def test_configs_validate_and_resolve(name: str) -> None:
    config = load(name)
    experiments = resolve_all(config["experiments"])
    for exp in experiments.values():
        for seed in experiment_seeds(config, exp):
            method_settings(exp, seed)  # every override is a known, valid setting
    for key, entry in config.get("downloads", {}).items():
        parse_spec(key, entry)


def test_imagenet_contract_names_and_hyperparameters() -> None:
    config = load("imagenet.yaml")
    exps = resolve_all(config["experiments"])
    for name in (
        "gdm_main",
        "ldm_main",
        "gdm_oracle",
        "ldm_oracle",
        "gdm_no_x0_no_aug",
        "gdm_aug_only",
        "gdm_x0_only",
        "gdm_es_psnr_5.89",
        "gdm_es_psnr_6.39",
        "gdm_es_dists_0.39",
        "gdm_es_dists_0.37",
        "gdm_es_psnr_6.39_dists_0.37",
    ):
        assert name in exps, name
    assert set(config["datasets"]) >= {
        "imagenet_val",
        "species",
        "inaturalist",
        "openimage_o",
        "imagenet_o",
    }
    assert config["datasets"]["imagenet_val"]["role"] == "id"
    assert all(config["datasets"][d]["n"] is None for d in ("imagenet_val", "species"))
    gdm = method_settings(exps["gdm_main"], 0)
    # exp6.1 (PAPER.md C.8 / D.1)
    assert gdm.respacing == "ddim100" and gdm.early_stop_steps == 10
    assert gdm.early_stop_metrics == ("psnr", "dists")
    assert gdm.early_stop_thresholds == (48.5, 0.38)
    assert gdm.forback_skip_diff == 3 and gdm.classifier_scale == 3.0
    assert gdm.cutouts_num == 8 and gdm.cutouts_size == 224 and gdm.uncond_aux
    assert gdm.cutouts_seed == 100  # test_openood.py: LocalRandGenerator(seed=100)
    assert experiment_seeds(config, exps["gdm_main"]) == [0, 1, 2, 3]
    ldm = method_settings(exps["ldm_main"], 0)
    # ldm-exp2.25 (PAPER.md C.3 / D.1)
    assert ldm.ddim_steps == 25 and ldm.guidance_scale == 10.0 and ldm.cam_cut == 0.3
    assert ldm.use_cam and not ldm.uncond_aux and ldm.beta_schedule == "scaled_linear"
    assert exps["ldm_main"]["input_size"] == 256
    assert (
        not method_settings(exps["ldm_oracle"], 0).use_cam and exps["ldm_oracle"]["oracle_labels"]
    )
    # Table 3 ablations
    assert method_settings(exps["gdm_no_x0_no_aug"], 0).no_x0_hat
    assert method_settings(exps["gdm_no_x0_no_aug"], 0).cutouts_num == -1
    assert method_settings(exps["gdm_aug_only"], 0).no_x0_hat
    assert method_settings(exps["gdm_aug_only"], 0).cutouts_num == 8
    assert not method_settings(exps["gdm_x0_only"], 0).no_x0_hat
    # Table 4 thresholds in code units: paper PSNR + 42.11 dB
    assert method_settings(exps["gdm_es_psnr_5.89"], 0).early_stop_thresholds == (48.0,)
    es = method_settings(exps["gdm_es_psnr_6.39_dists_0.37"], 0)
    assert es.early_stop_metrics == ("psnr", "dists") and es.early_stop_thresholds == (48.5, 0.37)
    assert experiment_seeds(config, exps["gdm_x0_only"]) == [0]
    assert config["distances"][0] == "dists" and config["headline_distance"] == "dists"
    speed = method_settings(exps["gdm_speed"], 0)  # released exp/speed/exp6.1.yaml
    assert speed.early_stop_metrics == () and speed.early_stop_steps == 40
    assert not speed.uncond_aux and exps["gdm_speed"]["speed_only"]
    assert config["speed"]["experiments"] == ["gdm_speed", "ldm_main"]


def test_cifar10_contract_names() -> None:
    config = load("cifar10.yaml")
    exps = resolve_all(config["experiments"])
    assert {"diffnb_main", "diffnb_oracle"} <= set(exps)
    assert set(config["datasets"]) >= {"cifar10_test", "cifar100", "tin"}
    assert config["headline_distance"] == "logits"
    assert set(config["baselines"]) >= {"ebo", "knn", "mls", "vim", "mc_dropout", "deep_ensemble"}
    combos = {(c["experiment"], c["baseline"]) for c in config["combinations"]}
    assert combos == {("diffnb_main", "ebo"), ("diffnb_main", "deep_ensemble")}
    settings = method_settings(exps["diffnb_main"], 0)
    assert (settings.beta_schedule, settings.beta_start, settings.beta_end) == (
        "linear",
        0.0001,
        0.02,
    )


def test_fig7_grid_names_and_values() -> None:
    config = load("imagenet.yaml")
    exps = resolve_all(config["experiments"])
    cuts = sorted(n for n in exps if n.startswith("ldm_main__cam_cut"))
    steps = [n for n in exps if n.startswith("ldm_main__ddim_steps")]
    assert cuts == [f"ldm_main__cam_cut{v}" for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert len(steps) == 5
    assert method_settings(exps["ldm_main__cam_cut0.2"], 0).cam_cut == 0.2
    assert method_settings(exps["ldm_main__cam_cut0.2"], 0).ddim_steps == 25
    assert method_settings(exps["ldm_main__ddim_steps50"], 0).ddim_steps == 50
    assert method_settings(exps["ldm_main__ddim_steps50"], 0).cam_cut == 0.3
    # the grid is not inherited: the oracle (extends ldm_main) generates nothing
    assert not any(n.startswith("ldm_oracle__") for n in exps)
    assert "grid" not in exps["ldm_main__cam_cut0.2"]


def test_grid_errors_name_the_key() -> None:
    base = {"a": {"method": "cfg", "cfg": {"cam_cut": 0.3}}}
    bad = copy.deepcopy(base)
    bad["a"]["grid"] = {"cam_cut": [0.1]}
    with pytest.raises(ConfigError, match=r"experiments\.a\.grid: key 'cam_cut'"):
        expand_grid(bad)
    bad["a"]["grid"] = {"cfg.cam_cut": []}
    with pytest.raises(ConfigError, match="non-empty list"):
        expand_grid(bad)
    clash = copy.deepcopy(base)
    clash["a"]["grid"] = {"cfg.cam_cut": [0.1]}
    clash["a__cam_cut0.1"] = {"extends": "a"}
    with pytest.raises(ConfigError, match="already exists"):
        expand_grid(clash)
    unknown = copy.deepcopy(base)
    unknown["a"]["grid"] = {"cfg.no_such_key": [1]}
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_all(unknown)


def test_seeds_inherit_and_default() -> None:
    config = {
        "seeds": [7],
        "experiments": {
            "a": {"method": "gdm", "seeds": [0, 1]},
            "b": {"extends": "a"},
            "c": {"extends": "a", "seeds": [3]},
            "d": {"method": "cfg"},
        },
    }
    exps = resolve_all(config["experiments"])
    assert experiment_seeds(config, exps["a"]) == [0, 1]
    assert experiment_seeds(config, exps["b"]) == [0, 1]
    assert experiment_seeds(config, exps["c"]) == [3]
    assert experiment_seeds(config, exps["d"]) == [7]


def test_schema_rejects_typos_in_new_keys() -> None:
    config = load("imagenet.yaml")
    bad = copy.deepcopy(config)
    bad["downloads"]["adm256_uncond"]["sha265"] = "0" * 64
    with pytest.raises(Exception, match="sha265"):
        validate(bad, SCHEMA)
    bad = copy.deepcopy(config)
    bad["downloads"]["adm256_uncond"]["sha256"] = "abc"
    with pytest.raises(Exception, match="abc"):
        validate(bad, SCHEMA)


CIN256_V2_YAML_SHA256 = "b06c64afb41956e1fcc2abaeb3d217ae0edb1a201d09f35e7d656ce61396e779"


@pytest.mark.parametrize("name", ["imagenet.yaml", "imagenet_v15.yaml"])
def test_ldm_downloads_pin_cin256_v2(name: str) -> None:
    """The LDM is cin256-v2 (not DiffGuard's README link cin.zip, another model) and its yaml is
    pinned to the upstream file's sha256 (one commit ever touched it)."""
    config = yaml.safe_load((REPO / "config" / name).read_text())
    roles = config["diffusion_models"]["ldm_cin256_v2"]["checkpoints"]
    model = parse_spec(roles["model"], config["downloads"][roles["model"]])
    assert model.url == "https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt"
    yml = parse_spec(roles["config"], config["downloads"][roles["config"]])
    assert yml.url is not None and yml.url.endswith("configs/latent-diffusion/cin256-v2.yaml")
    assert yml.sha256 == CIN256_V2_YAML_SHA256
    assert not any("cin.zip" in str(e.get("url")) for e in config["downloads"].values())


def test_diffnb_manual_step_points_to_the_drive_folder(tmp_path: Path) -> None:
    """DiffOOD's readme shares the checkpoints in a Google Drive folder; the manual step (and its
    error) names that folder and the EMA file, not OneDrive or the training checkpoint."""
    from diffguard.downloads import ManualStepError, link_manual

    config = load("cifar10.yaml")
    key = config["diffusion_models"]["diffnb_cifar10_cond"]["checkpoints"]["model"]
    spec = parse_spec(key, config["downloads"][key])
    assert spec.filename == "ema_cifar10.ckpt"
    with pytest.raises(ManualStepError) as info:
        link_manual(spec, tmp_path / "dest" / spec.filename, tmp_path / "checksums")
    message = str(info.value)
    assert "https://drive.google.com/drive/folders/1THjaeLlGO9-V676dkGh3YFq4dTPlWMeI" in message
    assert "ema_cifar10.ckpt" in message and "onedrive" not in message.lower()


@pytest.mark.parametrize("name", ["imagenet.yaml", "imagenet_v15.yaml", "cifar10.yaml"])
def test_paper_configs_run_each_model_in_its_released_precision(name: str) -> None:
    """No top-level dtype forces fp16 on the LDM: ADM experiments mixed fp16, the rest float32."""
    config = load(name)
    assert "dtype" not in config
    for exp_name, exp in resolve_all(config["experiments"]).items():
        source = config["diffusion_models"][exp["model"]].get("source", "train")
        want = "mixed_fp16" if source == "adm" else "float32"
        assert experiment_precision(config, exp) == want, exp_name
    if name.startswith("imagenet"):
        exps = resolve_all(config["experiments"])
        assert experiment_precision(config, exps["ldm_main"]) == "float32"
        assert experiment_precision(config, exps["gdm_main"]) == "mixed_fp16"
