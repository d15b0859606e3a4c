"""The paper configs' DAGs (dry runs, nothing downloaded): job counts per rule, speed, profile."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake_cli import job_counts, snakemake

# Started in the background by the dry_runs fixture (conftest.py), shared with other modules.
IMAGENET_DAG = ("-n", "--forceall", "--configfile", "config/imagenet.yaml")
LINT = [
    ("--lint", "--configfile", f"config/{n}")
    for n in ("imagenet.yaml", "cifar10.yaml", "imagenet_v15.yaml")
]
PREFLIGHT_DAG = ("-n", "preflight", "--configfile", "config/imagenet.yaml")
DRY_RUNS = [IMAGENET_DAG, PREFLIGHT_DAG, *LINT]


def sized_config(repo: Path, tmp_path: Path, name: str, sizes: dict[str, int]) -> Path:
    """The shipped paper config with fixed list sizes (`n`), so every shard is planned."""
    config: dict[str, Any] = yaml.safe_load((repo / "config" / name).read_text())
    for dataset, n in sizes.items():
        config["datasets"][dataset]["n"] = n
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dry_run(repo: Path, configfile: Path, *extra: str) -> tuple[dict[str, int], str, float]:
    start = time.perf_counter()
    result = snakemake(repo, "-n", "--forceall", "--configfile", str(configfile), *extra)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job_counts(result.stdout), result.stdout, elapsed


def assert_report_targets(stdout: str, run: str) -> None:
    """Every table, figure and the paper are planned."""
    assert "paper/ms.pdf" in stdout
    assert f"data/processed/{run}/metrics.csv" in stdout
    assert re.search(rf"figures/{run}/\S+\.pdf", stdout) and re.search(
        rf"figures/{run}/\S+\.png", stdout
    )
    assert re.search(r"paper/tables/\S+\.tex", stdout)


def test_imagenet_dag_job_counts(repo_root: Path, tmp_path: Path) -> None:
    sizes = {
        "train": 100,
        "imagenet_val": 1200,  # 3 shards of 500
        "species": 500,  # 1
        "inaturalist": 600,  # 2
        "openimage_o": 100,  # 1
        "imagenet_o": 1000,  # 2
    }
    counts, stdout, _ = dry_run(
        repo_root, sized_config(repo_root, tmp_path, "imagenet.yaml", sizes)
    )
    config = yaml.safe_load((repo_root / "config" / "imagenet.yaml").read_text())
    explicit = [
        n
        for n, e in config["experiments"].items()
        if not e.get("speed_only") and not e.get("inversion_trace_only")
    ]
    grid = sum(len(v) for e in config["experiments"].values() for v in e.get("grid", {}).values())
    assert len(explicit) == 12 and grid == 10
    # gdm_main has 4 seeds, every other experiment (and each grid one, from ldm_main) has 1
    runs = (len(explicit) + grid - 1) + 4
    assert counts["reconstruct"] == runs * (3 + 1 + 2 + 1 + 2)
    assert counts["gather_scores"] == runs * 5
    assert counts["select_images"] == 6 and counts["cache_predictions"] == 6
    # the LDM experiments' guidance labels: predictions at their 256 crop on the 5 test sets
    assert counts["cache_guidance_predictions"] == 5
    assert "predictions/input-256/imagenet_val.npz" in stdout
    assert "predictions/input-256/train.npz" not in stdout
    assert counts["prepare_diffusion_model"] == 2 and counts["prepare_classifier"] == 1
    assert "train_classifier" not in counts and "train_diffusion" not in counts
    assert "prepare_ensemble_member" not in counts  # no deep_ensemble on ImageNet
    # 12 fetched files (lists, 4 OOD sets, ResNet-50, ADM, the ADM noisy classifier of Fig. 2,
    # LDM ckpt + yaml, VGG16, DISTS), ImageNet val and train linked from user-provided folders
    assert counts["download"] == 12 and counts["verify_download"] == 12
    assert counts["link_manual_folder"] == 2 and counts["extract_download"] == 5
    assert counts["torch_hub"] == 1 and counts["assemble_openood_benchmark"] == 1
    for rule in ("evaluate", "baseline_scores", "build_paper"):
        assert counts[rule] == 1, rule
    assert_report_targets(stdout, "imagenet")
    # Fig. 2: one prediction job (noisy classifier, ResNet-50, ADM x0) and one plot job
    assert counts["fig2_predictions"] == 1 and counts["plot_fig2"] == 1
    block = stdout[stdout.index("rule fig2_predictions:") :].split("\n\n")[0]
    assert "downloads/adm256_classifier/256x256_classifier.pt" in block, block
    assert "models/adm256_uncond/model.done" in block and "lists/imagenet_val.txt" in block
    assert re.search(r"gpu=1", block), block
    for name in ("noisy_classifier_agreement", "accuracy_over_timesteps"):
        assert f"figures/imagenet/{name}.pdf" in stdout, name
    for name in ("ldm_main__cam_cut0.2", "ldm_main__ddim_steps50", "gdm_es_psnr_6.39_dists_0.37"):
        assert f"recon/{name}/" in stdout, name
    assert "recon/gdm_speed/" not in stdout  # timed by the speed benchmark only
    # Fig. 4: one full-inversion trace job for the 5 evaluation sets, never reconstructed
    assert counts["inversion_trace"] == 1 and counts["plot_psnr_inversion"] == 1
    assert "recon/gdm_inversion_trace/" not in stdout
    assert "inversion_trace/gdm_inversion_trace/imagenet_o.csv" in stdout
    # resources of a reconstruction shard: a GPU, memory and a runtime that grow with retries
    block = stdout[stdout.index("rule reconstruct:") :].split("\n\n")[0]
    assert re.search(r"gpu=1", block) and re.search(r"mem_mb=32000", block), block
    assert re.search(r"runtime=600", block), block


def test_imagenet_v15_dag_job_counts(repo_root: Path, tmp_path: Path) -> None:
    """The optional OpenOOD v1.5 ImageNet-1K benchmark: near (SSB-hard, NINCO) and far
    (iNaturalist, Textures, OpenImage-O) sets, two experiments, a reproduced-only table."""
    sizes = {
        "train": 100,
        "imagenet_val": 1200,  # 3 shards of 500
        "ssb_hard": 500,  # 1
        "ninco": 600,  # 2
        "inaturalist": 100,  # 1
        "textures": 1000,  # 2
        "openimage_o": 501,  # 2
    }
    counts, stdout, _ = dry_run(
        repo_root, sized_config(repo_root, tmp_path, "imagenet_v15.yaml", sizes)
    )
    # gdm_main and ldm_main, one seed each, over 3 + 1 + 2 + 1 + 2 + 2 shards
    assert counts["reconstruct"] == 2 * 11 and counts["gather_scores"] == 2 * 6
    assert counts["select_images"] == 7
    # 6 eval sets + train at the benchmark size; the LDM's guidance labels at its 256 crop
    assert counts["cache_predictions"] == 7 and counts["cache_guidance_predictions"] == 6
    assert counts["prepare_diffusion_model"] == 2 and counts["prepare_classifier"] == 1
    # v1.5 lists, SSB-hard, NINCO, iNaturalist, Textures, OpenImage-O, ResNet-50, ADM, LDM ckpt
    # + yaml, VGG16, DISTS; ImageNet val and train linked from user-provided folders
    assert counts["download"] == 12 and counts["verify_download"] == 12
    assert counts["link_manual_folder"] == 2 and counts["extract_download"] == 6
    assert counts["assemble_openood_benchmark"] == 1
    for rule in ("evaluate", "baseline_scores", "render_paper_tables", "build_paper"):
        assert counts[rule] == 1, rule
    assert "inversion_trace" not in counts and "plot_sweeps" not in counts
    assert_report_targets(stdout, "imagenet_v15")
    assert "paper/tables/results_openood_v15.tex" in stdout
    for name in ("ssb_hard", "ninco", "textures"):
        assert f"recon/gdm_main/{name}/" in stdout, name
    # a reproduced-only table needs no published CSV
    block = stdout[stdout.index("rule render_paper_tables:") :].split("\n\n")[0]
    assert "config/published" not in block, block


def test_full_imagenet_dag_builds_in_seconds(repo_root: Path, tmp_path: Path) -> None:
    # list sizes of the OpenOOD v1 ImageNet benchmark (order of magnitude; PAPER.md D.3)
    sizes = {
        "train": 12811,
        "imagenet_val": 45000,
        "species": 10000,
        "inaturalist": 10000,
        "openimage_o": 15869,
        "imagenet_o": 2000,
    }
    counts, _, elapsed = dry_run(
        repo_root, sized_config(repo_root, tmp_path, "imagenet.yaml", sizes)
    )
    shards = 90 + 20 + 20 + 32 + 4
    assert counts["reconstruct"] == 25 * shards
    assert elapsed < 90, f"full ImageNet DAG took {elapsed:.1f} s"


def test_full_lists_plan_up_to_the_checkpoint(dry_runs) -> None:
    # n: null (the default) -> shard counts come from the selected lists (a checkpoint)
    result = dry_runs.get(*IMAGENET_DAG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts, stdout = job_counts(result.stdout), result.stdout
    assert counts["select_images"] == 6
    assert "DAG of jobs will be updated after completion" in stdout


def test_preflight_plans_in_seconds(dry_runs) -> None:
    # the preflight needs the downloads, models, benchmark and lists, never a reconstruct job
    result = dry_runs.get(*PREFLIGHT_DAG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["preflight"] == 1 and counts["select_images"] == 6
    assert "reconstruct" not in counts and "cache_predictions" not in counts
    assert result.seconds < 90, f"preflight DAG took {result.seconds:.1f} s"


def test_cifar10_dag_job_counts(repo_root: Path, tmp_path: Path) -> None:
    sizes = {"train": 5000, "cifar10_test": 2500, "cifar100": 1000, "tin": 900}
    counts, stdout, _ = dry_run(repo_root, sized_config(repo_root, tmp_path, "cifar10.yaml", sizes))
    # 2 experiments x 1 seed x (3 + 1 + 1 shards of 1000)
    assert counts["reconstruct"] == 2 * 5 and counts["gather_scores"] == 2 * 3
    assert counts["select_images"] == 4 and counts["cache_predictions"] == 4
    assert "cache_guidance_predictions" not in counts  # DiffNB runs at the benchmark's 32 px
    # + OpenOOD v1.5's zip of three ResNet-18 runs (the Deep Ensemble members)
    assert counts["download"] == 6 and counts["link_manual_file"] == 1
    assert counts["verify_download"] == 7 and counts["extract_download"] == 5
    assert counts["prepare_diffusion_model"] == 1 and counts["prepare_classifier"] == 1
    assert counts["prepare_ensemble_member"] == 3
    assert "torch_hub" not in counts  # logits/l2/ssim need no VGG weights
    assert "fig2_predictions" not in counts  # Fig. 2 is an ImageNet figure
    assert_report_targets(stdout, "cifar10")
    # the evaluation sets' caches take the members' weights, the training set's does not
    for dataset, members in (("cifar100", 3), ("tin", 3), ("train", 0)):
        block = job_block(stdout, f"predictions/{dataset}.npz")
        assert block.count("models/ensemble/member-") == 2 * members, block


def job_block(stdout: str, output: str) -> str:
    """The dry run's block of the job writing ``output``."""
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", stdout):  # one block per "[<date>]"
        if re.search(rf"output: [^\n]*{re.escape(output)}", block):
            return block.split("\n\n")[0]
    raise AssertionError(f"no job writes {output}")


def test_deep_ensemble_without_members_is_a_config_error(repo_root: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((repo_root / "config" / "cifar10.yaml").read_text())
    del config["classifier"]["ensemble_members"]
    path = tmp_path / "no_members.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(repo_root, "-n", "--configfile", str(path))
    assert result.returncode != 0
    assert "deep_ensemble needs classifier.ensemble_members" in result.stdout + result.stderr


def test_trained_classifier_ensemble_members_are_retrained_with_their_seeds(
    repo_root: Path, tmp_path: Path
) -> None:
    config = yaml.safe_load((repo_root / "config" / "tiny.yaml").read_text())
    config["baselines"] = [*config["baselines"], "deep_ensemble"]
    config["classifier"]["ensemble_members"] = [{"seed": 1}, {"seed": 2}]
    path = tmp_path / "tiny_ensemble.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    counts, stdout, _ = dry_run(repo_root, path)
    assert counts["train_ensemble_member"] == 2 and counts["train_classifier"] == 1
    block = job_block(stdout, "ensemble/member-1/weights/model.safetensors")
    assert "rule train_ensemble_member:" in block and "member=1" in block, block


@pytest.mark.parametrize("name", ["imagenet.yaml", "cifar10.yaml", "imagenet_v15.yaml"])
def test_slurm_profile_accepted(repo_root: Path, tmp_path: Path, name: str) -> None:
    config = yaml.safe_load((repo_root / "config" / name).read_text())
    sizes = {d: 10 for d in config["datasets"]}
    result = snakemake(
        repo_root,
        "-n",
        "--profile",
        "slurm",
        "--configfile",
        str(sized_config(repo_root, tmp_path, name, sizes)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Job stats:" in result.stdout


def test_paper_configs_lint_clean(dry_runs) -> None:
    for args in LINT:
        result = dry_runs.get(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Lints for" not in result.stdout + result.stderr, result.stdout
