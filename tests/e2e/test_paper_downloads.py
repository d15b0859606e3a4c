"""Download verification through the real rules: a corrupted file stops the run and says why."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.slow

KEY = "openood_cifar10_res18"
FILENAME = "cifar10_res18_acc94.30.ckpt"
PAYLOAD = b"not really a checkpoint, but real bytes" * 1000


def _config(work: Path, source: Path, sha256: str | None) -> str:
    """config/cifar10.yaml with the classifier download served from a local file."""
    config = yaml.safe_load((work / "config" / "cifar10.yaml").read_text())
    config["downloads"][KEY] = {"url": source.as_uri(), "filename": FILENAME, "sha256": sha256}
    path = work / "config" / "test_downloads.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path.relative_to(work))


@pytest.fixture()
def work(tmp_path: Path, e2e: SimpleNamespace) -> Path:
    return e2e.copy_repo(tmp_path)


def test_pinned_hash_mismatch_stops_the_download(
    work: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    source = tmp_path / "served" / FILENAME
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    wrong = "f" * 64
    config = _config(work, source, wrong)
    target = f"data/external/downloads/{KEY}/{FILENAME}"
    result = e2e.snakemake(work, "--cores", "1", target, configfiles=[config], check=False)
    assert result.returncode != 0
    actual = hashlib.sha256(PAYLOAD).hexdigest()
    assert target in result.output and wrong in result.output and actual in result.output
    assert not (work / target).exists()
    assert not (work / f"{target}.part").exists()


def test_corrupted_download_stops_the_run(work: Path, tmp_path: Path, e2e: SimpleNamespace) -> None:
    source = tmp_path / "served" / FILENAME
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    config = _config(work, source, None)  # hash recorded on first download
    stamp = f"data/external/verified/{KEY}.sha256"
    downloaded = work / "data" / "external" / "downloads" / KEY / FILENAME
    e2e.snakemake(work, "--cores", "1", stamp, configfiles=[config])
    good = hashlib.sha256(PAYLOAD).hexdigest()
    recorded = work / "config" / "checksums" / f"{KEY}.sha256"
    assert recorded.read_text().split()[0] == good
    assert (work / stamp).read_text().split()[0] == good
    # nothing to do while the file is intact
    again = e2e.snakemake(work, "--cores", "1", stamp, configfiles=[config])
    assert "Nothing to be done" in again.output

    downloaded.write_bytes(PAYLOAD[:-10] + b"corrupted!")
    bad = hashlib.sha256(downloaded.read_bytes()).hexdigest()
    result = e2e.snakemake(work, "--cores", "1", stamp, configfiles=[config], check=False)
    assert result.returncode != 0
    assert "verify_download" in result.output
    message = next(line for line in result.output.splitlines() if "sha256 mismatch" in line)
    assert str(Path("data/external/downloads") / KEY / FILENAME) in message
    assert good in message and bad in message, message
    assert not (work / stamp).exists(), "a failed verification must not leave its stamp"
