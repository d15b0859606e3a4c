"""Fig. 2 (noise-aware vs protected classifier over timesteps): predictions, tables, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffguard.figure2 import (
    AGREEMENT,
    FIGURE_A,
    FIGURE_B,
    Fig2Settings,
    accuracy_table,
    agreement_table,
    check_fig2_config,
    classifier_timesteps,
    plot_figure2,
    predict_over_timesteps,
)
from diffguard.schedules import gdm_schedule


class Recorder:
    """A fake classifier: records its inputs and predicts class = round(mean * 10) mod 5."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs.append(x.clone())
        if t is not None:
            self.timesteps.append(t.clone())
        cls = (x.flatten(1).mean(1) * 10).round().long() % 5
        return torch.nn.functional.one_hot(cls, 5).float()


def _images(n: int = 4, size: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


def test_released_timestep_convention() -> None:
    sched = gdm_schedule("ddim100")
    indices = (0, 9, 99)
    assert classifier_timesteps(sched, indices, "respaced_index").tolist() == [0, 9, 99]
    assert classifier_timesteps(sched, indices, "original").tolist() == [0, 90, 990]


def test_predictions_follow_the_released_procedure() -> None:
    sched = gdm_schedule("ddim100")
    settings = Fig2Settings(images=None, indices=(0, 9, 59), image_size=8, crop_size=6, seed=3)
    settings = Fig2Settings(**{**settings.__dict__, "noisy_classifier": {"checkpoint": "k"}})
    x = _images()
    ids, labels = [f"img{i}" for i in range(4)], [0, 1, 2, 3]
    normal, noisy = Recorder(), Recorder()
    eps_calls: list[torch.Tensor] = []

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_calls.append(t.clone())
        return torch.zeros_like(x_t)

    frame = predict_over_timesteps(x, ids, labels, settings, sched, normal, eps, noisy)
    assert len(frame) == 4 * 3 and set(frame.columns) >= {"pred_noisy", "pred_xt", "pred_x0"}
    assert frame["timestep"].unique().tolist() == [0, 90, 590]
    # index 0: the clean image everywhere, no UNet call; the noisy classifier gets the respaced
    # index (9, 59), the UNet the original timestep (90, 590)
    assert torch.equal(noisy.inputs[0], x)
    assert [int(t[0]) for t in noisy.timesteps] == [0, 9, 59]
    assert [int(t[0]) for t in eps_calls] == [90, 590]
    # q_sample at index 59 with the respaced alpha-bar (= the original one at t = 590)
    ac = sched.alphas_cumprod[59]
    noise = (noisy.inputs[2] - np.sqrt(ac) * x) / np.sqrt(1 - ac)
    assert abs(noise.std().item() - 1) < 0.1 and abs(noise.mean().item()) < 0.1
    # the protected classifier sees the centre crop in [0, 1]; x0 with eps = 0 is x_t/sqrt(ac)
    assert normal.inputs[0].shape[-1] == 6 and torch.allclose(
        normal.inputs[0], (x[..., 1:7, 1:7] + 1) / 2
    )
    x0 = (noisy.inputs[2] / np.sqrt(ac)).clamp(-1, 1)
    assert torch.allclose(normal.inputs[5], (x0 + 1) / 2, atol=1e-5)


def test_noise_is_seeded_per_image_not_per_batch() -> None:
    sched = gdm_schedule("ddim100")
    settings = Fig2Settings(images=None, indices=(0, 49), image_size=8, seed=1)
    x = _images()
    ids = [f"img{i}" for i in range(4)]
    whole, halves = Recorder(), Recorder()
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    predict_over_timesteps(x, ids, [0] * 4, settings, sched, whole, zero)
    for part in (slice(0, 2), slice(2, 4)):
        predict_over_timesteps(x[part], ids[part], [0] * 2, settings, sched, halves, zero)
    # inputs: [x_t idx0, x0 idx0, x_t idx49, x0 idx49] per call
    assert torch.equal(whole.inputs[2], torch.cat([halves.inputs[2], halves.inputs[6]]))
    other = Recorder()
    predict_over_timesteps(
        x, ids, [0] * 4, Fig2Settings(**{**settings.__dict__, "seed": 2}), sched, other, zero
    )
    assert not torch.equal(whole.inputs[2], other.inputs[2])


def _frame() -> pd.DataFrame:
    # 4 images at index 0: both correct, both wrong same, differ (noisy right), differ (both wrong)
    return pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"] * 2,
            "label": [1, 2, 3, 4] * 2,
            "index": [0] * 4 + [9] * 4,
            "timestep": [0] * 4 + [90] * 4,
            "pred_noisy": [1, 0, 3, 7, 1, 2, 3, 4],
            "pred_xt": [1, 0, 0, 8, 0, 0, 0, 0],
            "pred_x0": [1, 2, 3, 4, 1, 2, 0, 0],
        }
    )


def test_agreement_partitions_the_images() -> None:
    table = agreement_table(_frame())
    assert table["case"].tolist() == list(AGREEMENT)
    assert table["count"].tolist() == [1, 1, 2] and table["percent"].sum() == pytest.approx(100)
    with pytest.raises(ValueError, match="pred_noisy"):
        agreement_table(_frame().drop(columns="pred_noisy"))


def test_accuracy_per_timestep() -> None:
    acc = accuracy_table(_frame()).set_index(["timestep", "curve"])["accuracy"]
    assert acc[(0, "pred_noisy")] == 50 and acc[(0, "pred_xt")] == 25 and acc[(0, "pred_x0")] == 100
    assert (
        acc[(90, "pred_noisy")] == 100 and acc[(90, "pred_xt")] == 0 and acc[(90, "pred_x0")] == 50
    )


@pytest.mark.parametrize("noisy", [True, False])
def test_plot_figure2_writes_tables_and_figures(tmp_path: Path, noisy: bool) -> None:
    frame = _frame() if noisy else _frame().drop(columns="pred_noisy")
    frame.to_csv(tmp_path / "pred.csv", index=False)
    plot_figure2(
        tmp_path / "pred.csv",
        tmp_path / "acc.csv",
        tmp_path,
        agreement_csv=tmp_path / "agree.csv" if noisy else None,
    )
    assert (tmp_path / f"{FIGURE_B}.pdf").stat().st_size > 0
    assert (tmp_path / f"{FIGURE_B}.png").stat().st_size > 0
    assert (tmp_path / f"{FIGURE_A}.pdf").exists() == noisy
    assert set(pd.read_csv(tmp_path / "acc.csv")["curve"]) == (
        {"pred_noisy", "pred_xt", "pred_x0"} if noisy else {"pred_xt", "pred_x0"}
    )


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="classifier_timestep"):
        Fig2Settings(classifier_timestep="scaled")
    with pytest.raises(ValueError, match="crop_size"):
        Fig2Settings(image_size=16, crop_size=32)
    with pytest.raises(ValueError, match="index 0"):
        Fig2Settings(indices=(9, 19), noisy_classifier={"checkpoint": "k"})
    config = {
        "benchmark": {"image_size": 16},
        "datasets": {"val": {"role": "id"}, "ood": {"role": "near"}},
        "diffusion_models": {"m": {}},
        "downloads": {"k": {}},
    }
    check_fig2_config({"noisy_classifier": {"checkpoint": "k"}}, "val", "m", config)
    with pytest.raises(ValueError, match="not an ID set"):
        check_fig2_config({}, "ood", "m", config)
    with pytest.raises(ValueError, match="figures.fig2.model"):
        check_fig2_config({}, "val", "x", config)
    with pytest.raises(ValueError, match="noisy_classifier.checkpoint"):
        check_fig2_config({"noisy_classifier": {"checkpoint": "z"}}, "val", "m", config)


def test_paper_caption_says_which_curves_exist() -> None:
    from diffguard.paper import figure_blocks

    alone = figure_blocks([FIGURE_B])
    both = figure_blocks([FIGURE_A, FIGURE_B])
    assert "no noise-aware classifier" in alone and "no noise-aware classifier" not in both
    assert both.index(f"{FIGURE_A}.pdf") < both.index(f"{FIGURE_B}.pdf")
