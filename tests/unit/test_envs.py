"""The conda environment files pin exactly what requirements.txt pins."""

from __future__ import annotations

from pathlib import Path

import yaml


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_conda_env_matches_requirements(repo_root: Path) -> None:
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((repo_root / "envs/diffguard.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = _pins(pip_section)
    assert conda == req
    assert "python=3.11" in env["dependencies"]
