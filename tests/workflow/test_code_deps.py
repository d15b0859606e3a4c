"""Each rule's ``code`` input is its script plus the ``diffguard`` modules it imports, transitively.

The workflow is parsed with the shipped configs (together they define every rule) and each
rule's ``input.code`` is compared with the import closure read from the source files, so a
hand-written list that misses a module, or a rule that runs a script without declaring its code,
fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
from diffguard.codedeps import script_code  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.tune_tiny import tune_tiny_config, write_config  # noqa: E402

# Together these configs define every rule (checked below).
CONFIGS = ("config/config.yaml", "config/imagenet.yaml")
# Rules that fetch or link external data: their outputs are keyed by URL and checksum, and a
# code edit must not re-download gigabytes, so they deliberately declare no code input.
NO_CODE = {
    "download",
    "link_manual_file",
    "link_manual_folder",
    "verify_download",
    "extract_download",
    "torch_hub",
}
PROBE = Path(__file__).with_name("rule_code.py")


@pytest.fixture(scope="module")
def parsed_rules(
    repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, dict]]:
    """``{config: {rule: {"script", "code"}}}`` from parsing the workflow with each config
    (and a tiny one with a ``tune:`` section, for the rules only tunes define)."""
    tune = tmp_path_factory.mktemp("tune") / "tune_tiny.yaml"
    write_config(tune_tiny_config(repo_root), tune)
    parsed = {}
    for config in (*CONFIGS, str(tune)):
        proc = subprocess.run(
            [sys.executable, str(PROBE), str(repo_root), config],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"parsing with {config} failed:\n{proc.stderr[-4000:]}"
        parsed[config] = json.loads(proc.stdout)
    return parsed


def test_configs_define_every_rule(parsed_rules, repo_root: Path) -> None:
    declared = set()
    for smk in (repo_root / "workflow" / "rules").glob("*.smk"):
        declared |= set(re.findall(r"^\s*rule (\w+):", smk.read_text(), flags=re.M))
        declared |= set(re.findall(r"^\s*use rule \w+ as (\w+)", smk.read_text(), flags=re.M))
    seen = set().union(*(rules.keys() for rules in parsed_rules.values()))
    assert declared - seen == set(), f"no config in {CONFIGS} defines these rules"


def test_every_rule_code_input_is_its_import_closure(parsed_rules, repo_root: Path) -> None:
    checked = 0
    for config, rules in parsed_rules.items():
        for name, rule in rules.items():
            if rule["script"] is None:
                assert rule["code"] is None, f"{name} declares code but runs no script"
                continue
            if name in NO_CODE:
                assert rule["code"] is None, f"{name} is listed in NO_CODE but declares code"
                continue
            script = Path(rule["script"]).relative_to("workflow/scripts")
            expected = script_code(script, repo_root / "workflow" / "scripts", repo_root)
            assert rule["code"] is not None, f"rule {name} ({config}) runs {script} without code="
            assert sorted(rule["code"]) == expected, (
                f"rule {name} ({config}): code input differs from the imports of {script}: "
                f"missing {sorted(set(expected) - set(rule['code']))}, "
                f"extra {sorted(set(rule['code']) - set(expected))}"
            )
            checked += 1
    assert checked > 20
