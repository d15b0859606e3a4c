"""diffguard.codedeps: a script's transitive package imports, read with ast (nothing imported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffguard.codedeps import code_closure, script_code


def write(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A fake scripts folder: each import form used once, plus an unimported module."""
    write(tmp_path, "diffguard/__init__.py")
    write(tmp_path, "diffguard/a.py", "from diffguard.b import f\n")
    write(tmp_path, "diffguard/b.py", "def f():\n    from .sub import deep  # lazy, relative\n")
    write(tmp_path, "diffguard/sub/__init__.py", "from . import leaf\n")
    write(tmp_path, "diffguard/sub/deep.py", "from ..c import x\nimport os\n")
    write(tmp_path, "diffguard/sub/leaf.py")
    write(tmp_path, "diffguard/c.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "diffguard/d.py", "import diffguard.e\n")
    write(tmp_path, "diffguard/e.py")
    write(tmp_path, "diffguard/unused.py")
    write(tmp_path, "run_a.py", "import torch\nfrom diffguard import a\n")
    write(tmp_path, "run_d.py", "from diffguard import d as dd\n")
    return tmp_path


def names(paths: tuple[Path, ...], root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in paths}


def test_closure_follows_every_import_form(scripts: Path) -> None:
    got = names(code_closure(scripts / "run_a.py", scripts), scripts)
    assert got == {
        "run_a.py",
        "diffguard/__init__.py",
        "diffguard/a.py",
        "diffguard/b.py",
        "diffguard/sub/__init__.py",
        "diffguard/sub/deep.py",
        "diffguard/sub/leaf.py",
        "diffguard/c.py",
    }
    got = names(code_closure(scripts / "run_d.py", scripts), scripts)
    assert got == {"run_d.py", "diffguard/__init__.py", "diffguard/d.py", "diffguard/e.py"}


def test_script_code_paths_relative_to_workflow(scripts: Path) -> None:
    code = script_code("run_d.py", scripts, scripts.parent)
    assert code == sorted(code)
    assert f"{scripts.name}/diffguard/e.py" in code and all("unused" not in c for c in code)


def test_missing_script_and_bad_source_are_named(scripts: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.py"):
        code_closure(scripts / "nope.py", scripts)
    write(scripts, "broken.py", "from diffguard import (\n")
    with pytest.raises(ValueError, match="broken.py"):
        code_closure(scripts / "broken.py", scripts)
