"""The rule files share no names: each reads only what it defines, imports from the package
(``diffguard.plan.run_plan``, ``diffguard.targets``) or Snakemake provides, so the order in
which the Snakefile includes them does not matter; the same workflow parsed with its includes
in reverse order plans the same jobs."""

from __future__ import annotations

import ast
import builtins
import re
import shutil
import tempfile
from pathlib import Path

import snakemake.api  # noqa: F401  (loads snakemake.workflow before the parser, no cycle)
import snakemake.workflow
from snakemake.parser import parse
from snakemake.sourcecache import LocalSourceFile, SourceCache
from snakemake_cli import snakemake as run_snakemake

SNAKEMAKE_NAMES = set(vars(snakemake.workflow)) | {
    "config",
    "workflow",
    "rules",
    "checkpoints",
    "shell",
}
"""Names Snakemake puts into every rule file's namespace (``expand``, ``report``, ...)."""
INCLUDE = re.compile(r'^include: "(?P<path>[^"]+)"$', re.MULTILINE)


def compiled(path: Path) -> ast.Module:
    """The Python code Snakemake compiles a rule file (or the Snakefile) to."""
    cache = SourceCache(Path(tempfile.mkdtemp()))
    workflow = type("Stub", (), {"sourcecache": cache, "modifier": None})()
    code, _ = parse(LocalSourceFile(str(path)), workflow, {})
    return ast.parse(code)


def names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names bound anywhere in the file, names read anywhere in it)."""
    bound: set[str] = set()
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return bound, read


def rule_files(repo: Path) -> list[Path]:
    return [repo / m["path"] for m in INCLUDE.finditer((repo / "Snakefile").read_text())]


def test_every_rule_file_is_included(repo_root: Path) -> None:
    assert sorted(rule_files(repo_root)) == sorted((repo_root / "workflow/rules").glob("*.smk"))


def test_rule_files_read_no_name_another_file_defines(repo_root: Path) -> None:
    files = [repo_root / "Snakefile", *rule_files(repo_root)]
    scanned = {path: names(compiled(path)) for path in files}
    known = set(dir(builtins)) | SNAKEMAKE_NAMES
    for path, (bound, read) in scanned.items():
        others = {n for other, (b, _) in scanned.items() if other != path for n in b}
        borrowed = sorted((read - bound - known) & others)
        assert not borrowed, f"{path.name} reads {borrowed}, defined by another rule file"
        undefined = sorted(read - bound - known - others)
        assert not undefined, f"{path.name} reads undefined names {undefined}"


def test_scan_sees_a_borrowed_name(tmp_path: Path) -> None:
    """The check above can fail: a file reading another's global is caught."""
    first, second = tmp_path / "a.smk", tmp_path / "b.smk"
    first.write_text('SHARED = 1\n\n\nrule a:\n    output:\n        "a.txt",\n')
    second.write_text('rule b:\n    output:\n        f"{SHARED}.txt",\n')
    bound_a, _ = names(compiled(first))
    bound_b, read_b = names(compiled(second))
    assert "SHARED" in bound_a and "SHARED" in read_b - bound_b


def summary(work: Path, snakefile: Path) -> list[str]:
    """``output_file rule`` of every job a forced tiny run would plan (sorted)."""
    result = run_snakemake(
        work,
        "--snakefile",
        str(snakefile),
        "--summary",
        "--forceall",
        "--configfile",
        "config/tiny.yaml",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:] if "\t" in line]
    return sorted(f"{row[0]} {row[2]}" for row in rows)


def test_reversed_includes_plan_the_same_jobs(repo_root: Path, tmp_path: Path) -> None:
    # a copy, not links: code inputs are resolved paths under the Snakefile's folder
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for name in ("workflow", "config", "envs"):
        shutil.copytree(repo_root / name, tmp_path / name, ignore=ignore)
    (tmp_path / "paper").mkdir()
    shutil.copy(repo_root / "paper/ms.tex", tmp_path / "paper/ms.tex")
    text = (repo_root / "Snakefile").read_text()
    includes = INCLUDE.findall(text)
    reordered = INCLUDE.sub("INCLUDE", text)
    for path in reversed(includes):
        reordered = reordered.replace("INCLUDE", f'include: "{path}"', 1)
    assert INCLUDE.findall(reordered) == includes[::-1]
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(reordered)
    expected = summary(repo_root, repo_root / "Snakefile")
    assert len(expected) > 20
    assert summary(tmp_path, snakefile) == expected
