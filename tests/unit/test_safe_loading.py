"""Checkpoints that would run code when unpickled are refused by every loader, never executed.

Each test writes a pickle whose ``__reduce__`` calls ``os.system("touch <marker>")``, hands it
to a loader, and checks that the loader raises and that the marker file was not created. A
control test shows that the payload does run under an unsafe ``torch.load``, so the marker
check can fail.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffguard.checkpoints import InertObject, UnsafeCheckpointError, load_checkpoint
from diffguard.classifiers import build_classifier
from diffguard.convert.adm import load_adm_unet
from diffguard.convert.diffnb import load_diffnb_unet
from diffguard.convert.ldm import load_ldm
from diffguard.model_io import SPEC_FILE, WEIGHTS_FILE, load_classifier, load_small_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import standins  # noqa: E402


class _RunsCode:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _poisoned_torch_file(path: Path, marker: Path) -> Path:
    """A torch.save zip checkpoint: a valid-looking state dict plus the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "extra": _RunsCode(marker)}, path)
    return path


def _poisoned_legacy_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle stream (pre-zip torch format) holding the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump({"model": _RunsCode(marker)}, handle)
    return path


POISONERS = {"torch_zip": _poisoned_torch_file, "legacy_pickle": _poisoned_legacy_pickle}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran.marker"


@pytest.mark.parametrize("kind", sorted(POISONERS))
def test_payload_runs_under_unsafe_load(tmp_path: Path, marker: Path, kind: str) -> None:
    """Control: the payload is live, so a loader that executed it would create the marker."""
    path = POISONERS[kind](tmp_path / "control.pt", marker)
    if kind == "torch_zip":
        torch.load(path, weights_only=False)
    else:
        with path.open("rb") as handle:
            pickle.load(handle)  # noqa: S301  (deliberately unsafe: this is the control)
    assert marker.is_file()


@pytest.mark.parametrize("kind", sorted(POISONERS))
def test_load_checkpoint_refuses_code(tmp_path: Path, marker: Path, kind: str) -> None:
    path = POISONERS[kind](tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refusing" in message
    assert "tensor" in message  # says what a loadable checkpoint is
    assert not marker.exists()


def test_load_checkpoint_accepts_plain_tensors(tmp_path: Path, marker: Path) -> None:
    """The refusal is about code, not about .pt files: a tensors-only state dict loads."""
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"weight": torch.arange(3.0)}, "epoch": 3}, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], torch.arange(3.0))


LOADERS: dict[str, Callable[[Path], object]] = {
    "adm": lambda p: load_adm_unet(p, {"image_size": 64}),
    "ldm": lambda p: load_ldm(p, {}, {}, n_embed=16, embed_dim=3),
    "diffnb": lambda p: load_diffnb_unet(p, {}),
    "classifier_weights": lambda p: build_classifier(
        {"arch": "small_cnn", "num_classes": 6, "in_channels": 1, "width": 8, "weights": str(p)}
    ),
    "classifier_resnet50": lambda p: build_classifier({"arch": "resnet50_tv", "weights": str(p)}),
    "classifier_resnet18": lambda p: build_classifier(
        {"arch": "resnet18_32x32", "weights": str(p)}
    ),
}


@pytest.mark.parametrize("kind", sorted(POISONERS))
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_converters_and_classifiers_refuse_code(
    tmp_path: Path, marker: Path, loader: str, kind: str
) -> None:
    suffix = ".ckpt" if loader == "ldm" else ".pt"
    path = POISONERS[kind](tmp_path / f"evil{suffix}", marker)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        LOADERS[loader](path)
    assert not marker.exists()


def test_load_classifier_refuses_a_poisoned_weights_file(tmp_path: Path, marker: Path) -> None:
    """A saved-classifier folder whose weights file was swapped for a pickle does not load."""
    folder = tmp_path / "classifier"
    folder.mkdir()
    spec = {"arch": "small_cnn", "num_classes": 6, "in_channels": 1, "width": 8}
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    _poisoned_torch_file(folder / WEIGHTS_FILE, marker)
    with pytest.raises(Exception) as info:  # noqa: B017  (safetensors raises its own type)
        load_classifier(folder)
    assert not isinstance(info.value, (KeyError, AttributeError)), info.value
    assert not marker.exists()


def test_load_small_unet_ignores_pickled_weights(tmp_path: Path, marker: Path) -> None:
    """diffusers is asked for safetensors only: a pickled ``.bin`` beside the config never loads."""
    from diffusers import UNet2DModel

    folder = tmp_path / "unet"
    UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        layers_per_block=1,
        norm_num_groups=4,
    ).save_pretrained(folder, safe_serialization=True)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    _poisoned_torch_file(folder / "diffusion_pytorch_model.bin", marker)
    with pytest.raises((OSError, EnvironmentError, ValueError)):
        load_small_unet(folder)
    assert not marker.exists()


@pytest.mark.parametrize("distance", ["dists", "lpips"])
def test_perceptual_weights_refuse_code(tmp_path: Path, marker: Path, distance: str) -> None:
    """piq loads the VGG16/DISTS/LPIPS files of the torch-hub folder with ``weights_only=False``:
    the scorer must check them safely first, so a poisoned file there never runs."""
    from diffguard.distances import PERCEPTUAL_WEIGHT_FILES, SimilarityScorer

    hub = tmp_path / "hub"
    for name in PERCEPTUAL_WEIGHT_FILES[distance]:
        _poisoned_torch_file(hub / "checkpoints" / name, marker)
    previous = torch.hub.get_dir()
    try:
        with pytest.raises(UnsafeCheckpointError):
            SimilarityScorer([distance], torch_hub_dir=hub)
    finally:
        torch.hub.set_dir(previous)
    assert not marker.exists()


def test_load_checkpoint_reads_a_zipped_checkpoint(tmp_path: Path, marker: Path) -> None:
    """A host serving the checkpoint zipped (OpenOOD's v1.5 script) loads the one member inside."""
    import zipfile

    inner = tmp_path / "cifar10_res18_acc94.30.ckpt"
    torch.save({"fc.weight": torch.arange(6.0).reshape(2, 3)}, inner)
    wrapped = tmp_path / "download.ckpt"
    with zipfile.ZipFile(wrapped, "w") as zf:
        zf.write(inner, "results/checkpoints/cifar10_res18_acc94.30.ckpt")
        zf.writestr("results/checkpoints/README.txt", "readme")
    loaded = load_checkpoint(wrapped)
    assert torch.equal(loaded["fc.weight"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(load_checkpoint(inner)["fc.weight"], loaded["fc.weight"])  # torch's own zip

    ambiguous = tmp_path / "two.zip"
    with zipfile.ZipFile(ambiguous, "w") as zf:
        zf.write(inner, "s0/best.ckpt")
        zf.write(inner, "s1/best.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"two.zip.*exactly one member.*s0/best.ckpt"):
        load_checkpoint(ambiguous)

    poisoned = tmp_path / "poisoned.zip"
    payload = _poisoned_legacy_pickle(tmp_path / "payload.ckpt", marker)
    with zipfile.ZipFile(poisoned, "w") as zf:
        zf.write(payload, "model.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(poisoned)
    assert not marker.exists()


# ------------------------------------------------------------ Lightning checkpoints (CompVis LDM)


def _lightning_checkpoint(path: Path, form: str) -> dict[str, Any]:
    """A Lightning-shaped checkpoint whose callback names the real ``ModelCheckpoint`` global.

    ``class_key``: Lightning < 1.5 (latent-diffusion's 1.4.2) keys callback states by the class;
    ``instance``: a pickled ``ModelCheckpoint`` object (NEWOBJ + BUILD of its ``__dict__``).
    """
    state = {"monitor": "val/loss_simple_ema", "best_model_score": torch.tensor(0.25)}
    with standins.fake_global_class(standins.LIGHTNING_MODEL_CHECKPOINT) as model_checkpoint:
        if form == "class_key":
            callbacks: Any = {model_checkpoint: state}
        else:
            callback = model_checkpoint()
            callback.__dict__.update(state)
            callbacks = [callback]
        torch.save(
            {
                "epoch": 3,
                "global_step": 1234,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": callbacks,
                "state_dict": {"model.weight": torch.arange(4.0)},
            },
            path,
        )
    return state


@pytest.mark.parametrize("form", ["class_key", "instance"])
def test_lightning_checkpoint_loads_with_inert_callbacks(tmp_path: Path, form: str) -> None:
    """The callback global is refused by plain weights_only, yet the checkpoint loads: tensors and
    plain values kept, the callback an inert placeholder, Lightning never imported."""
    path = tmp_path / "model.ckpt"
    state = _lightning_checkpoint(path, form)
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint"):
        torch.load(path, weights_only=True)  # control: today's plain weights-only load fails

    allowed_before = set(torch.serialization.get_safe_globals())
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["model.weight"], torch.arange(4.0))
    assert (loaded["epoch"], loaded["global_step"]) == (3, 1234)
    assert loaded["pytorch-lightning_version"] == "1.4.2"
    if form == "class_key":
        (key, value), *_ = loaded["callbacks"].items()
        assert issubclass(key, InertObject)
        assert key.qualified_name == standins.LIGHTNING_MODEL_CHECKPOINT
        assert value["monitor"] == state["monitor"]
    else:
        (callback,) = loaded["callbacks"]
        assert isinstance(callback, InertObject)
        assert callback.qualified_name == standins.LIGHTNING_MODEL_CHECKPOINT
        assert callback.state["monitor"] == state["monitor"]
        assert torch.equal(callback.state["best_model_score"], state["best_model_score"])
    assert "pytorch_lightning" not in sys.modules
    assert set(torch.serialization.get_safe_globals()) == allowed_before  # nothing leaked


def test_lightning_callback_does_not_admit_code(tmp_path: Path, marker: Path) -> None:
    """A Lightning-shaped file that also carries a code payload is refused, naming the global."""
    path = tmp_path / "model.ckpt"
    with standins.fake_global_class(standins.LIGHTNING_MODEL_CHECKPOINT) as model_checkpoint:
        torch.save(
            {"callbacks": {model_checkpoint: {}}, "state_dict": {}, "hook": _RunsCode(marker)},
            path,
        )
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refusing" in message and "system" in message
    assert not marker.exists()


class _CallsEval:
    """Unpickling this object evaluates an expression that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def test_eval_payload_and_unknown_class_are_refused(tmp_path: Path, marker: Path) -> None:
    """builtins.eval (REDUCE) and an unknown class (NEWOBJ + BUILD) outside the allow-list."""
    evil = tmp_path / "eval.ckpt"
    torch.save({"state_dict": {}, "x": _CallsEval(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=rf"{re.escape(str(evil))}.*eval"):
        load_checkpoint(evil)
    assert not marker.exists()

    unknown = tmp_path / "unknown.ckpt"
    with standins.fake_global_class("somepackage.trainer.Hook") as hook:
        instance = hook()
        instance.path = str(marker)
        torch.save({"state_dict": {}, "hook": instance}, unknown)
    with pytest.raises(UnsafeCheckpointError, match=r"unknown.ckpt.*somepackage\.trainer\.Hook"):
        load_checkpoint(unknown)


def test_allow_listed_global_is_never_called(tmp_path: Path, marker: Path) -> None:
    """An allow-listed name only ever resolves to the inert placeholder: a REDUCE on it records
    its arguments instead of running whatever the real class (or a lookalike) would do."""
    path = tmp_path / "model.ckpt"
    with standins.fake_global_class(standins.LIGHTNING_MODEL_CHECKPOINT) as model_checkpoint:

        class _Reducing:
            def __reduce__(self) -> tuple[Any, tuple[str]]:
                return model_checkpoint, (f"touch {shlex.quote(str(marker))}",)

        torch.save({"callbacks": [_Reducing()], "state_dict": {}}, path)
    (callback,) = load_checkpoint(path)["callbacks"]
    assert isinstance(callback, InertObject)
    assert callback.args == (f"touch {shlex.quote(str(marker))}",)
    assert not marker.exists()


def test_ldm_standin_is_lightning_shaped(tmp_path: Path) -> None:
    """The LDM stand-in carries the Lightning entries and the callback global of the real file."""
    written = standins.write_ldm(tmp_path / "ldm")
    path = written["paths"]["model"]
    assert (
        standins.LIGHTNING_MODEL_CHECKPOINT
        in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    )
    loaded = load_checkpoint(path)
    assert {"callbacks", "epoch", "global_step", "pytorch-lightning_version", "state_dict"} <= set(
        loaded
    )
