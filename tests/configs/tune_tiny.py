"""A tiny config with validation sets and a 2-point tune (tests of the ``tune:`` stage).

config/tiny.yaml stays as it is (its outputs are pinned, tests/e2e/test_redesign_identity.py);
this derives from it: the embedded builder carves val lists out of each evaluation list
(``val_fraction``), three ``split: val`` datasets use them, the GDM experiments and the far
test set are dropped (the tune path is the same for both methods; CFG is the cheaper one),
and ``cfg_main`` is tuned over two guidance scales, with a ``cfg_oracle`` that extends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RUN = "tune_tiny"
TUNE = "cfg_tune"
GRID = {"cfg.guidance_scale": [1.0, 3.0]}


def tune_tiny_config(repo: Path) -> dict[str, Any]:
    """The config as a mapping (tests edit it before writing it)."""
    config: dict[str, Any] = yaml.safe_load((repo / "config" / "tiny.yaml").read_text())
    config["run"] = RUN
    config["benchmark"]["embedded"].update({"n_near": 64, "n_far": 40, "val_fraction": 0.5})
    # few images and jobs (the e2e run stays short): one shard per set, no far test set
    datasets = config["datasets"]
    del datasets["far_photos"]
    datasets["test_id"]["n"] = datasets["near_digits"]["n"] = 12
    datasets.update(
        {
            "val_id": {"role": "id", "list": "val_test_id", "n": 8, "split": "val"},
            "val_near": {"role": "near", "list": "val_near_digits", "n": 8, "split": "val"},
            "val_far": {"role": "far", "list": "val_far_photos", "n": 8, "split": "val"},
        }
    )
    del config["diffusion_models"]["unet_uncond"]
    experiments = config["experiments"]
    config["experiments"] = {
        "cfg_main": experiments["cfg_main"],
        "cfg_oracle": {"extends": "cfg_main", "oracle_labels": True},
    }
    config["combinations"] = [{"experiment": "cfg_main", "baseline": "ebo", "rule": "cascade"}]
    config["distances"] = ["ssim", "l2"]
    config["figures"] = {}
    config["tune"] = {
        TUNE: {
            "experiment": "cfg_main",
            "grid": GRID,
            "distances": ["ssim", "l2"],
            "objective": "near",
            "combination": {"baseline": "ebo", "rules": ["cascade", "rank_average"]},
        }
    }
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
