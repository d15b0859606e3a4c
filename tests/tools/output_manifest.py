"""Fingerprints of a tiny run's outputs: a sha256 per file plus numeric summaries, and the platform.

Used by ``tests/tools/record_tiny_manifest.py`` (writes ``tests/e2e/tiny_outputs.json``) and by
``tests/e2e/test_redesign_identity.py`` (compares a fresh tiny run against it).

What is fingerprinted: every final-named file the tiny run writes under ``data/`` (the
``tiny_run`` target, ``metrics.csv``): the embedded benchmark (images, lists, licences), the
selected lists, the trained models (weights, specs, training logs), the prediction caches, the
reconstruction shards, the per-image score tables and the metrics. Left out, each for a reason:

- ``data/logs/``: job logs carry wall-clock times and rates (images/s, ETA);
- hidden files (``.name.XXXX``): atomic-write temporaries, never final outputs;
- files the run folder got from the checkout (``data/README.md``): sources, not outputs.

The tiny run builds no figure, table or PDF (their timestamps/metadata would need masking);
every fingerprinted file is deterministic on one platform (``test_resume.py`` checks that two
runs agree byte for byte).

Benchmark images are many (>1000 PNGs) and come from scikit-learn / scikit-image arrays with no
float arithmetic that depends on the CPU, so each image folder is one digest over its
``(name, sha256)`` pairs: the manifest stays small and any changed pixel still changes it.

Numeric summaries (CSV number columns, NPZ and safetensors arrays) let another platform, whose
CPU kernels round differently, compare within a tolerance instead of by bytes. Each summary is
a set of quantities that move by at most a known amount when every element moves by at most
``atol + rtol * |x|``: min and max (by one element's bound), and sum, position-weighted sum and
sum of |x| (by the sum of the elements' bounds). So a platform whose every element is within
the bound always passes, while a changed value, a permutation or a wrong shape shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST_VERSION = 1
# One digest per folder of benchmark images (see the module docstring).
IMAGE_FOLDER_GLOB = "data/external/*/benchmark/images/*"
NUMERIC_SUFFIXES = (".csv", ".npz", ".safetensors")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights(n: int) -> np.ndarray:
    """Fixed pseudo-random weights in [0, 1) (a permutation of the elements changes the sum)."""
    return ((np.arange(n, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1000)).astype(
        np.float64
    ) / 1000.0


def summarise(values: np.ndarray) -> dict[str, Any]:
    """Shape and tolerance-comparable summaries of a numeric array (float64 arithmetic)."""
    x = np.asarray(values)
    flat = x.astype(np.float64).ravel()
    summary: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype)}
    if flat.size == 0:
        return summary
    finite = np.isfinite(flat)
    summary["nonfinite"] = int((~finite).sum())
    flat = np.where(finite, flat, 0.0)
    summary.update(
        min=float(flat.min()),
        max=float(flat.max()),
        sum=float(flat.sum()),
        abs_sum=float(np.abs(flat).sum()),
        weighted_sum=float(_weights(flat.size) @ flat),
    )
    return summary


def _csv_fingerprint(data: bytes) -> dict[str, Any]:
    frame = pd.read_csv(io.BytesIO(data))
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "iufb"]
    text = [c for c in frame.columns if c not in numeric]
    return {
        "columns": [str(c) for c in frame.columns],
        # Non-numeric columns must agree exactly on every platform.
        "text_sha256": sha256_bytes(frame[text].to_csv(index=False).encode()),
        "numeric": {str(c): summarise(frame[c].to_numpy()) for c in numeric},
    }


def _npz_fingerprint(path: Path) -> dict[str, Any]:
    numeric: dict[str, Any] = {}
    text: dict[str, str] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in sorted(data.files):
            arr = data[key]
            if arr.dtype.kind in "iufb":
                numeric[key] = summarise(arr)
            else:
                text[key] = sha256_bytes(repr(arr.tolist()).encode())
    return {"numeric": numeric, "text_sha256": text}


def _safetensors_fingerprint(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    tensors = sorted(load_file(str(path)).items())
    layout = [[name, list(t.shape), str(t.dtype)] for name, t in tensors]
    # One summary over all weights (in name order) keeps the manifest small; the layout
    # (names, shapes, dtypes) must match exactly.
    flat = np.concatenate([t.astype(np.float64).ravel() for _, t in tensors])
    return {
        "text_sha256": sha256_bytes(json.dumps(layout).encode()),
        "numeric": {"all": summarise(flat)},
    }


def fingerprint(path: Path) -> dict[str, Any]:
    """sha256 of a file, plus numeric summaries for CSV / NPZ / safetensors files."""
    data = path.read_bytes()
    entry: dict[str, Any] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    if path.suffix == ".csv":
        entry.update(_csv_fingerprint(data))
    elif path.suffix == ".npz":
        entry.update(_npz_fingerprint(path))
    elif path.suffix == ".safetensors":
        entry.update(_safetensors_fingerprint(path))
    elif path.name == "model.done":
        # sha256 lines of a model's files: those of the weights follow the platform's floats
        # (compared within tolerance on their own); the others must match everywhere
        lines = [ln for ln in data.decode().splitlines() if not ln.endswith(".safetensors")]
        entry["portable_sha256"] = sha256_bytes("\n".join(lines).encode())
    return entry


def folder_digest(work: Path, folder: Path) -> dict[str, Any]:
    """One digest over the sorted ``(name, sha256)`` pairs of a folder's files."""
    files = sorted(p for p in (work / folder).iterdir() if p.is_file())
    lines = "".join(f"{p.name}\t{sha256_bytes(p.read_bytes())}\n" for p in files)
    return {"sha256": sha256_bytes(lines.encode()), "files": len(files)}


def run_outputs(work: Path, sources: Iterable[Path]) -> list[Path]:
    """Final-named outputs under ``work/data`` (relative): no logs, temporaries or sources."""
    source_set = set(sources)
    root = work / "data"
    return sorted(
        rel
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and "logs" not in (rel := p.relative_to(work)).parts
        and rel not in source_set
    )


def fingerprint_run(work: Path, sources: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Fingerprints of a finished run: one digest per image folder, the rest per file."""
    outputs = run_outputs(work, sources)
    folders = sorted(p.relative_to(work) for p in work.glob(IMAGE_FOLDER_GLOB) if p.is_dir())
    entries: dict[str, dict[str, Any]] = {
        f"{folder}/": folder_digest(work, folder) for folder in folders
    }
    for rel in outputs:
        if not any(rel.is_relative_to(folder) for folder in folders):
            entries[str(rel)] = fingerprint(work / rel)
    return entries


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def job_threads(work: Path) -> int:
    """``cpus_per_job`` of the run's tiny config, the schema's default filled in."""
    import yaml

    from diffguard.schema import validate_config

    config = yaml.safe_load((work / "config/tiny.yaml").read_text())
    validate_config(config, work / "workflow/schemas/config.schema.yaml")
    return int(config["cpus_per_job"])


def platform_facts(job_threads: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What decides the floats of a CPU run, as seen by a process with ``env``'s variables.

    ``job_threads`` is the thread count of the workflow's jobs (snakemake sets
    ``OMP_NUM_THREADS`` to a job's ``threads``: ``cpus_per_job`` of the config). The ATen CPU
    capability is read in a subprocess with ``env``, since ``ATEN_CPU_CAPABILITY`` lowers it
    only when set before torch is imported.
    """
    import subprocess
    import sys

    probe = (
        "import json, numpy, torch; print(json.dumps({'torch': torch.__version__, "
        "'numpy': numpy.__version__, "
        "'aten_cpu_capability': torch.backends.cpu.get_cpu_capability()}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    facts.update(
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_model=_cpu_model(),
        job_threads=job_threads,
    )
    return dict(sorted(facts.items()))


@dataclass(frozen=True)
class Tolerance:
    """Per-element bound ``atol + rtol * |x|`` of a numeric output on another platform."""

    atol: float
    rtol: float


def summary_problems(
    name: str, ref: Mapping[str, Any], got: Mapping[str, Any], tol: Tolerance
) -> list[str]:
    """Where ``got`` is farther from ``ref`` than element-wise ``tol`` allows (empty: fine).

    Bounds: min/max move by at most ``atol + rtol * |x|`` of one element; sum and weighted sum
    (weights in [0, 1)) by at most ``n * atol + rtol * abs_sum``; abs_sum by the same.
    """
    if ref.get("shape") != got.get("shape") or ref.get("dtype") != got.get("dtype"):
        return [
            f"{name}: shape/dtype {got.get('shape')}/{got.get('dtype')}, "
            f"expected {ref.get('shape')}/{ref.get('dtype')}"
        ]
    if "sum" not in ref:
        return []
    problems = []
    if ref["nonfinite"] != got["nonfinite"]:
        problems.append(
            f"{name}: {got['nonfinite']} non-finite values, expected {ref['nonfinite']}"
        )
    n = int(np.prod(ref["shape"]))
    whole = n * tol.atol + tol.rtol * max(ref["abs_sum"], got["abs_sum"])
    bounds = {
        "min": tol.atol + tol.rtol * max(abs(ref["min"]), abs(got["min"])),
        "max": tol.atol + tol.rtol * max(abs(ref["max"]), abs(got["max"])),
        "sum": whole,
        "abs_sum": whole,
        "weighted_sum": whole,
    }
    for key, bound in bounds.items():
        diff = abs(got[key] - ref[key])
        if not diff <= bound:
            problems.append(
                f"{name}: {key} {got[key]!r} vs {ref[key]!r} (|diff| {diff:.3g} > {bound:.3g})"
            )
    return problems


def _numeric_problems(
    name: str, ref: Mapping[str, Any], got: Mapping[str, Any], tol: Tolerance
) -> list[str]:
    """Tolerance comparison of one file's numeric summaries and exact one of its text parts."""
    problems = []
    for key in ("columns", "text_sha256"):
        if ref.get(key) != got.get(key):
            problems.append(f"{name}: {key} differ (non-numeric content must match exactly)")
    ref_num, got_num = ref.get("numeric", {}), got.get("numeric", {})
    if sorted(ref_num) != sorted(got_num):
        problems.append(f"{name}: numeric members {sorted(got_num)}, expected {sorted(ref_num)}")
    for member in sorted(set(ref_num) & set(got_num)):
        problems += summary_problems(f"{name}[{member}]", ref_num[member], got_num[member], tol)
    return problems


def tolerance_for(name: str, tolerance: Mapping[str, Tolerance]) -> Tolerance:
    """The bound of output ``name``: the first key of ``tolerance`` in its path, else ``"*"``."""
    return next((t for k, t in tolerance.items() if k != "*" and k in name), tolerance["*"])


def identity_problems(
    reference: Mapping[str, Mapping[str, Any]],
    outputs: Mapping[str, Mapping[str, Any]],
    tolerance: Mapping[str, Tolerance] | None,
) -> list[str]:
    """How ``outputs`` differ from the manifest's ``reference`` fingerprints (empty: identical).

    With ``tolerance`` None (same platform) every entry must match by sha256. Otherwise files
    with numeric summaries compare within ``tolerance[kind]`` (kind: the first key of
    ``tolerance`` that occurs in the path, ``"*"`` for the rest) and all others by sha256.
    """
    problems = [f"missing output {name}" for name in sorted(set(reference) - set(outputs))]
    problems += [f"unexpected output {name}" for name in sorted(set(outputs) - set(reference))]
    for name in sorted(set(reference) & set(outputs)):
        ref, got = reference[name], outputs[name]
        if ref["sha256"] == got["sha256"]:
            continue
        if tolerance is not None and "portable_sha256" in ref:
            if ref["portable_sha256"] != got.get("portable_sha256"):
                problems.append(f"{name}: differs beyond its weights' digests")
            continue
        if tolerance is None or "numeric" not in ref:
            problems.append(f"{name}: sha256 {got['sha256'][:12]}, expected {ref['sha256'][:12]}")
            continue
        problems += _numeric_problems(name, ref, got, tolerance_for(name, tolerance))
    return problems
