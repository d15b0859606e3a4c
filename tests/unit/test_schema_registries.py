"""The config schema's enums name exactly what the code registries implement.

The schema is what a user reads and what stops a typo at parse time; the registries are what a
job runs. A value added to one and not the other is either rejected before it can run, or
accepted and then fails deep in a job: each pair must agree (set equality; order is free).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
EXPERIMENT = "properties.experiments.additionalProperties.properties"


def _enum(path: str) -> set[Any]:
    """The ``enum`` at a dotted path of the config schema (list indices as numbers)."""
    node: Any = yaml.safe_load(SCHEMA.read_text())
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return set(node["enum"])


# name -> (dotted path of the schema enum, "module:registry" of the code)
PAIRS: dict[str, tuple[str, str]] = {
    "methods": (f"{EXPERIMENT}.method", "diffguard.methods:METHODS"),
    "early-stop metrics": (
        f"{EXPERIMENT}.gdm.properties.early_stop_metrics.items",
        "diffguard.settings:EARLY_STOP_METRICS",
    ),
    "precisions (top level)": ("properties.dtype", "diffguard.precision:PRECISIONS"),
    "precisions (experiment)": (f"{EXPERIMENT}.precision", "diffguard.precision:PRECISIONS"),
    "distances": ("properties.distances.items", "diffguard.distances:DISTANCES"),
    "baselines": ("properties.baselines.items", "diffguard.baselines:BASELINES"),
    "combination rules": (
        "properties.combinations.items.properties.rule",
        "diffguard.combine:COMBINATION_RULES",
    ),
    "diffusion model sources": (
        "properties.diffusion_models.additionalProperties.properties.source",
        "diffguard.backends:SOURCES",
    ),
    "score references": (f"{EXPERIMENT}.score_reference", "diffguard.method_api:SCORE_REFERENCES"),
    "guidance predictions": (
        f"{EXPERIMENT}.guidance_predictions",
        "diffguard.config:GUIDANCE_PREDICTIONS",
    ),
    "fig2 timestep conventions": (
        "properties.figures.properties.fig2.properties.classifier_timestep",
        "diffguard.settings:TIMESTEP_CONVENTIONS",
    ),
}


def _registry(where: str) -> set[Any]:
    module, name = where.split(":")
    return set(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_schema_enum_equals_registry(name: str) -> None:
    path, registry = PAIRS[name]
    schema, code = _enum(path), _registry(registry)
    assert schema == code, (
        f"{name}: {SCHEMA.name} {path} lists {sorted(schema)}, the code implements "
        f"{sorted(code)} (only in the schema: {sorted(schema - code)}; only in the code: "
        f"{sorted(code - schema)})"
    )


def test_speed_distances_are_registered_distances() -> None:
    # the speed benchmark times a subset (the cheap and the perceptual ones), never an unknown one
    distances = _registry("diffguard.distances:DISTANCES")
    assert _enum("properties.speed.properties.distances.items") <= distances


def test_every_baseline_has_its_own_display_label() -> None:
    from diffguard.baselines import BASELINE_LABELS, BASELINES

    labels = [cls.label for cls in BASELINES.values()]
    assert all(labels) and len(set(labels)) == len(labels), labels
    assert {name: cls.label for name, cls in BASELINES.items()} == BASELINE_LABELS
