"""The embedded offline benchmark: images that ship inside installed packages, no download.

In-distribution (ID): scikit-learn's bundled handwritten digits (``load_digits``, 8x8, values
0..16) of the classes ``id_classes`` (default 0-5), upsampled bilinearly to 16x16 and scaled to
0..255 grayscale. Near-OOD: the held-out digit classes (default 6-9). Far-OOD: 16x16 grayscale
patches cut at random positions and scales from real photographs bundled with scikit-learn
(``load_sample_images``) and scikit-image (``skimage.data`` images stored in the wheel).

Everything is seeded; the same seed gives byte-identical PNG files and lists (PNGs are written
without timestamps or other metadata).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffguard.data import OOD_LABEL, ImageRecord, image_id_for, write_imglist

log = logging.getLogger(__name__)

IMAGE_SIZE = 16
"""Side length of every embedded-benchmark image."""

SET_NAMES = ("train", "test_id", "near_digits", "far_photos")
"""Image lists written by :func:`build_embedded_benchmark`."""
VAL_PREFIX = "val_"
"""With ``val_fraction``: ``val_<set>`` lists carved out of each evaluation set (disjoint)."""

# Photographs for the far-OOD set, with the licence their package documents. Only images stored
# inside the installed wheels are used (skimage's other images would need a download), and only
# those whose docstring states a licence or the absence of copyright restrictions.
_SKIMAGE_PHOTOS: dict[str, str] = {
    "camera": "CC0 by the photographer (Lav Varshney); 'No copyright restrictions'",
    "coins": "Brooklyn Museum Collection; 'No known copyright restrictions'",
    "astronaut": "NASA Great Images database; 'No known copyright restrictions, released into "
    "the public domain'",
    "coffee": "CC0 by the photographer (Rachel Michetti); 'No copyright restrictions'",
    "chelsea": "CC0 by the photographer (Stefan van der Walt); 'No copyright restrictions'",
    "grass": "DeviantArt (linolafett), Creative Commons CC0",
    "gravel": "CC0Textures (Gravel04), Creative Commons CC0",
    "brick": "CC0Textures (Bricks25), Creative Commons CC0",
}
_SKLEARN_PHOTOS: dict[str, str] = {
    "china.jpg": "Creative Commons Attribution 2.0 (CC BY 2.0), 'Some rights reserved by "
    "danielbuechele' (Flickr), retrieved 2011 by Robert Layton",
    "flower.jpg": "Creative Commons Attribution 2.0 (CC BY 2.0), Flickr user vultilion, "
    "retrieved 2011 by Robert Layton",
}

# Far-OOD patches: square crops whose side is drawn uniformly from this range (pixels of the
# source photo), then reduced to 16x16, so the set mixes textures and object-scale structure.
_PATCH_SIDE_RANGE = (24, 128)


def _photo_sources() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """Return ``(name, loader)`` for every far-OOD photograph, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    sources: list[tuple[str, Callable[[], np.ndarray]]] = []
    for name in sorted(_SKLEARN_PHOTOS):
        sources.append((f"sklearn_{Path(name).stem}", lambda n=name: load_sample_image(n)))
    for name in sorted(_SKIMAGE_PHOTOS):
        sources.append((f"skimage_{name}", getattr(skimage.data, name)))
    return sources


def _to_gray_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an H x W (x 3|4) uint8 photo to 8-bit luminance (ITU-R 601, as PIL 'L')."""
    if array.ndim == 2:
        return array.astype(np.uint8)
    return np.asarray(Image.fromarray(array[..., :3].astype(np.uint8), "RGB").convert("L"))


def upsample_digits(images_8x8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Upsample sklearn digits (N x 8 x 8, values 0..16) to N x size x size uint8 (0..255).

    Bilinear interpolation (``align_corners=False``), then a linear rescale of 0..16 to 0..255.
    """
    tensor = torch.as_tensor(np.asarray(images_8x8, dtype=np.float64) / 16.0)[:, None]
    up = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(np.round(up[:, 0].numpy() * 255.0), 0, 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a grayscale PNG without metadata, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # No pnginfo and a fixed compression level: the bytes depend only on the pixels.
    Image.fromarray(array, mode="L").save(tmp, format="PNG", compress_level=9)
    os.replace(tmp, path)


def _stratified_split(
    labels: np.ndarray, train_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class so that train and test keep the class balance."""
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        cut = int(round(train_fraction * len(idx)))
        train.append(idx[:cut])
        test.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def far_photo_patches(
    n: int, seed: int, size: int = IMAGE_SIZE, stream: int = 2
) -> list[tuple[str, np.ndarray]]:
    """Cut ``n`` seeded grayscale ``size x size`` patches from the bundled photographs.

    ``stream`` selects an independent random stream of the same ``seed`` (2: the embedded
    benchmark's far set; other values give disjoint draws, e.g. a validation set).

    Returns:
        ``(source_name, patch uint8 size x size)`` pairs in generation order.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    sources = [(name, _to_gray_uint8(loader())) for name, loader in _photo_sources()]
    patches: list[tuple[str, np.ndarray]] = []
    for _ in range(n):
        name, photo = sources[int(rng.integers(len(sources)))]
        height, width = photo.shape
        max_side = min(_PATCH_SIDE_RANGE[1], height, width)
        side = int(rng.integers(_PATCH_SIDE_RANGE[0], max_side + 1))
        top = int(rng.integers(height - side + 1))
        left = int(rng.integers(width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side], mode="L")
        # PIL's bilinear filter widens its support when downscaling, i.e. it anti-aliases.
        patch = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        patches.append((name, patch))
    return patches


def _licences_text(id_classes: Sequence[int], near_classes: Sequence[int]) -> str:
    """Return the LICENSES.md text documenting every image source."""
    import PIL
    import skimage
    import sklearn

    lines = [
        "# Embedded benchmark: image sources and licences",
        "",
        "All images are derived from data files that ship inside installed Python packages;",
        "nothing is downloaded. The derived 16x16 images are redistributed under the same terms",
        "as their sources.",
        "",
        "## Digits (train, test_id, near_digits)",
        "",
        f"- Source: scikit-learn {sklearn.__version__} `sklearn.datasets.load_digits`, a copy of",
        "  the test set of the UCI ML 'Optical Recognition of Handwritten Digits' data set",
        "  (E. Alpaydin, C. Kaynak, 1998),",
        "  https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits",
        "- Licence: Creative Commons Attribution 4.0 International (CC BY 4.0), as stated by the",
        "  UCI Machine Learning Repository.",
        "- Processing: 8x8 values 0..16 upsampled bilinearly to 16x16 and scaled to 0..255.",
        f"- In-distribution classes: {list(id_classes)}; near-OOD classes: {list(near_classes)}.",
        "",
        "## Photographs (far_photos)",
        "",
        "Random square crops (side 24-128 px), converted to grayscale and reduced to 16x16.",
        "",
        f"From scikit-learn {sklearn.__version__} (`sklearn.datasets.load_sample_images`; licence",
        "as stated in `sklearn/datasets/images/README.txt`):",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in sorted(_SKLEARN_PHOTOS.items())]
    lines += [
        "",
        f"From scikit-image {skimage.__version__} (`skimage.data`, files stored in the wheel;",
        "licence as stated in each function's docstring):",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in sorted(_SKIMAGE_PHOTOS.items())]
    lines += ["", f"PNG files written with Pillow {PIL.__version__}.", ""]
    return "\n".join(lines)


def _near_classes(
    id_classes: list[int], train_fraction: float, n_near: int | None, n_far: int
) -> list[int]:
    """The held-out digits (near-OOD); raises ValueError for invalid arguments."""
    if not id_classes or len(set(id_classes)) != len(id_classes):
        raise ValueError(f"id_classes must be distinct digits, got {id_classes}")
    if any(not 0 <= c <= 9 for c in id_classes):
        raise ValueError(f"id_classes must be digits 0-9, got {id_classes}")
    near_classes = [c for c in range(10) if c not in id_classes]
    if not near_classes:
        raise ValueError("id_classes must leave at least one digit class out for near-OOD")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if n_far < 0 or (n_near is not None and n_near < 0):
        raise ValueError(f"n_near and n_far must be >= 0, got {n_near}, {n_far}")
    return near_classes


def _write_lists_and_summary(
    out_dir: Path,
    lists: dict[str, list[ImageRecord]],
    seed: int,
    id_classes: list[int],
    near_classes: list[int],
) -> dict[str, Any]:
    """Write the image lists, ``LICENSES.md`` and ``benchmark.json``; return the summary."""
    list_paths: dict[str, str] = {}
    for set_name, records in lists.items():
        list_path = out_dir / "imglists" / f"{set_name}.txt"
        if records:
            write_imglist(list_path, records)
            list_paths[set_name] = str(list_path.relative_to(out_dir))

    licences = out_dir / "LICENSES.md"
    licences.write_text(_licences_text(id_classes, near_classes), encoding="utf-8")

    digest = hashlib.sha256()
    for set_name in lists:  # SET_NAMES order, val lists after their sets
        for record in lists[set_name]:
            digest.update(record.path.encode())
            digest.update((out_dir / "images" / record.path).read_bytes())
    summary: dict[str, Any] = {
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "channels": 1,
        "id_classes": id_classes,
        "near_classes": near_classes,
        "num_classes": len(id_classes),
        "counts": {name: len(records) for name, records in lists.items()},
        "imglists": list_paths,
        "image_root": "images",
        "far_sources": [name for name, _ in _photo_sources()],
        "sha256": digest.hexdigest(),
    }
    (out_dir / "benchmark.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return summary


def build_embedded_benchmark(
    out_dir: str | Path,
    seed: int,
    n_near: int | None,
    n_far: int,
    id_classes: Sequence[int] = (0, 1, 2, 3, 4, 5),
    train_fraction: float = 2.0 / 3.0,
    val_fraction: float | None = None,
) -> dict[str, Any]:
    """Build the embedded benchmark under ``out_dir``.

    Writes ``images/<set>/<id>.png``, ``imglists/<set>.txt`` for the sets in
    :data:`SET_NAMES` (paths relative to ``out_dir/images``; OOD label -1; ID labels are the
    position of the digit in ``id_classes``), ``LICENSES.md`` and ``benchmark.json``.

    Args:
        out_dir: Output directory (created).
        seed: Seed for the ID split, the near-OOD subsample and the far-OOD patches.
        n_near: Number of near-OOD digits (``None`` = all held-out digits).
        n_far: Number of far-OOD photo patches.
        id_classes: Digit classes that are in-distribution; the others are near-OOD.
        train_fraction: Fraction of each ID class used for training.
        val_fraction: None (default): no validation lists. Else ``val_<set>`` lists of this
            seeded fraction of each evaluation set, removed from ``<set>`` (disjoint).

    Returns:
        A summary: per-set counts, list paths, classes and seed (also in ``benchmark.json``).

    Raises:
        ValueError: Invalid classes, fractions or counts.
    """
    from sklearn.datasets import load_digits

    id_classes = [int(c) for c in id_classes]
    near_classes = _near_classes(id_classes, train_fraction, n_near, n_far)

    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    digits = load_digits()
    images = upsample_digits(digits.images)
    targets = np.asarray(digits.target)

    id_mask = np.isin(targets, id_classes)
    id_idx = np.flatnonzero(id_mask)
    near_idx = np.flatnonzero(~id_mask)
    label_of = {digit: k for k, digit in enumerate(id_classes)}

    split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    train_pos, test_pos = _stratified_split(targets[id_idx], train_fraction, split_rng)
    if n_near is not None:
        if n_near > len(near_idx):
            raise ValueError(f"n_near={n_near} exceeds the {len(near_idx)} held-out digits")
        near_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        near_idx = np.sort(near_rng.choice(near_idx, size=n_near, replace=False))

    lists: dict[str, list[ImageRecord]] = {name: [] for name in SET_NAMES}

    def add(set_name: str, stem: str, pixels: np.ndarray, label: int) -> None:
        rel = f"{set_name}/{stem}.png"
        _write_png(image_root / rel, pixels)
        lists[set_name].append(ImageRecord(rel, label, image_id_for(rel)))

    for set_name, positions in (("train", train_pos), ("test_id", test_pos)):
        for k in id_idx[positions]:
            add(set_name, f"digit{int(k):04d}", images[k], label_of[int(targets[k])])
    for k in near_idx:
        add("near_digits", f"digit{int(k):04d}", images[k], OOD_LABEL)
    for j, (source, patch) in enumerate(far_photo_patches(n_far, seed)):
        add("far_photos", f"{source}_{j:04d}", patch, OOD_LABEL)

    if val_fraction is not None:
        lists = split_validation(lists, val_fraction, seed)
    summary = _write_lists_and_summary(out_dir, lists, seed, id_classes, near_classes)
    log.info("embedded benchmark in %s: %s", out_dir, summary["counts"])
    return summary


def split_validation(
    lists: dict[str, list[ImageRecord]], fraction: float, seed: int
) -> dict[str, list[ImageRecord]]:
    """Move a seeded ``fraction`` of each evaluation list into ``val_<list>`` (order kept);
    the train list is untouched. Called only when the config asks for validation lists, so a
    run without them writes the same lists as before."""
    if not 0 < fraction < 1:
        raise ValueError(f"benchmark.embedded.val_fraction must be in (0, 1), got {fraction}")
    out = {"train": lists["train"]}
    for k, name in enumerate(n for n in SET_NAMES if n != "train"):
        records = lists[name]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, k]))
        n_val = int(round(fraction * len(records)))
        val = set(rng.permutation(len(records))[:n_val].tolist())
        out[name] = [r for i, r in enumerate(records) if i not in val]
        out[f"{VAL_PREFIX}{name}"] = [r for i, r in enumerate(records) if i in val]
    return out
