"""Backends: stand-ins in the original formats -> prepare (convert once) -> load (safetensors).

The backend outputs are compared with direct calls of the converters on the original files, so
a backend that loads the wrong weights (model instead of EMA, a dropped prefix, a lost attention
processor, a wrong scale factor) fails here, not only one that crashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from standins import (
    ADM_MANIFEST,
    DIFFNB_MANIFEST,
    LDM_MANIFEST,
    write_adm,
    write_diffnb,
    write_ldm,
    write_resnet18_32x32,
    write_resnet50_tv,
)

from diffguard import backends, preparation
from diffguard.backends import (
    BackendError,
    LatentBackend,
    PixelBackend,
    load_backend,
    resize_images,
)
from diffguard.checkpoints import load_checkpoint, state_dict_of
from diffguard.convert.adm import load_adm_unet, use_released_attention
from diffguard.convert.diffnb import load_diffnb_unet
from diffguard.convert.ldm import ldm_decode, ldm_encode, ldm_eps, load_ldm
from diffguard.convert.manifest import read_manifest
from diffguard.precision import FULL_CAST
from diffguard.preparation import prepare_classifier_stage, prepare_diffusion_model

EXACT = 1e-6


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("standins")
    return {
        "adm": write_adm(root / "adm"),
        "ldm": write_ldm(root / "ldm"),
        "diffnb": write_diffnb(root / "diffnb"),
    }


@pytest.fixture(scope="module")
def prepared(
    standins: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for source, standin in standins.items():
        out[source] = root / source
        prepare_diffusion_model(source, standin["paths"], standin["options"], out[source])
    return out


# ------------------------------------------------------------------------------ stand-ins


def test_standin_names_are_the_manifests(
    standins: dict[str, dict[str, Any]], checkpoints_dir: Path
) -> None:
    _, adm_names = read_manifest(checkpoints_dir / ADM_MANIFEST)
    adm = load_checkpoint(standins["adm"]["path"])
    assert list(adm) == list(adm_names)  # a bare state dict, manifest order

    _, ldm_names = read_manifest(checkpoints_dir / LDM_MANIFEST)
    ldm = load_checkpoint(standins["ldm"]["path"])
    # a Lightning checkpoint, its ModelCheckpoint callback loaded as an inert placeholder
    assert set(ldm) >= {"state_dict", "global_step", "epoch", "callbacks"}
    extra = set(ldm["state_dict"]) - set(ldm_names)
    assert set(ldm_names) <= set(ldm["state_dict"])
    assert {"betas", "alphas_cumprod", "posterior_mean_coef2"} <= extra
    assert all("." not in k for k in extra)  # only the schedule buffers are added

    _, nb_names = read_manifest(checkpoints_dir / DIFFNB_MANIFEST)
    ema = load_checkpoint(standins["diffnb"]["path"])
    assert list(ema) == list(nb_names)  # DiffOOD's ema_cifar10.ckpt: a flat name -> tensor dict


def test_standin_shapes_are_scaled_manifest_shapes(
    standins: dict[str, dict[str, Any]], checkpoints_dir: Path
) -> None:
    _, shapes = read_manifest(checkpoints_dir / ADM_MANIFEST)
    adm = load_checkpoint(standins["adm"]["path"])
    for name, shape in shapes.items():
        scaled = tuple(d // 256 * 32 if d % 256 == 0 else d for d in shape)
        assert tuple(adm[name].shape) == scaled, name
    assert standins["adm"]["options"]["attention_resolutions"] == "4,2,1"  # 32,16,8 at 256 -> 32
    _, shapes = read_manifest(checkpoints_dir / LDM_MANIFEST)
    sd = load_checkpoint(standins["ldm"]["path"])["state_dict"]
    assert sd["cond_stage_model.embedding.weight"].shape == (1001, 64)
    assert sd["first_stage_model.quantize.embedding.weight"].shape == (64, 3)
    assert sd["model.diffusion_model.time_embed.0.weight"].shape == (4 * 32, 32)


def test_standin_hashes(standins: dict[str, dict[str, Any]]) -> None:
    from diffguard.io import sha256sum

    for standin in standins.values():
        for role, path in standin["paths"].items():
            assert standin["sha256"][role] == sha256sum(path)


# ------------------------------------------------------------------------------ prepare/load


def test_backend_json(prepared: dict[str, Path], standins: dict[str, dict[str, Any]]) -> None:
    for source, model_dir in prepared.items():
        info = json.loads((model_dir / backends.BACKEND_FILE).read_text())
        assert info["source"] == source
        for role, entry in info["checkpoints"].items():
            assert entry["sha256"] == standins[source]["sha256"][role]
        assert not list(model_dir.glob("**/*.pt")) and not list(model_dir.glob("**/*.ckpt"))
        assert list(model_dir.glob("weights/**/*.safetensors"))
    adm = json.loads((prepared["adm"] / "backend.json").read_text())
    assert (adm["sample_size"], adm["channels"], adm["out_channels"]) == (32, 3, 6)
    assert adm["null_label"] is None and adm["use_released_attention"] is True
    nb = json.loads((prepared["diffnb"] / "backend.json").read_text())
    assert (nb["sample_size"], nb["null_label"]) == (32, 10)
    ldm = json.loads((prepared["ldm"] / "backend.json").read_text())
    assert (ldm["sample_size"], ldm["null_label"], ldm["scale_factor"]) == (32, 1000, 1.0)
    assert ldm["schedule"] == {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "num_train_steps": 1000,
    }
    assert adm["schedule"]["beta_schedule"] == nb["schedule"]["beta_schedule"] == "linear"
    assert nb["schedule"]["beta_end"] == 0.02


def test_adm_backend_equals_converter(
    prepared: dict[str, Path], standins: dict[str, dict[str, Any]]
) -> None:
    backend = load_backend(prepared["adm"], "cpu")
    assert isinstance(backend, PixelBackend)
    assert not backend.conditional and backend.null_label is None and not backend.latent
    config = {k: v for k, v in standins["adm"]["options"].items() if k != "use_released_attention"}
    direct = use_released_attention(load_adm_unet(standins["adm"]["path"], config))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        want = direct(x, t).sample
        got = backend.eps(x, t)
    assert want.shape == (2, 6, 32, 32)  # learned sigma: eps is the first half
    assert got.shape == (2, 3, 32, 32)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want[:, :3], atol=EXACT, rtol=0)
    with pytest.raises(BackendError, match="unconditional"):
        backend.eps(x, t, torch.tensor([0, 1]))


def test_adm_released_attention_can_be_switched_off(
    standins: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from diffguard.convert.adm import AdmLegacyAttnProcessor

    options = {**standins["adm"]["options"], "use_released_attention": False}
    prepare_diffusion_model("adm", standins["adm"]["paths"], options, tmp_path / "m")
    unet = load_backend(tmp_path / "m", "cpu").unet
    from diffusers.models.attention_processor import Attention

    processors = {type(m.processor) for m in unet.modules() if isinstance(m, Attention)}
    assert processors
    assert AdmLegacyAttnProcessor not in processors
    default = load_backend(tmp_path / "m", "cpu")  # same weights, the option is per prepare
    assert default.info["use_released_attention"] is False


def test_diffnb_backend_equals_converter(
    prepared: dict[str, Path], standins: dict[str, dict[str, Any]]
) -> None:
    backend = load_backend(prepared["diffnb"], "cpu")
    assert backend.conditional and backend.null_label == 10
    config = preparation.diffnb_config_from_yaml(
        preparation._read_yaml(standins["diffnb"]["paths"]["config"])
    )
    direct = load_diffnb_unet(standins["diffnb"]["path"], config)
    ema = load_checkpoint(standins["diffnb"]["path"])  # the flat EMA dict
    torch.testing.assert_close(backend.unet.conv_in.weight, ema["conv_in.weight"])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    t = torch.tensor([1, 400, 999])
    y = torch.tensor([3, 10, 0])
    with torch.no_grad():
        want = direct(x, t, class_labels=y).sample
        got = backend.eps(x, t, y)
    torch.testing.assert_close(got, want, atol=EXACT, rtol=0)
    with pytest.raises(BackendError, match="conditional"):
        backend.eps(x, t)


def test_diffnb_config_from_options(
    standins: dict[str, dict[str, Any]], checkpoints_dir: Path, tmp_path: Path
) -> None:
    config = preparation.diffnb_config_from_yaml(
        preparation._read_yaml(standins["diffnb"]["paths"]["config"])
    )
    prepare_diffusion_model(
        "diffnb", {"model": standins["diffnb"]["path"]}, {"config": config}, tmp_path / "m"
    )
    assert load_backend(tmp_path / "m", "cpu").null_label == 10
    with pytest.raises(BackendError, match="options.config"):
        prepare_diffusion_model("diffnb", {"model": standins["diffnb"]["path"]}, {}, tmp_path / "n")


def test_ldm_backend_equals_converter(
    prepared: dict[str, Path], standins: dict[str, dict[str, Any]]
) -> None:
    backend = load_backend(prepared["ldm"], "cpu")
    assert isinstance(backend, LatentBackend)
    assert backend.latent and backend.conditional and backend.null_label == 1000
    cfg = preparation.ldm_config_from_yaml(
        preparation._read_yaml(standins["ldm"]["paths"]["config"])
    )
    parts = load_ldm(
        standins["ldm"]["path"],
        cfg["unet_config"],
        cfg["ddconfig"],
        cfg["n_embed"],
        cfg["embed_dim"],
    )
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        for quantize in (False, True):
            z = backend.encode(x, quantize=quantize)
            assert z.shape == (2, 3, 8, 8)
            torch.testing.assert_close(
                z, ldm_encode(parts, x, quantize=quantize), atol=EXACT, rtol=0
            )
            torch.testing.assert_close(
                backend.decode(z, quantize=quantize),
                ldm_decode(parts, z, quantize=quantize),
                atol=EXACT,
                rtol=0,
            )
        t = torch.tensor([1, 961])
        y = torch.tensor([5, 1000])
        got = backend.eps(z, t, y)
        torch.testing.assert_close(got, ldm_eps(parts, z, t, y), atol=EXACT, rtol=0)
        # No label means the null class.
        torch.testing.assert_close(
            backend.eps(z, t), ldm_eps(parts, z, t, torch.tensor([1000, 1000])), atol=EXACT, rtol=0
        )
    assert torch.isfinite(got).all()


def test_trained_model_directory_loads_as_backend(tmp_path: Path) -> None:
    from diffusers import UNet2DModel

    from diffguard.model_io import save_model
    from diffguard.training import small_unet_kwargs

    torch.manual_seed(0)
    unet = UNet2DModel(**small_unet_kwargs(1, 16, True, 6))
    save_model(unet, tmp_path / "m" / "weights")
    backend = load_backend(tmp_path / "m", "cpu")
    assert backend.source == "train" and backend.null_label == 6 and backend.sample_size == 16
    assert "schedule" not in backend.info  # saved without diffguard.json: nothing to check
    unet.diffguard_info = {  # what train_diffusion records
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_timesteps": 1000,
    }
    save_model(unet, tmp_path / "m" / "weights")
    schedule = load_backend(tmp_path / "m", "cpu").info["schedule"]
    assert schedule == {
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_steps": 1000,
    }
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 900]), torch.tensor([0, 6])
    with torch.no_grad():
        torch.testing.assert_close(
            backend.eps(x, t, y), unet.eval()(x, t, class_labels=y).sample, atol=EXACT, rtol=0
        )


# ------------------------------------------------------------------------------ errors


def test_prepare_errors_name_what_is_wrong(
    standins: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    with pytest.raises(BackendError, match="not convertible"):
        prepare_diffusion_model("train", {}, {}, tmp_path / "a")
    with pytest.raises(BackendError, match=r"missing role\(s\) \['config'\]"):
        prepare_diffusion_model("ldm", {"model": standins["ldm"]["path"]}, {}, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        prepare_diffusion_model(
            "adm", {"model": tmp_path / "nowhere.pt"}, standins["adm"]["options"], tmp_path / "c"
        )
    # A checkpoint that lacks a tensor: the converter names it, and nothing is left behind.
    state = load_checkpoint(standins["adm"]["path"])
    del state["middle_block.1.qkv.weight"]
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(KeyError, match="middle_block.1.qkv.weight"):
        prepare_diffusion_model(
            "adm", {"model": broken}, standins["adm"]["options"], tmp_path / "d"
        )
    assert not (tmp_path / "d").exists()
    assert not list(tmp_path.glob(".d.tmp*"))
    with pytest.raises(FileNotFoundError, match="backend.json"):
        load_backend(tmp_path / "empty", "cpu")


def test_bad_ldm_yaml_is_named(standins: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {params: {unet_config: {}}}\n")
    with pytest.raises(BackendError, match="bad.yaml"):
        prepare_diffusion_model(
            "ldm", {"model": standins["ldm"]["path"], "config": bad}, {}, tmp_path / "m"
        )


def test_prepare_replaces_a_previous_model(
    standins: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "m"
    prepare_diffusion_model("diffnb", standins["diffnb"]["paths"], {}, out)
    stale = out / "weights" / "stale.txt"
    stale.write_text("old")
    prepare_diffusion_model("diffnb", standins["diffnb"]["paths"], {}, out)
    assert not stale.exists() and (out / "backend.json").is_file()


# ------------------------------------------------------------------------------ dtype, resize


def test_forced_low_precision_runs_and_returns_input_dtype(prepared: dict[str, Path]) -> None:
    full = load_backend(prepared["diffnb"], "cpu")
    half = backends.load_backend(prepared["diffnb"], "cpu", "bfloat16", force_dtype=True)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([5, 500]), torch.tensor([1, 10])
    with torch.no_grad():
        low, ref = half.eps(x, t, y), full.eps(x, t, y)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.equal(low, ref)


def test_released_precision_per_backend_and_cpu_fallback() -> None:
    """released = the released code's setting per source; CPU runs float32 unless forced."""
    from diffguard.precision import PrecisionError, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    released = {s: resolve_precision("released", s, cuda) for s in backends.SOURCES}
    assert released == {
        "adm": "mixed_fp16",
        "ldm": "float32",
        "diffnb": "float32",
        "train": "float32",
    }
    assert resolve_precision("released", "adm", cpu) == "float32"
    assert resolve_precision("released", "adm", cpu, force=True) == "mixed_fp16"
    assert resolve_precision("float16", "ldm", cuda) == "float16"
    assert resolve_precision(torch.bfloat16, "adm", cuda) == "bfloat16"
    with pytest.raises(PrecisionError, match=r"experiments\.l\.precision.*mixed_fp16"):
        resolve_precision("mixed_fp16", "ldm", cuda, where="experiments.l.precision")
    with pytest.raises(PrecisionError, match="float64"):
        resolve_precision("float64", "adm", cuda)


def test_released_adm_loads_in_mixed_precision(
    prepared: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The ADM stand-in: mixed fp16 when forced on CPU (float32 with a warning otherwise)."""
    from diffguard.precision import is_mixed_precision

    where = "experiments.gdm_main.precision"
    with caplog.at_level("WARNING", logger="diffguard"):
        plain = load_backend(prepared["adm"], "cpu", "released", where=where)
    assert plain.dtype == torch.float32 and not is_mixed_precision(plain.unet)
    assert any(where in r.getMessage() and "mixed_fp16" in r.getMessage() for r in caplog.records)

    mixed = load_backend(prepared["adm"], "cpu", "released", force_dtype=True)
    assert is_mixed_precision(mixed.unet) and mixed.dtype == torch.float16
    assert mixed.unet.conv_out.weight.dtype == torch.float32
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([20, 600])
    with torch.no_grad():
        got, want = mixed.eps(x, t), plain.eps(x, t)
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(BackendError, match="mixed precision"):
        mixed.to(dtype=torch.float32)

    for source in ("ldm", "diffnb"):
        other = load_backend(prepared[source], "cpu", "released", force_dtype=True)
        assert other.dtype == torch.float32, source
    with pytest.raises(ValueError, match="mixed_fp16"):
        load_backend(prepared["ldm"], "cpu", "mixed_fp16", force_dtype=True)


def test_resize_images() -> None:
    """Same as the released code's torchvision Resize on tensors (bilinear, no antialias)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.rand(2, 3, 224, 224)
    assert resize_images(x, 224) is x
    up = resize_images(x, 256)
    want = TF.resize(x, [256, 256], InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(up, want)
    back = resize_images(up, 224)
    torch.testing.assert_close(
        back, TF.resize(up, [224, 224], InterpolationMode.BILINEAR, antialias=False)
    )
    ramp = torch.linspace(0, 1, 224).expand(1, 1, 224, 224)
    assert (resize_images(resize_images(ramp, 256), 224) - ramp)[..., 4:-4].abs().max() < 1e-3


# ------------------------------------------------------------------------------ classifiers


@pytest.mark.parametrize("prefix", ["", "module.", "net."])
def test_prepare_resnet18_32x32(prefix: str, tmp_path: Path) -> None:
    from diffguard.classifiers import ResNet18_32x32
    from diffguard.runtime import load_trained_classifier

    standin = write_resnet18_32x32(tmp_path / "ckpt", prefix=prefix)
    prepare_classifier_stage(standin["options"], standin["path"], tmp_path / "clf")
    weights = tmp_path / "clf" / "weights" / "model.safetensors"
    spec = json.loads((weights.parent / "spec.json").read_text())
    assert spec["input_size"] == 32 and spec["source_sha256"] == standin["sha256"]["model"]
    model = load_trained_classifier(weights, torch.device("cpu"))
    direct = ResNet18_32x32(num_classes=10).eval()
    state = load_checkpoint(standin["path"])
    direct.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), direct(x), atol=EXACT, rtol=0)


def test_prepare_resnet50_tv(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    from diffguard.classifiers import IMAGENET_MEAN, IMAGENET_STD
    from diffguard.runtime import load_trained_classifier

    standin = write_resnet50_tv(tmp_path / "ckpt")
    prepare_classifier_stage(standin["options"], standin["path"], tmp_path / "clf")
    model = load_trained_classifier(
        tmp_path / "clf" / "weights" / "model.safetensors", torch.device("cpu")
    )
    assert model.spec["input_size"] == 224
    direct = resnet50(weights=None).eval()
    direct.load_state_dict(state_dict_of(load_checkpoint(standin["path"])))
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), direct((x - mean) / std), atol=1e-5, rtol=1e-5)
    with pytest.raises(BackendError, match="needs a checkpoint"):
        prepare_classifier_stage(standin["options"], None, tmp_path / "none")


# ------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_backends_on_cuda_follow_the_cpu(prepared: dict[str, Path], dtype: str) -> None:
    """On CUDA the requested dtype is used; outputs stay close to the CPU float32 ones."""
    cuda = torch.device("cuda")
    # float32 on CUDA may use TF32 matmuls; half precision keeps ~3 significant digits.
    rel = {"float32": 1e-2, "float16": 3e-2, "bfloat16": 1e-1}[dtype]
    gen = torch.Generator().manual_seed(5)
    for source, model_dir in prepared.items():
        cpu_backend = load_backend(model_dir, "cpu")
        gpu_backend = load_backend(model_dir, cuda, dtype)
        assert gpu_backend.dtype == FULL_CAST[dtype]
        assert gpu_backend.device.type == "cuda"
        size = cpu_backend.sample_size
        x = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
        t = torch.tensor([20, 600])
        y = None if not cpu_backend.conditional else torch.tensor([1, cpu_backend.null_label])
        with torch.no_grad():
            z = cpu_backend.encode(x, quantize=False)
            want = cpu_backend.eps(z, t, y)
            z_gpu = gpu_backend.encode(x.to(cuda), quantize=False)
            got = gpu_backend.eps(z_gpu, t.to(cuda), None if y is None else y.to(cuda))
        assert got.dtype == torch.float32, source
        assert torch.isfinite(got).all(), source
        err = (got.cpu() - want).abs().max() / want.abs().max()
        assert err < rel, (source, dtype, float(err))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_released_adm_on_cuda_is_mixed_and_follows_the_cpu(prepared: dict[str, Path]) -> None:
    """On CUDA ``released`` puts the ADM in mixed fp16; eps stays close to CPU float32."""
    from diffguard.precision import is_mixed_precision

    cuda = torch.device("cuda")
    cpu_backend = load_backend(prepared["adm"], "cpu")
    gpu_backend = load_backend(prepared["adm"], cuda, "released")
    assert is_mixed_precision(gpu_backend.unet) and gpu_backend.dtype == torch.float16
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    t = torch.tensor([20, 300, 600, 900])
    with torch.no_grad():
        want = cpu_backend.eps(x, t)
        got = gpu_backend.eps(x.to(cuda), t.to(cuda))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    err = (got.cpu() - want).abs().max() / want.abs().max()
    assert err < 3e-2, float(err)  # as the float16 case of the test above
