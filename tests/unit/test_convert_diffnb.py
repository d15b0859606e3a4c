"""DiffNB (DDIM ``simple``, class-conditional) -> diffusers ``UNet2DModel`` conversion."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from diffusers import UNet2DModel

from diffguard.checkpoints import load_checkpoint
from diffguard.convert.diffnb import (
    DiffNBConversionError,
    build_diffnb_unet,
    convert_diffnb_state_dict,
    diffnb_null_label,
    diffnb_unet_kwargs,
    load_diffnb_unet,
)
from diffguard.convert.manifest import read_manifest, zeros_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import standins  # noqa: E402

log = logging.getLogger(__name__)

FIXTURE_TOL = 1e-4


@pytest.fixture(scope="module")
def fixture(checkpoints_dir: Path) -> dict[str, Any]:
    return load_checkpoint(checkpoints_dir / "diffnb_tiny_fixture.pt")


def _run(model: torch.nn.Module, fx: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(fx["x"], fx["t"], class_labels=fx["y"]).sample


def test_tiny_fixture_output_matches(fixture: dict[str, Any]) -> None:
    config = fixture["config"]
    # The fixture must exercise the null label as well as real ones.
    assert int(fixture["y"].max()) == diffnb_null_label(config) == config["num_classes"]
    model = build_diffnb_unet(config)
    model.load_state_dict(convert_diffnb_state_dict(fixture["state_dict"], config), strict=True)
    model.eval()
    out = _run(model, fixture)
    err = (out - fixture["out"]).abs().max().item()
    log.info("DiffNB tiny fixture max abs error: %.3g", err)
    assert out.shape == fixture["out"].shape
    assert err <= FIXTURE_TOL, f"max abs error {err:.3g} > {FIXTURE_TOL}"


@pytest.mark.parametrize(
    "override",
    [
        {"flip_sin_to_cos": True},  # cos-first embedding (ADM order)
        {"freq_shift": 0},  # frequencies exp(-ln(1e4) i / half)
        {"downsample_padding": 1},  # symmetric downsample padding
    ],
)
def test_fixture_detects_wrong_architecture_flags(
    fixture: dict[str, Any], override: dict[str, Any]
) -> None:
    """Each flag the converter sets is pinned down by the fixture (not a tautology)."""
    config = fixture["config"]
    kwargs = diffnb_unet_kwargs(config) | override
    model = UNet2DModel(**kwargs)
    model.load_state_dict(convert_diffnb_state_dict(fixture["state_dict"], config), strict=True)
    model.eval()
    err = (_run(model, fixture) - fixture["out"]).abs().max().item()
    assert err > 100 * FIXTURE_TOL, f"{override} still matches (err {err:.3g})"


def test_label_embedding_matters(fixture: dict[str, Any]) -> None:
    """Zeroing the label table changes the output: the labels really enter the model."""
    config = fixture["config"]
    sd = dict(fixture["state_dict"])
    sd["label_emb.weight"] = torch.zeros_like(sd["label_emb.weight"])
    model = build_diffnb_unet(config)
    model.load_state_dict(convert_diffnb_state_dict(sd, config), strict=True)
    model.eval()
    assert (_run(model, fixture) - fixture["out"]).abs().max().item() > 100 * FIXTURE_TOL


def test_manifest_converts_and_loads_strictly(checkpoints_dir: Path) -> None:
    header, shapes = read_manifest(checkpoints_dir / "diffnb_cifar10_cond_manifest.tsv")
    config = header["config"]
    assert len(shapes) == 329
    sd = zeros_state_dict(shapes)
    converted = convert_diffnb_state_dict(sd, config)
    model = build_diffnb_unet(config)
    assert model.class_embedding.num_embeddings == config["num_classes"] + 1
    assert set(converted) == set(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 35_751_939
    model.load_state_dict(converted, strict=True)
    # The model starts from random weights: all-zero parameters prove every one was filled.
    unfilled = [n for n, p in model.named_parameters() if bool(p.detach().ne(0).any())]
    assert not unfilled, f"parameters not filled from the checkpoint: {unfilled[:5]}"


def test_missing_and_leftover_keys_are_named(fixture: dict[str, Any]) -> None:
    config = fixture["config"]
    sd = dict(fixture["state_dict"])
    del sd["up.1.attn.0.q.weight"]
    with pytest.raises(DiffNBConversionError, match=r"up\.1\.attn\.0\.q\.weight"):
        convert_diffnb_state_dict(sd, config)

    sd = dict(fixture["state_dict"])
    sd["extra.thing.weight"] = torch.zeros(1)
    with pytest.raises(DiffNBConversionError, match=r"extra\.thing\.weight"):
        convert_diffnb_state_dict(sd, config)

    sd = dict(fixture["state_dict"])
    sd["conv_out.bias"] = torch.zeros(7)
    with pytest.raises(DiffNBConversionError, match=r"conv_out\.bias"):
        convert_diffnb_state_dict(sd, config)


def test_unsupported_config_is_rejected(fixture: dict[str, Any]) -> None:
    config = dict(fixture["config"])
    with pytest.raises(DiffNBConversionError, match="resamp_with_conv"):
        diffnb_unet_kwargs(config | {"resamp_with_conv": False})
    with pytest.raises(DiffNBConversionError, match="ch_mult"):
        diffnb_unet_kwargs(config | {"ch_mult": [2, 2]})
    del config["num_res_blocks"]
    with pytest.raises(DiffNBConversionError, match="num_res_blocks"):
        diffnb_unet_kwargs(config)


def test_data_parallel_list_checkpoint_loads_ema(fixture: dict[str, Any], tmp_path: Path) -> None:
    """DDIM runner layout: [model, optimizer, epoch, step, ema], keys under ``module.``."""
    ema = {f"module.{k}": v.clone() for k, v in fixture["state_dict"].items()}
    # The raw model weights differ, so loading the wrong entry would fail the output check.
    raw = {k: v + 0.5 for k, v in ema.items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(raw)))}]}
    path = tmp_path / "ckpt.pth"
    torch.save([raw, optimizer, 12, 3456, ema], path)
    model = load_diffnb_unet(path, fixture["config"])
    assert not model.training
    err = (_run(model, fixture) - fixture["out"]).abs().max().item()
    assert err <= FIXTURE_TOL, f"max abs error {err:.3g} > {FIXTURE_TOL}"

    broken = {k: v for k, v in ema.items() if k != "module.mid.block_2.conv1.bias"}
    torch.save([raw, optimizer, 12, 3456, broken], path)
    with pytest.raises(DiffNBConversionError, match=r"ckpt\.pth.*mid\.block_2\.conv1\.bias"):
        load_diffnb_unet(path, fixture["config"])


def _standin_config(written: dict[str, Any]) -> dict[str, Any]:
    from diffguard.preparation import diffnb_config_from_yaml

    return diffnb_config_from_yaml(yaml.safe_load(written["paths"]["config"].read_text()))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_flat_ema_checkpoint_loads(fixture: dict[str, Any], tmp_path: Path, prefix: str) -> None:
    """DiffOOD's ema_cifar10.ckpt: ``torch.save(EMAHelper.state_dict())``, a flat name -> tensor
    dict (no prefix: the EMA registers the unwrapped model; a DataParallel prefix is stripped)."""
    path = tmp_path / "ema_cifar10.ckpt"
    torch.save({f"{prefix}{k}": v for k, v in fixture["state_dict"].items()}, path)
    model = load_diffnb_unet(path, fixture["config"])
    err = (_run(model, fixture) - fixture["out"]).abs().max().item()
    assert err <= FIXTURE_TOL, f"max abs error {err:.3g} > {FIXTURE_TOL}"


def test_training_checkpoint_is_refused_naming_the_ema_file(
    fixture: dict[str, Any], tmp_path: Path
) -> None:
    """DiffOOD's train.ckpt ``[model, optimizer, scheduler, epoch, step, time_start]`` holds the raw
    weights, not the EMA ones DiffNB samples with: refused, naming the file and the one to use."""
    written = standins.write_diffnb(tmp_path, filename="train.ckpt", training_checkpoint=True)
    path = written["path"]
    assert isinstance(load_checkpoint(path), list)
    config = _standin_config(written)
    with pytest.raises(DiffNBConversionError, match=r"train\.ckpt.*ema_cifar10\.ckpt"):
        load_diffnb_unet(path, config)


def test_diffnb_standin_is_the_flat_ema_dict(tmp_path: Path) -> None:
    """The stand-in has the real file's format: a flat name -> tensor dict that loads."""
    written = standins.write_diffnb(tmp_path)
    raw = load_checkpoint(written["path"])
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())
    assert not any(k.startswith("module.") for k in raw)
    load_diffnb_unet(written["path"], _standin_config(written))
