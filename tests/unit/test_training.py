"""Tests of diffguard.classifiers and diffguard.training (tiny models, a few CPU seconds)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffguard.classifiers import (
    CIFAR10_MEAN,
    ResNet18_32x32,
    SmallCNN,
    TorchvisionResNet50,
    build_classifier,
)
from diffguard.model_io import load_classifier, load_small_unet, save_model
from diffguard.training import (
    evaluate_classifier,
    sample_ddim,
    small_unet_kwargs,
    train_classifier,
    train_diffusion,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A UNet far smaller than small_unet_kwargs' so that a test trains in about a second.
TINY_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}


def _bars(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: a bright horizontal (0) or vertical (1) bar at a random position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.2
    y = torch.arange(n) % 2
    pos = torch.randint(2, size - 2, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i] - 1 : pos[i] + 1, :] = 1.0
        else:
            x[i, 0, :, pos[i] - 1 : pos[i] + 1] = 1.0
    return x, y


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_small_cnn_interface_and_mc_dropout() -> None:
    torch.manual_seed(0)
    model = build_classifier({"arch": "small_cnn", "num_classes": 3, "width": 4, "dropout": 0.5})
    assert isinstance(model, SmallCNN) and not model.training
    assert model.cam_layer is model.layer4
    x = torch.rand(5, 1, 16, 16)
    feats = model.features(x)
    assert feats.shape == (5, 16) and model.fc.in_features == 16
    assert torch.allclose(model(x), model.fc(feats), atol=1e-6)
    model.train()  # MC-Dropout: stochastic forward passes differ
    assert not torch.allclose(model(x), model(x))
    with pytest.raises(ValueError, match="unknown arch"):
        build_classifier({"arch": "vgg"})
    with pytest.raises(KeyError, match="num_classes"):
        build_classifier({"arch": "small_cnn"})


def test_resnet18_32x32_uses_openood_key_names(tmp_path: Path) -> None:
    model = ResNet18_32x32(num_classes=10)
    keys = set(model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_var",
        "layer4.1.bn2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut when shapes match
    assert not any(k.startswith("normalize") for k in keys)
    assert len(keys) == 122  # 62 parameter tensors + 60 BatchNorm buffers
    torch.manual_seed(1)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    state = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}
    path = tmp_path / "res18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = build_classifier({"arch": "resnet18_32x32", "weights": str(path)})
    assert torch.equal(loaded.fc.weight, state["fc.weight"])
    assert loaded.cam_layer is loaded.layer4[-1]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), loaded.fc(loaded.features(x)), atol=1e-5)
    # The normaliser runs inside: feeding pre-normalised input to the stem by hand agrees.
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(loaded.normalize(x), (x - mean) / loaded.normalize.std)


def test_resnet50_tv_loads_torchvision_state_dict(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(2)
    reference = resnet50(weights=None, num_classes=7).eval()
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    model = build_classifier({"arch": "resnet50_tv", "num_classes": 7, "weights": str(path)})
    assert isinstance(model, TorchvisionResNet50)
    assert model.cam_layer is model.net.layer4[-1]
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((x - mean) / std)
        assert torch.allclose(model(x), expected, atol=1e-4)
        assert torch.allclose(model.fc(model.features(x)), expected, atol=1e-4)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError):
        build_classifier({"arch": "resnet50_tv", "num_classes": 7, "weights": str(bad)})


def test_train_classifier_learns_logs_and_is_seeded(tmp_path: Path) -> None:
    x, y = _bars(128)
    spec = {"arch": "small_cnn", "num_classes": 2, "width": 4, "dropout": 0.0}
    log_csv = tmp_path / "clf.csv"
    model = train_classifier(x, y, spec, epochs=6, lr=1e-2, seed=0, log_csv=log_csv, batch_size=16)
    rows = _read_csv(log_csv)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    x_test, y_test = _bars(64, seed=1)
    assert evaluate_classifier(model, x_test, y_test) >= 0.9
    again = train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=0)
    same = train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=0)
    other = train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=1)
    assert torch.equal(again.fc.weight, same.fc.weight)
    assert not torch.equal(again.fc.weight, other.fc.weight)
    with pytest.raises(ValueError, match=r"lie in \[0.0, 1.0\]"):
        train_classifier(x * 2 - 1, y, spec, epochs=1, lr=1e-2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y + 5, spec, epochs=1, lr=1e-2, seed=0)


def test_classifier_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_classifier({"arch": "small_cnn", "num_classes": 4, "width": 4})
    with torch.no_grad():  # non-default BatchNorm statistics must survive the round trip
        model.layer1[1].running_mean.uniform_()
    out = tmp_path / "clf"
    save_model(model, out)
    save_model(model, out)  # overwriting an existing directory works
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "spec.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]  # no temporary dirs left
    loaded = load_classifier(out)
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(TypeError):
        save_model(torch.nn.Linear(2, 2), tmp_path / "plain")


def test_small_unet_kwargs_shapes() -> None:
    from diffusers import UNet2DModel

    cond = small_unet_kwargs(1, 16, conditional=True, num_classes=6)
    assert cond["num_class_embeds"] == 7
    assert "num_class_embeds" not in small_unet_kwargs(1, 16, conditional=False)
    model = UNet2DModel(**cond)
    out = model(
        torch.zeros(2, 1, 16, 16), torch.tensor([0, 999]), class_labels=torch.tensor([0, 6])
    )
    assert out.sample.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError):
        small_unet_kwargs(1, 16, conditional=True)


def test_unet_kwargs_from_config() -> None:
    """diffusion_models.<m>.unet shapes the UNet; its defaults give the embedded model's kwargs."""
    from diffusers import UNet2DModel

    legacy = {
        "sample_size": 16,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 32,
        "norm_num_groups": 16,
        "num_class_embeds": 7,
    }
    defaults = {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "attention": True}
    for unet in (None, {}, {**defaults, "norm_num_groups": 16}):
        got = small_unet_kwargs(1, 16, True, 6, unet)
        assert got == legacy and list(got) == list(legacy)  # same keys in the same order
    mnist = {"block_out_channels": [24, 48, 48], "attention": False, "norm_num_groups": 8}
    kwargs = small_unet_kwargs(1, 28, True, 10, mnist)
    assert kwargs["down_block_types"] == ("DownBlock2D",) * 3
    assert kwargs["up_block_types"] == ("UpBlock2D",) * 3
    assert "attention_head_dim" not in kwargs and kwargs["num_class_embeds"] == 11
    model = UNet2DModel(**kwargs)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 0.7e6
    out = model(
        torch.zeros(2, 1, 28, 28), torch.tensor([0, 999]), class_labels=torch.tensor([3, 10])
    )
    assert out.sample.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        small_unet_kwargs(1, 28, False, unet={"block_out_channels": [20], "norm_num_groups": 8})
    with pytest.raises(ValueError, match="unknown keys"):
        small_unet_kwargs(1, 28, False, unet={"channels": [8]})


def _digits_like(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _bars(n, size=8)
    return x * 2 - 1, y


def test_train_diffusion_unconditional_loss_decreases(tmp_path: Path) -> None:
    x, _ = _digits_like(64)
    log_csv = tmp_path / "uncond.csv"
    model = train_diffusion(
        x,
        None,
        TINY_UNET,
        steps=60,
        batch_size=32,
        lr=5e-3,
        seed=0,
        log_csv=log_csv,
        warmup_steps=5,
        log_every=10,
        ema_decay=None,
    )
    rows = _read_csv(log_csv)
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    assert losses[-1] < 0.6 * losses[0]
    assert model.diffguard_info["conditional"] is False
    assert not model.training


def test_train_diffusion_conditional_ema_save_load_and_sample(tmp_path: Path) -> None:
    x, y = _digits_like(64)
    kwargs = {**TINY_UNET, "num_class_embeds": 3}
    model = train_diffusion(
        x,
        y,
        kwargs,
        steps=30,
        batch_size=32,
        lr=5e-3,
        seed=0,
        class_dropout=0.1,
        warmup_steps=5,
        log_every=10,
        ema_decay=0.9,
    )
    assert model.diffguard_info["null_label"] == 2
    out = tmp_path / "unet"
    save_model(model, out)
    assert {"config.json", "diffusion_pytorch_model.safetensors", "diffguard.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded = load_small_unet(out)
    assert loaded.diffguard_info == model.diffguard_info
    xt, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.allclose(
            loaded(xt, t, class_labels=labels).sample,
            model(xt, t, class_labels=labels).sample,
            atol=1e-6,
        )
    samples = sample_ddim(loaded, torch.tensor([0, 1]), num_steps=3, guidance_scale=2.0, seed=0)
    assert samples.shape == (2, 1, 8, 8) and float(samples.abs().max()) <= 1.0
    assert torch.equal(
        samples, sample_ddim(loaded, torch.tensor([0, 1]), num_steps=3, guidance_scale=2.0, seed=0)
    )


def test_train_diffusion_validates_inputs() -> None:
    x, y = _digits_like(8)
    with pytest.raises(ValueError, match="num_class_embeds"):
        train_diffusion(x, y, TINY_UNET, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="no labels"):
        train_diffusion(x, None, {**TINY_UNET, "num_class_embeds": 3}, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="null label"):
        train_diffusion(x, y + 2, {**TINY_UNET, "num_class_embeds": 3}, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"\[-1.0, 1.0\]"):
        train_diffusion((x + 1) * 2, None, TINY_UNET, steps=1, batch_size=4)


def test_train_classifier_with_dropout_is_bit_reproducible(tmp_path: Path) -> None:
    """Dropout masks come from torch's global RNG: training seeds it, whatever its state."""
    x, y = _bars(64)
    spec = {"arch": "small_cnn", "num_classes": 2, "width": 4, "dropout": 0.5}
    runs = []
    for disturbance in (0, 123):
        torch.manual_seed(disturbance)  # a different global RNG state before each call
        log_csv = tmp_path / f"log{disturbance}.csv"
        model = train_classifier(x, y, spec, epochs=2, lr=1e-2, seed=0, log_csv=log_csv)
        runs.append((model.state_dict(), log_csv.read_bytes()))
    (first, log_a), (second, log_b) = runs
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert log_a == log_b, "the training log differs between two runs with one seed"
    # The caller's RNG state is left alone (the seeding happens in a fork).
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_training_logs_hold_no_wall_clock_and_appear_only_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No elapsed-time column (reruns write the same bytes); a failed run leaves no log."""
    x, y = _bars(32)
    spec = {"arch": "small_cnn", "num_classes": 2, "width": 4, "dropout": 0.0}
    log_csv = tmp_path / "clf.csv"
    train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=0, log_csv=log_csv)
    assert _read_csv(log_csv)[0].keys() == {"epoch", "loss", "accuracy", "lr"}
    x8, _ = _digits_like(16)
    unet_log = tmp_path / "unet.csv"
    model = train_diffusion(x8, None, TINY_UNET, steps=2, batch_size=8, seed=0, log_csv=unet_log)
    assert _read_csv(unet_log)[0].keys() == {"step", "loss", "lr"}
    assert not any("seconds" in key for key in model.diffguard_info)

    class Boom(RuntimeError):
        pass

    def failing_forward(*_: object, **__: object) -> None:
        raise Boom("killed")

    broken = tmp_path / "broken.csv"
    monkeypatch.setattr(SmallCNN, "forward", failing_forward)
    with pytest.raises(Boom):
        train_classifier(x, y, spec, epochs=1, lr=1e-2, seed=0, log_csv=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.csv", "unet.csv"], (
        "a failed training run left a (partial or temporary) log"
    )


def test_max_timestep_bounds_the_training_timesteps_and_is_recorded() -> None:
    from diffusers import DDPMScheduler

    from diffguard.training import _noised_batch

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.zeros(512, 1, 4, 4)

    def draw(max_timestep: int | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return _noised_batch(x0, None, scheduler, generator, (0.0, 0), max_timestep)[2]

    # Default: the same draws as before the option existed (randint over all of T).
    generator = torch.Generator().manual_seed(0)
    torch.randn(x0.shape, generator=generator)
    expected = torch.randint(0, 1000, (512,), generator=generator)
    assert torch.equal(draw(None), expected)
    bounded = draw(600)
    assert int(bounded.max()) < 600 and int(draw(None).max()) >= 600

    x, _ = _digits_like(16)
    model = train_diffusion(x, None, TINY_UNET, steps=2, batch_size=8, max_timestep=600)
    assert model.diffguard_info["max_timestep"] == 600
    plain = train_diffusion(x, None, TINY_UNET, steps=2, batch_size=8)
    assert "max_timestep" not in plain.diffguard_info  # models trained on all of T keep their bytes
    with pytest.raises(ValueError, match="max_timestep must be in 1..1000"):
        train_diffusion(x, None, TINY_UNET, steps=1, batch_size=4, max_timestep=1001)
