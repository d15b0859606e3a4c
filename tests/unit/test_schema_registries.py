"""The config schema's enums name exactly what the code registries implement.

The schema is what a user reads and what stops a typo at parse time; the registries are what a
job runs. A value added to one and not the other is either rejected before it can run, or
accepted and then fails deep in a job: each pair must agree (set equality; order is free).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def _methods() -> Iterable[str]:
    from diffguard.config import METHOD_SETTINGS

    return METHOD_SETTINGS


def _early_stop_metrics() -> Iterable[str]:
    from diffguard.settings import EARLY_STOP_METRICS

    return EARLY_STOP_METRICS


def _precisions() -> Iterable[str]:
    from diffguard.precision import PRECISIONS

    return PRECISIONS


def _distances() -> Iterable[str]:
    from diffguard.distances import DISTANCES

    return DISTANCES


def _baselines() -> Iterable[str]:
    from diffguard.baselines import BASELINES

    return BASELINES


def _combination_rules() -> Iterable[str]:
    from diffguard.combine import COMBINATION_RULES

    return COMBINATION_RULES


def _model_sources() -> Iterable[str]:
    from diffguard.backends import SOURCES

    return SOURCES


def _guidance_predictions() -> Iterable[str]:
    from diffguard.config import GUIDANCE_PREDICTIONS

    return GUIDANCE_PREDICTIONS


def _timestep_conventions() -> Iterable[str]:
    from diffguard.settings import TIMESTEP_CONVENTIONS

    return TIMESTEP_CONVENTIONS


PAIRS: dict[str, tuple[str, Callable[[], Iterable[str]]]] = {
    "methods": (f"{EXPERIMENT}.method", _methods),
    "early-stop metrics": (
        f"{EXPERIMENT}.gdm.properties.early_stop_metrics.items",
        _early_stop_metrics,
    ),
    "precisions (top level)": ("properties.dtype", _precisions),
    "precisions (experiment)": (f"{EXPERIMENT}.precision", _precisions),
    "distances": ("properties.distances.items", _distances),
    "baselines": ("properties.baselines.items", _baselines),
    "combination rules": ("properties.combinations.items.properties.rule", _combination_rules),
    "diffusion model sources": (
        "properties.diffusion_models.additionalProperties.properties.source",
        _model_sources,
    ),
    "guidance predictions": (f"{EXPERIMENT}.guidance_predictions", _guidance_predictions),
    "fig2 timestep conventions": (
        "properties.figures.properties.fig2.properties.classifier_timestep",
        _timestep_conventions,
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_schema_enum_equals_registry(name: str) -> None:
    path, registry = PAIRS[name]
    schema, code = _enum(path), set(registry())
    assert schema == code, (
        f"{name}: {SCHEMA.name} {path} lists {sorted(schema)}, the code implements "
        f"{sorted(code)} (only in the schema: {sorted(schema - code)}; only in the code: "
        f"{sorted(code - schema)})"
    )


def test_speed_distances_are_registered_distances() -> None:
    # the speed benchmark times a subset (the cheap and the perceptual ones), never an unknown one
    assert _enum("properties.speed.properties.distances.items") <= set(_distances())
