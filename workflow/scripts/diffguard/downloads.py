"""Downloads of checkpoints and benchmark data: resumable, atomic, verified, safely extracted.

A config entry ``downloads.<key>`` names one file::

    downloads:
      adm256_uncond:
        url: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt
        sha256: null            # null: recorded on first download, verified afterwards
        filename: 256x256_diffusion_uncond.pt

exactly one of ``url`` (http, https or file), ``gdrive_id`` (a public Google Drive file) or
``manual`` (instructions for a file or folder the user must provide, located by ``path``). The
file lands in ``data/external/downloads/<key>/<filename>``. Bytes accumulate in a ``.part`` file
beside it (an interrupted download resumes with an HTTP Range request) and the part is renamed
onto the final name only after its sha256 matched: the pinned value, the torchvision file-name
prefix (``resnet50-0676ba61.pth``) or the hash recorded in ``config/checksums/<key>.sha256`` by an
earlier download. A mismatch is an error naming the file and both hashes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from diffguard.io import (  # noqa: F401  (setup_file_logging: re-exported for the rule scripts)
    ChecksumError,
    setup_file_logging,
    sha256sum,
    write_text,
)

log = logging.getLogger("diffguard")

GDRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
"""Direct-download endpoint of a public Google Drive file (skips the virus-scan page)."""

CHUNK = 1 << 16
"""Bytes per write: small enough that an interrupted transfer keeps nearly all it received."""
_TORCHVISION_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A download failed (HTTP error, credentials, HTML instead of the file, bad archive)."""


class ManualStepError(FileNotFoundError):
    """A file or folder that must be provided by hand is missing; the message says what to do."""


@dataclass(frozen=True)
class DownloadSpec:
    """One ``downloads.<key>`` entry of the config."""

    key: str
    filename: str
    url: str | None = None
    gdrive_id: str | None = None
    manual: str | None = None
    path: str | None = None
    sha256: str | None = None

    @property
    def source_url(self) -> str | None:
        if self.url:
            return self.url
        if self.gdrive_id:
            return GDRIVE_URL.format(id=self.gdrive_id)
        return None

    @property
    def hash_prefix(self) -> str | None:
        """Hash prefix carried by a torchvision-style file name (``name-<hex>.pth``)."""
        match = _TORCHVISION_HASH.search(self.filename)
        return match.group(1) if match else None


def parse_spec(key: str, entry: Mapping[str, Any]) -> DownloadSpec:
    """Validate ``downloads.<key>`` and return it as a :class:`DownloadSpec`."""
    sources = [s for s in ("url", "gdrive_id", "manual") if entry.get(s)]
    if len(sources) != 1:
        raise ValueError(
            f"downloads.{key}: expected exactly one of url, gdrive_id, manual; "
            f"got {sources or 'none'}"
        )
    filename = entry.get("filename")
    if not filename and entry.get("url"):
        filename = PurePosixPath(unquote(urlparse(entry["url"]).path)).name
    if not filename or "/" in filename or filename in (".", ".."):
        raise ValueError(f"downloads.{key}.filename: expected a plain file name, got {filename!r}")
    sha = entry.get("sha256")
    if sha is not None and not _HEX64.match(str(sha).lower()):
        raise ValueError(f"downloads.{key}.sha256: expected 64 hex digits or null, got {sha!r}")
    return DownloadSpec(
        key=key,
        filename=str(filename),
        url=entry.get("url"),
        gdrive_id=entry.get("gdrive_id"),
        manual=entry.get("manual"),
        path=entry.get("path"),
        sha256=str(sha).lower() if sha else None,
    )


# ------------------------------------------------------------------------------- verification
def recorded_hash_file(checksum_dir: str | Path, key: str) -> Path:
    return Path(checksum_dir) / f"{key}.sha256"


def expected_hash(spec: DownloadSpec, checksum_dir: str | Path) -> tuple[str | None, str]:
    """The hash a download must have and where it comes from (for error messages)."""
    if spec.sha256:
        return spec.sha256, f"config downloads.{spec.key}.sha256"
    recorded = recorded_hash_file(checksum_dir, spec.key)
    if recorded.is_file():
        text = recorded.read_text().split()
        if not text or not _HEX64.match(text[0].lower()):
            raise ValueError(f"{recorded}: expected a sha256 (64 hex digits) on its first line")
        return text[0].lower(), f"recorded in {recorded}"
    return None, "none recorded yet"


def verify_file(
    path: str | Path,
    spec: DownloadSpec,
    checksum_dir: str | Path,
    *,
    record: bool = True,
    actual: str | None = None,
) -> str:
    """Check ``path`` against the expected hash; record it when none is known yet.

    Raises:
        ChecksumError: naming the file, the expected hash (and its source) and the actual one.
    """
    path = Path(path)
    actual = actual or sha256sum(path)
    expected, source = expected_hash(spec, checksum_dir)
    if expected is not None and actual != expected:
        raise ChecksumError(
            f"sha256 mismatch for {path} (downloads.{spec.key}): expected {expected} ({source}), "
            f"got {actual}. The file is corrupt or not the published one: delete it and rerun."
        )
    prefix = spec.hash_prefix
    if prefix is not None and not actual.startswith(prefix):
        raise ChecksumError(
            f"sha256 mismatch for {path} (downloads.{spec.key}): expected a hash starting with "
            f"{prefix} (the prefix in the file name), got {actual}. Delete it and rerun."
        )
    if expected is None and record:
        target = recorded_hash_file(checksum_dir, spec.key)
        write_text(target, f"{actual}  {spec.filename}\n")
        log.info("%s: recorded sha256 %s in %s (verified on later runs)", path, actual, target)
    return actual


# ------------------------------------------------------------------------------------ fetching
def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:256].lower()
    return start.startswith((b"<!doctype html", b"<html")) or b"<html" in start[:64]


def _fetch_http(url: str, part: Path, dest: Path, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status in (401, 403):
            raise DownloadError(
                f"{url} answered HTTP {status} ({response.reason}) for {dest}: the file needs "
                "credentials or is not public. Download it by hand (log in where needed), "
                "place it at the path above, and rerun."
            )
        if status == 416 and offset:
            log.info("%s: part file already complete (%d bytes)", part, offset)
            return
        if status >= 400:
            raise DownloadError(f"{url} answered HTTP {status} ({response.reason}) for {dest}")
        if offset and status != 206:
            log.info("%s: server ignored the Range request; starting over", url)
            offset = 0
        ctype = response.headers.get("Content-Type", "")
        first = True
        with open(part, "ab" if offset else "wb") as handle:
            for block in response.iter_content(CHUNK):
                if first and offset == 0 and ("text/html" in ctype or _looks_like_html(block)):
                    raise DownloadError(
                        f"{url} returned an HTML page instead of {dest.name} (Content-Type "
                        f"{ctype!r}); Google Drive sends one for quota limits, removed or private "
                        "files. Download the file in a browser, place it at "
                        f"{dest}, and rerun."
                    )
                first = False
                handle.write(block)


def _fetch_file(url: str, part: Path) -> None:
    source = Path(unquote(urlparse(url).path))
    if not source.is_file():
        raise DownloadError(f"{url}: no such file")
    offset = part.stat().st_size if part.exists() else 0
    with open(source, "rb") as src, open(part, "ab" if offset else "wb") as handle:
        src.seek(offset)
        shutil.copyfileobj(src, handle, CHUNK)


def fetch(
    spec: DownloadSpec,
    dest: str | Path,
    checksum_dir: str | Path,
    *,
    timeout: float = 60.0,
) -> str:
    """Download ``spec`` to ``dest`` (resumable, verified, atomic); return its sha256.

    Raises:
        ManualStepError: the entry is manual (use :func:`link_manual`).
        DownloadError: HTTP error, missing credentials or an HTML page instead of the file.
        ChecksumError: the bytes do not match the expected hash (the part file is deleted).
    """
    dest = Path(dest)
    url = spec.source_url
    if url is None:
        raise ManualStepError(f"downloads.{spec.key} is a manual step: {spec.manual}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s%s", url, dest, " (resuming)" if part.exists() else "")
    scheme = urlparse(url).scheme
    try:
        if scheme in ("http", "https"):
            _fetch_http(url, part, dest, timeout)
        elif scheme == "file":
            _fetch_file(url, part)
        else:
            raise DownloadError(f"downloads.{spec.key}: unsupported URL scheme in {url}")
    except DownloadError:
        part.unlink(missing_ok=True)  # an HTML page or error body must not be resumed
        raise
    except (OSError, requests.RequestException) as err:
        size = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"download of {url} to {dest} stopped after {size} bytes ({err}); rerun to resume"
        ) from err
    try:
        digest = verify_file(part, spec, checksum_dir, record=False)
    except ChecksumError as err:
        part.unlink(missing_ok=True)
        raise ChecksumError(str(err).replace(str(part), str(dest))) from None
    os.replace(part, dest)
    verify_file(dest, spec, checksum_dir, actual=digest)  # records it on a first download
    log.info("%s: sha256 %s", dest, digest)
    return digest


def link_manual(spec: DownloadSpec, dest: str | Path, checksum_dir: str | Path) -> None:
    """Link a user-provided file or folder (``path``) to ``dest``, verifying files.

    Raises:
        ManualStepError: ``path`` is unset or missing; the message repeats the instructions.
    """
    dest = Path(dest)
    if not spec.path or not Path(spec.path).expanduser().exists():
        where = (
            f"`downloads.{spec.key}.path` ({spec.path})"
            if spec.path
            else (f"`downloads.{spec.key}.path` (unset)")
        )
        raise ManualStepError(
            f"{dest} needs a manual step. {spec.manual} Then set {where} to its location in "
            "your config (or with --config) and rerun."
        )
    source = Path(spec.path).expanduser().resolve()
    if source.is_file():
        verify_file(source, spec, checksum_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source, target_is_directory=source.is_dir())
    os.replace(tmp, dest)
    log.info("%s -> %s (user-provided)", dest, source)


# ---------------------------------------------------------------------------------- extraction
def _check_member(name: str, archive: Path) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"{archive}: refusing to extract unsafe member path {name!r}")


_AR_MAGIC = b"!<arch>\n"


def _deb_data_tar(archive: Path) -> io.BytesIO:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), as a file object.

    ``ar`` is a magic line then 60-byte headers (name 16, mtime 12, uid 6, gid 6, mode 8, size
    10, ``\x60\n``), each followed by its data padded to an even length.
    """
    data = archive.read_bytes()
    pos = len(_AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise DownloadError(f"{archive}: corrupt ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        start = pos + 60
        if name.startswith("data.tar"):
            return io.BytesIO(data[start : start + size])
        pos = start + size + (size % 2)
    raise DownloadError(f"{archive}: a Debian package without a data.tar member")


def _extract_tar(tf: tarfile.TarFile, archive: Path, tmp: Path) -> list[str]:
    """Extract a tar after refusing unsafe paths, links and special files."""
    members = tf.getmembers()
    for member in members:
        _check_member(member.name, archive)
        if not (member.isfile() or member.isdir()):
            raise DownloadError(f"{archive}: refusing link or special member {member.name!r}")
    tf.extractall(tmp, members=members, filter="data")
    return [member.name for member in members]


def extract_archive(archive: str | Path, out_dir: str | Path) -> list[str]:
    """Extract a zip (``.whl`` too), tar or Debian package into ``out_dir`` (atomically: temp
    folder + rename).

    A ``.deb`` yields the contents of its ``data.tar.*`` (the files it installs, e.g.
    ``usr/share/...``). Members with absolute paths or ``..`` components, links and device
    files are refused (no file can land outside ``out_dir``). Returns the extracted member names.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    names: list[str] = []
    try:
        with open(archive, "rb") as handle:
            is_ar = handle.read(len(_AR_MAGIC)) == _AR_MAGIC
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename, archive)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise DownloadError(f"{archive}: refusing symlink member {info.filename!r}")
                    names.append(info.filename)
                zf.extractall(tmp)
        elif is_ar:
            with tarfile.open(fileobj=_deb_data_tar(archive)) as tf:
                names = _extract_tar(tf, archive, tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                names = _extract_tar(tf, archive, tmp)
        else:
            raise DownloadError(f"{archive}: not a zip, tar or Debian (ar) archive")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("%s: extracted %d members into %s", archive, len(names), out_dir)
    return names
