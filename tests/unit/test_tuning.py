"""The ``tune:`` stage: config checks, the choice on validation scores, applying it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from diffguard.config import ConfigError, evaluation_datasets, validation_datasets
from diffguard.data import ImageRecord
from diffguard.embedded import split_validation
from diffguard.plan import SCHEMA, RunPlan
from diffguard.schema import config_errors, load_schema
from diffguard.tuning import Tune, apply_chosen, parse_tunes, tune_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.tune_tiny import TUNE, tune_tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _plan(config: dict[str, Any]) -> RunPlan:
    """The plan of ``config``, schema defaults filled in (as ``run_plan`` does)."""
    schema = load_schema(REPO / SCHEMA)
    assert not config_errors(config, schema), config_errors(config, schema)
    return RunPlan(config, REPO, schema)


def test_test_and_validation_sets_are_separate() -> None:
    config = tune_tiny_config(REPO)
    assert evaluation_datasets(config) == ("test_id", ["near_digits"])
    assert validation_datasets(config) == ("val_id", ["val_near", "val_far"])


def test_tune_generates_grid_experiments_that_run_on_val_sets_only() -> None:
    plan = _plan(tune_tiny_config(REPO))
    names = ["cfg_main__tune00", "cfg_main__tune01"]
    assert plan.tunes[TUNE].point_experiments == names
    assert [plan.experiments[n]["cfg"]["guidance_scale"] for n in names] == [1.0, 3.0]
    assert not set(names) & set(plan.eval_experiments)  # never on test sets
    assert all("__tune" not in f for f in plan.score_tables())
    assert all("/val_" not in f for f in plan.score_tables())
    for f in plan.tune_scores(type("W", (), {"tune": TUNE})()):
        assert f.split("/")[-2] in ("val_id", "val_near", "val_far"), f


def test_tuned_experiment_and_descendants_take_the_choice() -> None:
    plan = _plan(tune_tiny_config(REPO))
    chosen = f"data/processed/tune_tiny/tune/{TUNE}/chosen.json"
    for exp in ("cfg_main", "cfg_oracle"):
        wildcards = type("W", (), {"exp": exp})()
        assert plan.chosen_input(wildcards) == [chosen]
        assert plan.experiment_spec(wildcards)["tuned_keys"] == ["cfg.guidance_scale"]
    grid_point = type("W", (), {"exp": "cfg_main__tune00"})()
    assert plan.chosen_input(grid_point) == []
    assert "tuned_keys" not in plan.experiment_spec(grid_point)


def test_a_trace_experiment_extending_a_tuned_one_takes_the_choice() -> None:
    config = tune_tiny_config(REPO)
    config["tune"][TUNE]["experiment"] = "gdm_main"
    config["tune"][TUNE]["grid"] = {"gdm.classifier_scale": [1.0, 3.0]}
    config["diffusion_models"]["unet_uncond"] = {"conditional": False, "train": {"steps": 2}}
    config["experiments"]["gdm_main"] = {
        "method": "gdm",
        "model": "unet_uncond",
        "gdm": {"respacing": "ddim10", "classifier_scale": 3.0},
    }
    config["experiments"]["gdm_trace"] = {"extends": "gdm_main", "inversion_trace_only": True}
    plan = _plan(config)
    wildcards = type("W", (), {"exp": "gdm_trace"})()
    assert plan.chosen_input(wildcards) == [f"data/processed/tune_tiny/tune/{TUNE}/chosen.json"]
    assert plan.experiment_spec(wildcards)["tuned_keys"] == ["gdm.classifier_scale"]


def test_an_experiment_keeps_what_it_sets_itself() -> None:
    config = tune_tiny_config(REPO)
    config["experiments"]["cfg_oracle"]["cfg"] = {"guidance_scale": 9.0}
    plan = _plan(config)
    assert plan.experiment_spec(type("W", (), {"exp": "cfg_oracle"})())["tuned_keys"] == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["tune"][TUNE].update(experiment="nope"), "tune.cfg_tune.experiment"),
        (
            lambda c: c["tune"][TUNE].update(grid={"cfg.guidance_scal": [1.0]}),
            r"tune\.cfg_tune\.grid.*guidance_scal",
        ),
        (
            lambda c: c["tune"][TUNE].update(grid={"cfg.inversion_steps": [2, 99]}),
            r"tune\.cfg_tune\.grid.*inversion_steps",
        ),
        (lambda c: c["tune"][TUNE].update(grid={"cfg.ddim_steps": []}), "non-empty"),
        (
            lambda c: c["tune"][TUNE].update(grid={"gdm.classifier_scale": [1.0]}),
            r"tune\.cfg_tune\.grid: \['gdm.classifier_scale'\] set another method",
        ),
        (
            lambda c: c["experiments"]["cfg_main"].update(speed_only=True),
            "tune.cfg_tune.experiment: 'cfg_main' is speed-only",
        ),
        (lambda c: c["tune"][TUNE].update(distances=["lpips"]), "tune.cfg_tune.distances"),
        (lambda c: c["datasets"].pop("val_far"), "tune.cfg_tune.objective"),
        (
            lambda c: [c["datasets"][d].pop("split") for d in ("val_id", "val_near", "val_far")],
            "split: val",
        ),
    ],
)
def test_errors_name_the_key(edit: Any, message: str) -> None:
    config = tune_tiny_config(REPO)
    config["tune"][TUNE]["objective"] = "far"
    edit(config)
    schema = load_schema(REPO / SCHEMA)
    config_errors(config, schema)  # defaults; the schema errors are not what is tested here
    with pytest.raises(ConfigError, match=message):
        _ = RunPlan(config, REPO, schema).experiments


def _tables(tmp: Path, aurocs: dict[str, list[float]]) -> tuple[list[Path], list[Path]]:
    """Val score tables of two grid points; ``aurocs[point]`` shifts the near OOD scores."""
    rng = np.random.default_rng(0)
    files = []
    ids = {d: [f"{d}{i}" for i in range(30)] for d in ("val_id", "val_near", "val_far")}
    base_files = []
    for d in ids:
        path = tmp / "baselines" / f"{d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        shift = 0.0 if d == "val_id" else -1.0
        pd.DataFrame({"image_id": ids[d], "ebo": rng.normal(shift, 1, 30)}).to_csv(path)
        base_files.append(path)
    for point, shifts in enumerate(aurocs.values()):
        for d, shift in zip(ids, [0.0, *shifts], strict=True):
            path = tmp / "scores" / f"cfg_main__tune{point:02d}" / d / "seed-0.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = rng.normal(0, 1, 30)
            frame = {"image_id": ids[d], "score_ssim": noise + shift, "score_l2": noise}
            pd.DataFrame(frame).to_csv(path, index=False)
            files.append(path)
    return files, base_files


def _tune(**kw: Any) -> Tune:
    spec = {
        "name": "t",
        "experiment": "cfg_main",
        "keys": ("cfg.guidance_scale",),
        "points": ((1.0,), (3.0,)),
        "distances": ("ssim", "l2"),
        "objective": "near",
        "baseline": "ebo",
        "rules": ("cascade", "rank_average"),
    }
    return Tune(**{**spec, **kw})


def _run(tmp: Path, files: list[Path], base: list[Path], tune: Tune) -> dict[str, Any]:
    return tune_stage(
        tune=tune,
        score_files=files,
        baseline_files=base,
        id_set="val_id",
        roles={"val_near": "near", "val_far": "far"},
        sweep_out=tmp / "sweep.csv",
        chosen_out=tmp / "chosen.json",
    )


def test_the_choice_is_the_best_val_objective(tmp_path: Path) -> None:
    # point 1's near-OOD ssim scores sit far below ID: it separates, point 0 does not
    files, base = _tables(tmp_path, {"p0": [0.0, 0.0], "p1": [-5.0, 0.0]})
    chosen = _run(tmp_path, files, base, _tune())
    assert chosen["settings"] == {"cfg.guidance_scale": 3.0}
    assert chosen["distance"] == "ssim"
    assert chosen["combination_rule"] in ("cascade", "rank_average")
    assert json.loads((tmp_path / "chosen.json").read_text()) == chosen
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert len(sweep) == 4 and {"auroc_val_near", "auroc_val_far", "objective"} <= set(sweep)
    assert chosen["objective"] == pytest.approx(sweep["objective"].max())
    # objective far: the mean over the far sets only
    far = _run(tmp_path, files, base, _tune(objective="far"))
    assert far["objective"] == pytest.approx(sweep["auroc_val_far"].max())


def test_ties_go_to_the_first_grid_point(tmp_path: Path) -> None:
    files, base = _tables(tmp_path, {"p0": [-5.0, 0.0], "p1": [-5.0, 0.0]})
    for point0, point1 in zip(files[:3], files[3:], strict=True):
        point1.write_bytes(point0.read_bytes())  # the same scores: equal objectives
    for points in (((1.0,), (3.0,)), ((3.0,), (1.0,))):
        chosen = _run(tmp_path, files, base, _tune(points=points))
        assert chosen["settings"] == {"cfg.guidance_scale": points[0][0]}
        assert chosen["distance"] == "ssim"


def test_apply_chosen_sets_only_the_listed_keys(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"tune": "t", "settings": {"cfg.guidance_scale": 7.0}}))
    spec = {"name": "cfg_main", "method": "cfg", "cfg": {"guidance_scale": 3.0, "ddim_steps": 5}}
    applied = apply_chosen({**spec, "tuned_keys": ["cfg.guidance_scale"]}, chosen)
    assert applied["cfg"] == {"guidance_scale": 7.0, "ddim_steps": 5}
    assert apply_chosen({**spec, "tuned_keys": []}, chosen)["cfg"]["guidance_scale"] == 3.0
    assert apply_chosen(dict(spec), None) == spec


def test_validation_lists_are_disjoint_from_test_lists() -> None:
    lists = {
        name: [ImageRecord(f"{name}/{i}.png", 0, f"{name}{i}") for i in range(10)]
        for name in ("train", "test_id", "near_digits", "far_photos")
    }
    split = split_validation(lists, 0.5, seed=0)
    assert split["train"] == lists["train"]
    for name in ("test_id", "near_digits", "far_photos"):
        val, test = split[f"val_{name}"], split[name]
        assert len(val) == 5 and len(test) == 5
        assert not {r.path for r in val} & {r.path for r in test}
        assert sorted(r.path for r in val + test) == sorted(r.path for r in lists[name])
    assert split == split_validation(lists, 0.5, seed=0)


def test_parse_without_tune_is_empty() -> None:
    config = tune_tiny_config(REPO)
    del config["tune"]
    assert parse_tunes(config) == {}


def test_tune_sweep_figure_is_registered_for_runs_with_tunes() -> None:
    from diffguard import targets

    assert "tune_sweep" not in targets.run_figures(
        trains_models=True, report_figures={}, fig2_noisy=None
    )
    assert "tune_sweep" in targets.run_figures(
        trains_models=True, report_figures={}, fig2_noisy=None, tunes=True
    )
    assert "tune_sweep" in _plan(tune_tiny_config(REPO)).figures()


def test_paper_sentence_names_the_choice() -> None:
    from diffguard.paper import tune_sentence

    chosen = {
        "experiment": "cfg_main",
        "settings": {"cfg.guidance_scale": 3.0},
        "distance": "ssim",
        "combination_rule": "rank_average",
        "objective": 91.25,
        "val_sets": ["val_id", "val_near"],
    }
    text = tune_sentence([chosen])
    assert r"\texttt{cfg.guidance\_scale} = 3.0" in text
    assert "distance ssim" in text and "rank\\_average" in text and "91.25" in text
    assert tune_sentence([]) == ""


def test_sweep_figure_marks_the_choice(tmp_path: Path) -> None:
    from diffguard.plot_tune import plot_tune_sweeps

    files, base = _tables(tmp_path, {"p0": [0.0, 0.0], "p1": [-5.0, 0.0]})
    chosen = _run(tmp_path, files, base, _tune())
    paths = plot_tune_sweeps(
        {"t": pd.read_csv(tmp_path / "sweep.csv")}, {"t": chosen}, tmp_path / "fig"
    )
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    with pytest.raises(ValueError, match="lacks the grid column"):
        plot_tune_sweeps(
            {"t": pd.read_csv(tmp_path / "sweep.csv").drop(columns="cfg.guidance_scale")},
            {"t": chosen},
            tmp_path / "bad",
        )


def test_embedded_builder_writes_val_lists_only_when_asked(tmp_path: Path) -> None:
    from diffguard.data import read_imglist
    from diffguard.embedded import build_embedded_benchmark

    plain = build_embedded_benchmark(tmp_path / "plain", seed=0, n_near=10, n_far=6)
    assert not any(name.startswith("val_") for name in plain["imglists"])
    split = build_embedded_benchmark(tmp_path / "val", seed=0, n_near=10, n_far=6, val_fraction=0.5)
    for name in ("test_id", "near_digits", "far_photos"):
        test = {r.path for r in read_imglist(tmp_path / "val" / split["imglists"][name])}
        val = {r.path for r in read_imglist(tmp_path / "val" / split["imglists"][f"val_{name}"])}
        whole = {r.path for r in read_imglist(tmp_path / "plain" / plain["imglists"][name])}
        assert val and test and not val & test and val | test == whole
    assert split["imglists"]["train"] == plain["imglists"]["train"]
