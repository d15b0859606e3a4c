"""The classifier-prediction cache: MC-dropout passes, ensemble members, input sizes, configs.

``cache_predictions`` runs on a made-up benchmark (eight 20 x 20 RGB images) with stand-in
classifiers: a small_cnn (batch norm + its own dropout layer) and OpenOOD's ResNet18_32x32
(batch norm, no dropout layer).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from diffguard import io
from diffguard.classifiers import (
    OPENOOD_DROPOUT_P,
    build_classifier,
    mc_dropout_logits,
    mc_dropout_rate,
)
from diffguard.config import ConfigError, ensemble_members, guidance_input_size, resolve_all
from diffguard.data import read_imglist
from diffguard.evaluation import _cached, baseline_scores_stage
from diffguard.model_io import WEIGHTS_FILE, save_model
from diffguard.pipeline import prepare_ensemble_member_stage
from diffguard.predictions import cache_predictions_stage
from diffguard.preparation import prepare_classifier_stage
from diffguard.runtime import (
    experiment_image_sizes,
    load_records_images,
    load_trained_classifier,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import standins  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 8
BENCHMARK = {"image_size": 16, "resize_size": 20, "channels": 3, "num_classes": 10}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    lines = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{i}.png")
        lines.append(f"img_{i}.png {i % 10}\n")
    (root / "list.txt").write_text("".join(lines))
    (root / "benchmark.json").write_text(json.dumps({"image_root": "images"}))
    paths = {"root": root, "imglist": root / "list.txt", "benchmark": root / "benchmark.json"}
    for name, spec, seed in (
        ("cnn", {"arch": "small_cnn", "in_channels": 3, "width": 4, "dropout": 0.2}, 0),
        ("cnn_b", {"arch": "small_cnn", "in_channels": 3, "width": 4, "dropout": 0.2}, 1),
        ("resnet", {"arch": "resnet18_32x32"}, 0),
    ):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_classifier({**spec, "num_classes": 10})
        if name == "resnet":  # running statistics far from any batch's own statistics
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-1.0, 1.0)
                    module.running_var.uniform_(0.5, 2.0)
        save_model(model, root / name)
        paths[name] = root / name / WEIGHTS_FILE
    return paths


def _cache(bench: dict[str, Path], out: Path, weights: str = "resnet", **kwargs: Any) -> dict:
    cache_predictions_stage(
        bench["imglist"], bench["benchmark"], bench[weights], BENCHMARK, out, **kwargs
    )
    return io.read_npz(out)


# ----------------------------------------------------------------------------- MC-dropout
def test_mc_passes_use_running_batch_norm_statistics(
    bench: dict[str, Path], tmp_path: Path
) -> None:
    # p = 0: every pass must equal the plain eval-mode logits, whatever the batch size; with
    # batch norm in batch-statistics mode (model.train()) they would not
    plain = _cache(bench, tmp_path / "plain.npz")
    for batch_size in (N_IMAGES, 3, 1):
        got = _cache(
            bench, tmp_path / "p0.npz", mc_passes=2, mc_dropout_p=0.0, batch_size=batch_size
        )
        assert got["mc_logits"].shape == (2, N_IMAGES, 10)
        np.testing.assert_allclose(got["mc_logits"][0], plain["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["mc_logits"][1], plain["logits"], rtol=1e-5, atol=1e-5)
    model = load_trained_classifier(bench["resnet"], torch.device("cpu"))
    x = load_records_images(read_imglist(bench["imglist"]), bench["root"] / "images", 16, 3, 20)
    with torch.no_grad():
        train_mode = model.train()(x)
    assert not np.allclose(train_mode.numpy(), plain["logits"], atol=1e-3)  # the old bug


def test_mc_passes_differ_and_seeded_reruns_agree(bench: dict[str, Path], tmp_path: Path) -> None:
    first = _cache(bench, tmp_path / "a.npz", mc_passes=5, batch_size=3)
    again = _cache(bench, tmp_path / "b.npz", mc_passes=5, batch_size=3)
    other = _cache(bench, tmp_path / "c.npz", mc_passes=5, batch_size=3, mc_seed=1)
    mc = first["mc_logits"]
    assert mc.shape == (5, N_IMAGES, 10)
    assert not np.allclose(mc[0], mc[1])
    np.testing.assert_array_equal(mc, again["mc_logits"])
    assert not np.allclose(mc, other["mc_logits"])
    # the plain outputs do not depend on the MC passes
    np.testing.assert_array_equal(first["logits"], other["logits"])
    np.testing.assert_array_equal(first["features"], other["features"])


def test_mc_dropout_is_openood_dropout_on_the_penultimate_features() -> None:
    torch.manual_seed(0)
    resnet = build_classifier({"arch": "resnet18_32x32", "num_classes": 10})
    cnn = build_classifier({"arch": "small_cnn", "num_classes": 10, "dropout": 0.2})
    assert mc_dropout_rate(resnet) == OPENOOD_DROPOUT_P == 0.5  # no dropout layer: OpenOOD's p
    assert mc_dropout_rate(cnn) == pytest.approx(0.2)  # its own layer
    assert mc_dropout_rate(cnn, 0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        mc_dropout_rate(resnet, 1.0)
    features = torch.rand(4, 512) + 0.5
    torch.manual_seed(1)
    got = mc_dropout_logits(resnet, features, 3, 0.5)
    torch.manual_seed(1)
    for i in range(3):  # element-wise inverted dropout (torch's dropout2d on a 2-D input)
        mask = torch.nn.functional.dropout(torch.ones_like(features), 0.5, training=True)
        assert set(mask.unique().tolist()) <= {0.0, 2.0}
        expected = resnet.fc(features * mask)
        torch.testing.assert_close(got[i], expected)
    # the small CNN's own stochastic forward pass is the same computation
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        torch.manual_seed(2)
        ours = mc_dropout_logits(cnn, cnn.features(x), 1, 0.2)[0]
        torch.manual_seed(2)
        cnn.dropout.train()
        own = cnn(x)
    torch.testing.assert_close(ours, own)
    with pytest.raises(ValueError, match="passes >= 1"):
        mc_dropout_logits(resnet, features, 0, 0.5)


# --------------------------------------------------------------------------- ensemble members
def test_ensemble_logits_are_the_members_logits(bench: dict[str, Path], tmp_path: Path) -> None:
    got = _cache(
        bench, tmp_path / "ens.npz", "cnn", ensemble_weights=[bench["cnn"], bench["cnn_b"]]
    )
    alone = _cache(bench, tmp_path / "b.npz", "cnn_b")
    assert got["ensemble_logits"].shape == (2, N_IMAGES, 10)
    np.testing.assert_allclose(got["ensemble_logits"][0], got["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["ensemble_logits"][1], alone["logits"], rtol=1e-5, atol=1e-6)
    cached = _cached(got)
    assert cached.ensemble_logits is not None and cached.mc_logits is None
    # without members (or passes) the cache holds empty arrays, read back as absent
    assert _cached(alone).ensemble_logits is None and _cached(alone).mc_logits is None


def test_ensemble_member_with_other_classes_is_refused(
    bench: dict[str, Path], tmp_path: Path
) -> None:
    other = build_classifier({"arch": "small_cnn", "num_classes": 4, "in_channels": 3, "width": 4})
    save_model(other, tmp_path / "other")
    with pytest.raises(ValueError, match=r"other.*4 classes"):
        _cache(
            bench, tmp_path / "x.npz", "cnn", ensemble_weights=[tmp_path / "other" / WEIGHTS_FILE]
        )
    assert not (tmp_path / "x.npz").exists()


def test_prepare_ensemble_member_from_the_openood_v15_zip(tmp_path: Path) -> None:
    from diffguard.downloads import extract_archive

    served = standins.write_openood_v15_cifar10(tmp_path / "served")
    extracted = tmp_path / "extracted"
    extract_archive(served["path"], extracted)
    spec = {**served["options"], "in_channels": 3}
    logits = []
    x = torch.rand(2, 3, 32, 32)
    for i, member in enumerate(served["members"]):
        out = tmp_path / f"member-{i}"
        prepare_ensemble_member_stage(spec, extracted, member, out)
        model = load_trained_classifier(out / "weights" / WEIGHTS_FILE, torch.device("cpu"))
        with torch.no_grad():
            logits.append(model(x))
    assert not torch.allclose(logits[0], logits[1])  # three different training runs
    # the same file as a plain checkpoint (no archive) converts identically
    prepare_classifier_stage(spec, extracted / served["members"][0], tmp_path / "direct")
    direct = load_trained_classifier(tmp_path / "direct" / "weights" / WEIGHTS_FILE, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(direct(x), logits[0])
    with pytest.raises(FileNotFoundError, match=r"s7/best\.ckpt.*s0/best\.ckpt"):
        prepare_ensemble_member_stage(
            spec, extracted, served["members"][0].replace("s0", "s7"), tmp_path / "m"
        )


# ---------------------------------------------------------------------------- input sizes
def test_cache_at_an_experiment_input_size(bench: dict[str, Path], tmp_path: Path) -> None:
    base = _cache(bench, tmp_path / "base.npz", "cnn")
    sized = _cache(bench, tmp_path / "sized.npz", "cnn", input_size=20)
    assert int(base["input_size"]) == 16 and int(sized["input_size"]) == 20
    # loaded as a reconstruct job of an experiment with input_size 20 loads them
    assert experiment_image_sizes({"input_size": 20}, BENCHMARK) == (20, 20)
    model = load_trained_classifier(bench["cnn"], torch.device("cpu"))
    x = load_records_images(read_imglist(bench["imglist"]), bench["root"] / "images", 20, 3, 20)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(sized["logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sized["preds"], expected.argmax(1))
    assert not np.allclose(sized["logits"], base["logits"])


# -------------------------------------------------------------------------------- configs
def _config(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_guidance_input_size_of_the_paper_configs() -> None:
    config = _config("imagenet.yaml")
    experiments = resolve_all(config["experiments"])
    # the LDM (and everything extending it, grid points included) classifies its 256 crop
    for name in ("ldm_main", "ldm_oracle", "ldm_main__cam_cut0.2"):
        assert guidance_input_size(config, experiments[name]) == 256, name
    for name in ("gdm_main", "gdm_oracle"):
        assert guidance_input_size(config, experiments[name]) is None, name
    switched = {**experiments["ldm_main"], "guidance_predictions": "benchmark"}
    assert guidance_input_size(config, switched) is None
    with pytest.raises(ConfigError, match="guidance_predictions.*'crop'"):
        guidance_input_size(config, {**switched, "guidance_predictions": "crop"})
    cifar = _config("cifar10.yaml")
    for exp in resolve_all(cifar["experiments"]).values():
        assert guidance_input_size(cifar, exp) is None
    # a classifier-level input size counts too
    other = copy.deepcopy(config)
    other["classifier"]["input_size"] = 240
    assert guidance_input_size(other, experiments["gdm_main"]) == 240


def test_ensemble_members_of_the_cifar10_config() -> None:
    config = _config("cifar10.yaml")
    members = ensemble_members(config)
    assert [m["checkpoint"] for m in members] == ["openood_v15_cifar10_res18"] * 3
    assert [m["path"].split("/")[-2] for m in members] == ["s0", "s1", "s2"]
    assert config["downloads"]["openood_v15_cifar10_res18"]["extract"] is True
    assert ensemble_members(_config("imagenet.yaml")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["classifier"].pop("ensemble_members"), "deep_ensemble needs"),
        (
            lambda c: c["classifier"].update(
                ensemble_members=c["classifier"]["ensemble_members"][:1]
            ),
            "at least two",
        ),
        (
            lambda c: c["classifier"]["ensemble_members"][0].pop("path"),
            r"\[0\]: download .* archive",
        ),
        (lambda c: c["classifier"]["ensemble_members"].append("openood_cifar10_res18"), None),
        (
            lambda c: c["classifier"]["ensemble_members"].append(
                {"checkpoint": "openood_cifar10_res18", "path": "x.ckpt"}
            ),
            r"\[3\]: download 'openood_cifar10_res18' is a single file",
        ),
        (
            lambda c: c["classifier"]["ensemble_members"].append("nowhere"),
            r"\[3\]\.checkpoint: 'nowhere' is not a key of `downloads`",
        ),
        (
            lambda c: c["classifier"]["ensemble_members"].append({"seed": 1}),
            r"\[3\]: a \{seed\} member retrains",
        ),
    ],
)
def test_bad_ensemble_members_name_the_key(change: Any, message: str | None) -> None:
    config = _config("cifar10.yaml")
    change(config)
    if message is None:  # a plain checkpoint file is a valid member
        assert ensemble_members(config)[-1] == {"checkpoint": "openood_cifar10_res18"}
        return
    with pytest.raises(ConfigError, match=message):
        ensemble_members(config)


def test_trained_classifier_members_are_seeds() -> None:
    config = _config("tiny.yaml")
    config["classifier"]["ensemble_members"] = [{"seed": 1}, {"seed": 2}]
    config["baselines"].append("deep_ensemble")
    assert ensemble_members(config) == [{"seed": 1}, {"seed": 2}]
    config["classifier"]["ensemble_members"] = ["resnet50_tv"]
    with pytest.raises(ConfigError, match=r"\[0\]: a checkpoint member needs classifier.source"):
        ensemble_members(config)


def test_baseline_scores_read_the_cached_passes_and_members(
    bench: dict[str, Path], tmp_path: Path
) -> None:
    from diffguard.baselines import DeepEnsemble, MCDropout

    members = [bench["cnn"], bench["cnn_b"]]
    train = _cache(bench, tmp_path / "train.npz", "cnn")
    test = _cache(bench, tmp_path / "test.npz", "cnn", mc_passes=4, ensemble_weights=members)
    assert train["mc_logits"].shape[0] == 0  # the training set's cache needs neither
    out = tmp_path / "scores.csv"
    baseline_scores_stage(
        tmp_path / "train.npz",
        [tmp_path / "test.npz"],
        bench["cnn"],
        ["msp", "mc_dropout", "deep_ensemble"],
        [out],
    )
    frame = pd.read_csv(out)
    cached = _cached(test)
    np.testing.assert_allclose(frame["mc_dropout"], MCDropout().fit(cached).score(cached))
    np.testing.assert_allclose(frame["deep_ensemble"], DeepEnsemble().fit(cached).score(cached))
