"""Tests for the CompVis latent-diffusion (cin256-v2) to diffusers converter."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel, VQModel
from diffusers.models.activations import GEGLU

from diffguard.checkpoints import load_checkpoint
from diffguard.convert.ldm import (
    LdmConversionError,
    LdmParts,
    convert_ldm_checkpoint,
    convert_ldm_state_dict,
    ldm_decode,
    ldm_encode,
    ldm_eps,
    ldm_quantize,
    ldm_unet_kwargs,
    load_ldm,
    vq_kwargs,
)
from diffguard.convert.manifest import read_manifest, zeros_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import standins  # noqa: E402

TOLERANCE = 1e-4
FIXTURE = "ldm_tiny_fixture.pt"
MANIFEST = "ldm_cin256_v2_manifest.tsv"
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "posterior_mean_coef1", "scale_factor")


@pytest.fixture(scope="module")
def tiny(checkpoints_dir: Path) -> dict[str, Any]:
    return load_checkpoint(checkpoints_dir / FIXTURE)


def _convert(tiny: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> LdmParts:
    return convert_ldm_checkpoint(
        state_dict, tiny["unet_config"], tiny["ddconfig"], tiny["n_embed"], tiny["embed_dim"]
    )


@pytest.fixture(scope="module")
def tiny_parts(tiny: dict[str, Any]) -> LdmParts:
    return _convert(tiny, tiny["state_dict"])


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


# ----------------------------------------------------------------- numerical fixture


def test_tiny_eps_matches_reference(tiny: dict[str, Any], tiny_parts: LdmParts) -> None:
    assert tiny_parts.null_class == tiny["n_classes"] - 1
    with torch.no_grad():
        eps = ldm_eps(tiny_parts, tiny["z"], tiny["t"], tiny["y"])
    assert _max_err(eps, tiny["eps"]) <= TOLERANCE  # measured 3.5e-6


def test_tiny_decoded_matches_reference(tiny: dict[str, Any], tiny_parts: LdmParts) -> None:
    with torch.no_grad():
        decoded = ldm_decode(tiny_parts, tiny["z"])
    assert _max_err(decoded, tiny["decoded"]) <= TOLERANCE  # measured 8.0e-6


def test_tiny_encoded_matches_reference(tiny: dict[str, Any], tiny_parts: LdmParts) -> None:
    with torch.no_grad():
        encoded = ldm_encode(tiny_parts, tiny["image"])
        # Chunked nearest-code search must not depend on the chunk size.
        latent = tiny_parts.vq.encode(tiny["image"]).latents
        small_chunks = ldm_quantize(tiny_parts, latent, chunk=7)
    assert _max_err(encoded, tiny["encoded"]) <= TOLERANCE  # measured 0.0
    assert torch.equal(small_chunks, encoded)
    # Every latent vector is a codebook row.
    codebook = tiny_parts.vq.quantize.embedding.weight
    vectors = encoded.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
    assert torch.cdist(vectors, codebook).min(dim=1).values.max().item() == 0.0


def test_decode_with_quantize_snaps_to_codebook(tiny: dict[str, Any], tiny_parts: LdmParts) -> None:
    with torch.no_grad():
        snapped = ldm_quantize(tiny_parts, tiny["z"])
        expected = ldm_decode(tiny_parts, snapped)
        quantized = ldm_decode(tiny_parts, tiny["z"], quantize=True)
        plain = ldm_decode(tiny_parts, tiny["z"])
    assert torch.equal(quantized, expected)
    assert _max_err(quantized, plain) > 1e-3


def test_load_ldm_reads_a_lightning_checkpoint(
    tmp_path: Path, tiny: dict[str, Any], tiny_parts: LdmParts
) -> None:
    """cin256-v2 is a PyTorch Lightning checkpoint: its ``ModelCheckpoint`` callback global (which
    ``weights_only=True`` refuses) is skipped inertly, its schedule buffers are ignored."""
    state_dict = dict(tiny["state_dict"])
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    state_dict["betas"] = betas
    state_dict["alphas_cumprod"] = torch.cumprod(1 - betas, 0)
    state_dict["posterior_mean_coef1"] = torch.ones(1000)
    state_dict["scale_factor"] = torch.tensor(1.0)
    path = tmp_path / "model.ckpt"
    with standins.fake_global_class(standins.LIGHTNING_MODEL_CHECKPOINT) as model_checkpoint:
        torch.save(
            {
                "epoch": 1,
                "global_step": 1,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": {model_checkpoint: {"monitor": "val/loss_simple_ema"}},
                "state_dict": state_dict,
            },
            path,
        )

    parts = load_ldm(
        path, tiny["unet_config"], tiny["ddconfig"], tiny["n_embed"], tiny["embed_dim"]
    )
    assert set(parts.ignored) == set(SCHEDULE_BUFFERS)
    assert parts.scale_factor == 1.0
    assert not any(m.training for m in (parts.unet, parts.vq, parts.class_embedding))
    with torch.no_grad():
        eps = ldm_eps(parts, tiny["z"], tiny["t"], tiny["y"])
    assert _max_err(eps, tiny["eps"]) <= TOLERANCE


# ----------------------------------------------------------------- negative cases


def test_missing_tensor_is_named(tiny: dict[str, Any]) -> None:
    name = "model.diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    state_dict = {k: v for k, v in tiny["state_dict"].items() if k != name}
    with pytest.raises(LdmConversionError, match=re.escape(name)):
        _convert(tiny, state_dict)


def test_missing_vq_and_class_tensors_are_named(tiny: dict[str, Any]) -> None:
    names = [
        "first_stage_model.decoder.up.0.block.1.conv2.bias",
        "cond_stage_model.embedding.weight",
    ]
    state_dict = {k: v for k, v in tiny["state_dict"].items() if k not in names}
    with pytest.raises(LdmConversionError) as info:
        _convert(tiny, state_dict)
    assert all(n in str(info.value) for n in names)


def test_leftover_tensor_is_named(tiny: dict[str, Any]) -> None:
    name = "model.diffusion_model.label_emb.0.weight"
    state_dict = {**tiny["state_dict"], name: torch.zeros(3)}
    with pytest.raises(LdmConversionError, match=re.escape(name)):
        _convert(tiny, state_dict)


def test_shape_mismatch_is_named(tiny: dict[str, Any]) -> None:
    name = "first_stage_model.quantize.embedding.weight"
    state_dict = {**tiny["state_dict"], name: torch.zeros(tiny["n_embed"] + 1, tiny["embed_dim"])}
    with pytest.raises(LdmConversionError, match=re.escape(name)):
        _convert(tiny, state_dict)


def test_unsupported_config_is_rejected(tiny: dict[str, Any]) -> None:
    with pytest.raises(LdmConversionError, match="use_spatial_transformer"):
        ldm_unet_kwargs({**tiny["unet_config"], "use_spatial_transformer": False})
    with pytest.raises(LdmConversionError, match="attn_resolutions"):
        vq_kwargs({**tiny["ddconfig"], "attn_resolutions": [16]}, 64, 3)


# ----------------------------------------------------------------- real-size manifest


def test_manifest_converts_and_loads_strictly(checkpoints_dir: Path) -> None:
    header, shapes = read_manifest(checkpoints_dir / MANIFEST)
    unet_config = header["unet"]
    ddconfig = header["first_stage"]
    extra = header["first_stage_extra"]
    n_embed, embed_dim = int(extra["n_embed"]), int(extra["embed_dim"])
    manifest_params = sum(math.prod(s) for s in shapes.values())
    assert manifest_params == 456_755_873

    # Expanded views of one zero scalar: no memory for 457M parameters.
    state_dict = zeros_state_dict(shapes)
    for name in SCHEDULE_BUFFERS:
        state_dict[name] = torch.tensor(1.0) if name == "scale_factor" else torch.zeros(1000)

    sds = convert_ldm_state_dict(state_dict, unet_config, ddconfig, n_embed, embed_dim)
    assert len(sds.unet) + len(sds.vq) + len(sds.class_embedding) == len(shapes)
    assert set(sds.ignored) == set(SCHEDULE_BUFFERS)

    # Models built from the header configs alone; strict loading fills every tensor.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ldm_unet_kwargs(unet_config))
        vq = VQModel(**vq_kwargs(ddconfig, n_embed, embed_dim))
    unet.load_state_dict(sds.unet, strict=True, assign=True)
    vq.load_state_dict(sds.vq, strict=True, assign=True)
    assert sds.class_embedding["weight"].shape == (1001, unet_config["context_dim"])
    for model in (unet, vq):
        assert not any(t.is_meta for t in model.state_dict().values())
    total = sum(p.numel() for m in (unet, vq) for p in m.parameters())
    assert total + sds.class_embedding["weight"].numel() == manifest_params

    # Architecture conventions of the openaimodel SpatialTransformer blocks.
    block = unet.down_blocks[1].attentions[0]
    assert isinstance(block.proj_in, torch.nn.Conv2d)
    assert isinstance(block.transformer_blocks[0].ff.net[0], GEGLU)
    assert block.norm.eps == 1e-6
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert unet.config.flip_sin_to_cos and unet.config.freq_shift == 0
    assert len(vq.decoder.up_blocks[0].resnets) == ddconfig["num_res_blocks"] + 1

    # The end-to-end builder gives the same, frozen and in eval mode.
    parts = convert_ldm_checkpoint(state_dict, unet_config, ddconfig, n_embed, embed_dim)
    assert parts.null_class == 1000
    modules = (parts.unet, parts.vq, parts.class_embedding)
    assert not any(m.training for m in modules)
    assert not any(p.requires_grad or p.is_meta for m in modules for p in m.parameters())
