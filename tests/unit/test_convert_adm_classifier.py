"""guided-diffusion's noisy classifier (EncoderUNetModel) -> AdmEncoderClassifier.

There is no manifest of ``256x256_classifier.pt``: the stand-in's tensor names come from the
released architecture (``tests/standins.adm_classifier_layout``, written from
``guided_diffusion/unet.py``). Faithfulness is shown by a plain functional forward written
here from the released code, run on the *released-format* state dict, and compared with the
converted model on the same random weights.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from diffguard.checkpoints import load_checkpoint
from diffguard.convert.adm_classifier import (
    AdmEncoderClassifier,
    convert_adm_classifier_state_dict,
    load_adm_classifier,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import standins  # noqa: E402

TOL = 1e-4


# ------------------------------------------------------------------ reference (released code)
def _embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _gn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    # guided-diffusion's GroupNorm32 computes in float32 with 32 groups
    return F.group_norm(x.float(), 32, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 1e-5)


def _resblock(
    x: torch.Tensor, emb: torch.Tensor, sd: dict, p: str, down: bool, scale_shift: bool
) -> torch.Tensor:
    h = F.silu(_gn(x, sd, f"{p}.in_layers.0"))
    if down:
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"])
    e = e[:, :, None, None]
    if scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = _gn(h, sd, f"{p}.out_layers.0") * (1 + scale) + shift
    else:
        h = _gn(h + e, sd, f"{p}.out_layers.0")
    h = F.conv2d(F.silu(h), sd[f"{p}.out_layers.3.weight"], sd[f"{p}.out_layers.3.bias"], padding=1)
    if f"{p}.skip_connection.weight" in sd:
        x = F.conv2d(x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return x + h


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, T, d) queries/keys/values -> (B, T, d), plain softmax(q k^T / sqrt(d)) v."""
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def _attention_block(x: torch.Tensor, sd: dict, p: str, head_width: int) -> torch.Tensor:
    b, c, hh, ww = x.shape
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(_gn(flat, sd, f"{p}.norm"), sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"])
    heads = c // head_width
    # QKVAttentionLegacy: channels are [head][q|k|v][width]
    qkv = qkv.reshape(b, heads, 3, head_width, -1)
    q, k, v = (qkv[:, :, i].reshape(b * heads, head_width, -1).transpose(1, 2) for i in range(3))
    a = _softmax_attention(q, k, v).transpose(1, 2).reshape(b, c, -1)
    h = F.conv1d(a, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
    return (flat + h).reshape(b, c, hh, ww)


def _attention_pool(x: torch.Tensor, sd: dict, head_width: int) -> torch.Tensor:
    b, c = x.shape[:2]
    tokens = x.reshape(b, c, -1)
    tokens = torch.cat([tokens.mean(-1, keepdim=True), tokens], -1)
    tokens = tokens + sd["out.2.positional_embedding"][None]
    qkv = F.conv1d(tokens, sd["out.2.qkv_proj.weight"], sd["out.2.qkv_proj.bias"])
    heads = c // head_width
    # QKVAttention (the new order): channels are [q|k|v][head][width]
    qkv = qkv.reshape(b, 3, heads, head_width, -1)
    q, k, v = (qkv[:, i].reshape(b * heads, head_width, -1).transpose(1, 2) for i in range(3))
    a = _softmax_attention(q, k, v).transpose(1, 2).reshape(b, c, -1)
    return F.conv1d(a, sd["out.2.c_proj.weight"], sd["out.2.c_proj.bias"])[:, :, 0]


def reference_forward(
    sd: dict[str, torch.Tensor], options: dict[str, Any], x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """EncoderUNetModel.forward (pool="attention"), straight from the released code."""
    width = options["classifier_width"]
    size = options["image_size"]
    mult = [int(m) for m in options["channel_mult"].split(",")]
    attention_ds = {size // int(r) for r in options["classifier_attention_resolutions"].split(",")}
    head_width = options["num_head_channels"]
    emb = _embedding(t, width)
    emb = F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])
    emb = F.linear(F.silu(emb), sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    h = F.conv2d(x, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    block, ds = 1, 1
    for level in range(len(mult)):
        for _ in range(2):
            h = _resblock(h, emb, sd, f"input_blocks.{block}.0", False, True)
            if ds in attention_ds:
                h = _attention_block(h, sd, f"input_blocks.{block}.1", head_width)
            block += 1
        if level != len(mult) - 1:
            h = _resblock(h, emb, sd, f"input_blocks.{block}.0", True, True)
            block += 1
            ds *= 2
    h = _resblock(h, emb, sd, "middle_block.0", False, True)
    h = _attention_block(h, sd, "middle_block.1", head_width)
    h = _resblock(h, emb, sd, "middle_block.2", False, True)
    return _attention_pool(F.silu(_gn(h, sd, "out.0")), sd, head_width)


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    written = standins.write_adm_classifier(
        tmp_path_factory.mktemp("cls"), image_size=32, width=32, num_classes=10
    )
    written["state_dict"] = load_checkpoint(written["path"])
    return written


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    return x, torch.tensor([0, 90, 990])


def test_standin_has_the_released_structure(standin: dict[str, Any]) -> None:
    names = set(standin["state_dict"])
    # 6 levels x 2 ResBlocks + 5 down ResBlocks (resblock_updown) + the stem conv
    assert {int(n.split(".")[1]) for n in names if n.startswith("input_blocks.")} == set(range(18))
    # attention at 8x, 16x and 32x downsampling (the released 32,16,8 at 256 px) + the middle
    assert sum(n.endswith(".qkv.weight") for n in names) == 2 * 3 + 1
    assert standin["state_dict"]["out.2.positional_embedding"].shape == (128, 1 + 1)


@pytest.mark.parametrize("released_attention", [True, False])
def test_converted_classifier_matches_reference(
    standin: dict[str, Any], released_attention: bool
) -> None:
    options = standin["options"]
    model = AdmEncoderClassifier(options)
    model.load_state_dict(
        convert_adm_classifier_state_dict(standin["state_dict"], options), strict=True
    )
    if released_attention:
        from diffguard.convert.adm import use_released_attention

        use_released_attention(model)  # type: ignore[arg-type]
    x, t = _inputs()
    with torch.no_grad():
        out = model.eval()(x, t)
        ref = reference_forward(standin["state_dict"], options, x, t)
    assert out.shape == (3, 10)
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"max abs err {err:.3g}"
    # the timestep matters (otherwise the check above would not test the embedding)
    with torch.no_grad():
        other = model(x, torch.tensor([500, 500, 500]))
    assert (other - out).abs().max().item() > 1e-3


def test_load_adm_classifier_consumes_every_tensor(standin: dict[str, Any]) -> None:
    model = load_adm_classifier(standin["path"], standin["options"])
    assert not model.training
    assert not any(p.is_meta for p in model.parameters())
    n_source = sum(v.numel() for v in standin["state_dict"].values())
    assert sum(p.numel() for p in model.parameters()) == n_source
    x, t = _inputs()
    with torch.no_grad():
        err = model(x, t) - reference_forward(standin["state_dict"], standin["options"], x, t)
    assert err.abs().max().item() <= TOL


def test_real_size_model_matches_the_released_parameter_layout() -> None:
    options = {"image_size": 256}
    layout = standins.adm_classifier_layout(options)
    with torch.device("meta"):
        model = AdmEncoderClassifier(options)
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for _, _, s in layout)
    state = {name: torch.zeros(shape, device="meta") for _, name, shape in layout}
    converted = convert_adm_classifier_state_dict(state, options)
    assert set(converted) == set(model.state_dict())
    assert converted["pool.positional_embedding"].shape == (512, 8 * 8 + 1)


def test_bad_checkpoints_are_named(standin: dict[str, Any], tmp_path: Path) -> None:
    state = dict(standin["state_dict"])
    state.pop("out.2.c_proj.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"out\.2\.c_proj\.bias.*extra\.weight"):
        convert_adm_classifier_state_dict(state, standin["options"])
    wrong = dict(standin["options"], num_classes=7)
    with pytest.raises(ValueError, match="c_proj"):
        convert_adm_classifier_state_dict(standin["state_dict"], wrong)
    with pytest.raises(ValueError, match="unknown key"):
        AdmEncoderClassifier({"classifier_widht": 128})
    with pytest.raises(NotImplementedError, match="classifier_pool"):
        AdmEncoderClassifier({"classifier_pool": "adaptive"})
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="bad.pt"):
        load_adm_classifier(tmp_path / "bad.pt", standin["options"])
