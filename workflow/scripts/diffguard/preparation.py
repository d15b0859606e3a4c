"""Offline preparation of the models: convert original checkpoints once, per workflow rule.

:func:`prepare_diffusion_model` reads an original diffusion checkpoint (guided-diffusion ADM,
DiffNB, CompVis LDM) with ``weights_only=True`` and writes the converted weights as safetensors
under ``<out_dir>/weights`` beside ``<out_dir>/backend.json`` (the layout is described in
:mod:`diffguard.backends`, which loads them at run time); :func:`prepare_classifier_stage` writes a
downloaded classifier checkpoint in the format of a trained one (:mod:`diffguard.model_io`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffguard.backends import BACKEND_FILE, FORMAT_VERSION, WEIGHTS_DIR, BackendError
from diffguard.model_io import fresh_dir, write_json

log = logging.getLogger("diffguard")

# Which checkpoint roles each converted source needs (config keys of `checkpoints:`).
REQUIRED_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "adm": ("model",),
    "ldm": ("model", "config"),
    "diffnb": ("model",),
}


# ------------------------------------------------------------------------------ configs


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise BackendError(f"{path}: cannot read YAML config ({err})") from err
    if not isinstance(doc, dict):
        raise BackendError(f"{path}: expected a YAML mapping, got {type(doc).__name__}")
    return doc


def ldm_config_from_yaml(doc: Mapping[str, Any], path: str | Path = "<yaml>") -> dict[str, Any]:
    """``unet_config``/``ddconfig``/``n_embed``/``embed_dim`` and schedule from a LDM yaml.

    ``doc`` is the latent-diffusion config (``model.params.unet_config.params``,
    ``model.params.first_stage_config.params``, ``model.params.cond_stage_config.params``).
    """
    try:
        params = doc["model"]["params"]
        unet = dict(params["unet_config"]["params"])
        first = params["first_stage_config"]["params"]
        ddconfig = dict(first["ddconfig"])
        n_embed, embed_dim = int(first["n_embed"]), int(first["embed_dim"])
    except (KeyError, TypeError) as err:
        raise BackendError(
            f"{path}: not a latent-diffusion config (expected model.params.unet_config.params "
            f"and model.params.first_stage_config.params.{{ddconfig,n_embed,embed_dim}}; "
            f"missing {err})"
        ) from err
    cond = params.get("cond_stage_config", {}).get("params", {})
    return {
        "unet_config": unet,
        "ddconfig": ddconfig,
        "n_embed": n_embed,
        "embed_dim": embed_dim,
        "n_classes": cond.get("n_classes"),
        "scale_factor": float(params.get("scale_factor", 1.0)),
        "schedule": {
            "beta_schedule": "scaled_linear",
            "beta_start": float(params.get("linear_start", 0.0015)),
            "beta_end": float(params.get("linear_end", 0.0195)),
            "num_train_steps": int(params.get("timesteps", 1000)),
        },
    }


def diffnb_config_from_yaml(doc: Mapping[str, Any], path: str | Path = "<yaml>") -> dict[str, Any]:
    """The DiffNB model config (``type``, ``ch``, ``num_classes``, ...) from its yml.

    Accepts DiffNB's layout (``Model:`` section holding ``image_size`` and ``num_classes``), the
    DDIM layout (``model:`` plus ``data.image_size``/``data.num_classes``) or a flat mapping.
    """
    section = doc.get("Model", doc.get("model", doc))
    if not isinstance(section, Mapping):
        raise BackendError(f"{path}: 'Model'/'model' is not a mapping")
    config = dict(section)
    data = doc.get("Dataset", doc.get("data", {})) or {}
    for key in ("image_size", "num_classes"):
        if key not in config and key in data:
            config[key] = data[key]
    from diffguard.convert.diffnb import REQUIRED_CONFIG_KEYS

    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise BackendError(f"{path}: DiffNB config lacks {missing} (looked in Model/model, data)")
    keep = {*REQUIRED_CONFIG_KEYS, "dropout", "resamp_with_conv"}
    return {k: v for k, v in config.items() if k in keep}


def _sha256(path: Path) -> str:
    from diffguard.io import sha256sum

    return sha256sum(path)


def _commit(tmp: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    """Move the prepared ``names`` from ``tmp`` into ``out_dir`` (``backend.json`` last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


def _check_checkpoints(source: str, checkpoint_paths: Mapping[str, Path]) -> dict[str, Path]:
    paths = {k: Path(v) for k, v in checkpoint_paths.items()}
    missing = [r for r in REQUIRED_CHECKPOINTS[source] if r not in paths]
    if missing:
        raise BackendError(
            f"diffusion model source {source!r} needs checkpoints "
            f"{list(REQUIRED_CHECKPOINTS[source])}; missing role(s) {missing}"
        )
    for role, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {role!r} of source {source!r} not found: {path}")
    return paths


# ------------------------------------------------------------------------------ preparation


def prepare_diffusion_model(
    source: str,
    checkpoint_paths: Mapping[str, Path],
    options: Mapping[str, Any],
    out_dir: Path,
) -> None:
    """Convert an original checkpoint once; write ``out_dir/weights`` and ``backend.json``.

    Args:
        source: ``adm``, ``ldm`` or ``diffnb`` (``train`` models are written by training).
        checkpoint_paths: role -> file. adm: ``model`` (``256x256_diffusion_uncond.pt``);
            ldm: ``model`` (``cin256-v2/model.ckpt``) and ``config`` (its yaml); diffnb:
            ``model`` (DDIM checkpoint) and optionally ``config`` (its yml).
        options: adm: the guided-diffusion flags (see
            :func:`diffguard.convert.adm.adm_unet_kwargs`) plus ``use_released_attention``
            (default true: guided-diffusion's attention arithmetic); ldm: none; diffnb:
            ``config`` (the model config) when no ``config`` checkpoint is given.
        out_dir: model directory; written atomically (``backend.json`` appears last).

    Raises:
        BackendError: unknown source, missing roles or options (named).
        FileNotFoundError: a checkpoint file is absent.
        ValueError/KeyError: the checkpoint does not match the config (tensor names listed).
    """
    if source not in REQUIRED_CHECKPOINTS:
        raise BackendError(
            f"prepare_diffusion_model: source {source!r} is not convertible "
            f"(expected one of {sorted(REQUIRED_CHECKPOINTS)}; 'train' models are trained)"
        )
    paths = _check_checkpoints(source, checkpoint_paths)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(out_dir)
    try:
        weights = tmp / WEIGHTS_DIR
        info: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "checkpoints": {
                role: {"file": p.name, "sha256": _sha256(p)} for role, p in sorted(paths.items())
            },
        }
        if source == "adm":
            info.update(_prepare_adm(paths, options, weights))
        elif source == "diffnb":
            info.update(_prepare_diffnb(paths, options, weights))
        else:
            info.update(_prepare_ldm(paths, options, weights))
        write_json(tmp / BACKEND_FILE, info)
        _commit(tmp, out_dir, (WEIGHTS_DIR, BACKEND_FILE))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("prepared %s diffusion model in %s", source, out_dir)


def prepare_diffusion_model_stage(
    source: str,
    checkpoint_paths: Mapping[str, Path],
    options: Mapping[str, Any],
    out_dir: Path,
    done: str | Path,
) -> None:
    """Rule ``prepare_diffusion_model``: :func:`prepare_diffusion_model`, then the ``done``
    marker naming the source and each converted weight file with its sha256.

    Raises:
        RuntimeError: The conversion wrote no ``weights/**/*.safetensors`` or no backend.json.
    """
    from diffguard.io import sha256sum, write_text

    out_dir = Path(out_dir)
    prepare_diffusion_model(source, checkpoint_paths, options, out_dir)
    # the LDM keeps its UNet and VQ in subfolders of weights/
    weights = sorted((out_dir / WEIGHTS_DIR).rglob("*.safetensors"))
    if not weights or not (out_dir / BACKEND_FILE).is_file():
        raise RuntimeError(
            f"{out_dir}: conversion wrote no weights/**/*.safetensors or backend.json"
        )
    lines = [f"{sha256sum(p)}  {p.relative_to(out_dir)}" for p in weights]
    write_text(done, f"converted from {source}\n" + "\n".join(lines) + "\n")


def _prepare_adm(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from diffguard.convert.adm import adm_unet_kwargs, load_adm_unet

    config = {k: v for k, v in options.items() if k != "use_released_attention"}
    if not config:
        raise BackendError("adm: options must hold the guided-diffusion flags (image_size, ...)")
    kwargs = adm_unet_kwargs(config)
    unet = load_adm_unet(paths["model"], config)
    unet.save_pretrained(weights, safe_serialization=True)
    return {
        "conditional": False,
        "null_label": None,
        "channels": int(kwargs["in_channels"]),
        "out_channels": int(kwargs["out_channels"]),
        "sample_size": int(kwargs["sample_size"]),
        "use_released_attention": bool(options.get("use_released_attention", True)),
        "options": dict(options),
        "schedule": _adm_schedule(options),
    }


def _adm_schedule(options: Mapping[str, Any]) -> dict[str, Any]:
    """guided-diffusion's ``noise_schedule``/``diffusion_steps`` flags (linear, 1000 default)."""
    name = options.get("noise_schedule", "linear")
    if name != "linear":
        raise BackendError(f"adm: options.noise_schedule {name!r} is not supported (only linear)")
    return {
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_steps": int(options.get("diffusion_steps", 1000)),
    }


def diffnb_schedule_from_yaml(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The DDPM schedule of a DiffNB (``Schedule:``) or DDIM (``diffusion:``) yml."""
    if isinstance(doc.get("Schedule"), Mapping):
        sched = doc["Schedule"]
        name, steps = sched.get("type", "linear"), sched.get("diffusion_step", 1000)
    else:
        sched = doc.get("diffusion", {}) or {}
        name, steps = (
            sched.get("beta_schedule", "linear"),
            sched.get("num_diffusion_timesteps", 1000),
        )
    if name != "linear":
        raise BackendError(f"DiffNB config: beta schedule {name!r} is not supported (only linear)")
    return {
        "beta_schedule": "linear",
        "beta_start": float(sched.get("beta_start", 1e-4)),
        "beta_end": float(sched.get("beta_end", 0.02)),
        "num_train_steps": int(steps),
    }


def _prepare_diffnb(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from diffguard.convert.diffnb import diffnb_null_label, load_diffnb_unet

    schedule = diffnb_schedule_from_yaml({})
    if "config" in paths:
        doc = _read_yaml(paths["config"])
        config = diffnb_config_from_yaml(doc, paths["config"])
        schedule = diffnb_schedule_from_yaml(doc)
    elif isinstance(options.get("config"), Mapping):
        config = dict(options["config"])
    else:
        raise BackendError(
            "diffnb: give checkpoints.config (the model yml) or options.config (the model config)"
        )
    unet = load_diffnb_unet(paths["model"], config)
    unet.save_pretrained(weights, safe_serialization=True)
    return {
        "conditional": True,
        "null_label": diffnb_null_label(config),
        "channels": int(config["in_channels"]),
        "out_channels": int(config["out_ch"]),
        "sample_size": int(config["image_size"]),
        "model_config": config,
        "options": dict(options),
        "schedule": schedule,
    }


def _prepare_ldm(paths: Mapping[str, Path], options: Mapping[str, Any], weights: Path) -> dict:
    from safetensors.torch import save_file

    from diffguard.convert.ldm import load_ldm

    cfg = ldm_config_from_yaml(_read_yaml(paths["config"]), paths["config"])
    parts = load_ldm(
        paths["model"], cfg["unet_config"], cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"]
    )
    n_rows = parts.class_embedding.num_embeddings
    if cfg["n_classes"] is not None and int(cfg["n_classes"]) != n_rows:
        raise BackendError(
            f"{paths['config']}: cond_stage_config n_classes={cfg['n_classes']} but "
            f"{paths['model']} holds {n_rows} class embeddings"
        )
    # The checkpoint's scale_factor buffer wins; the yaml's value applies when it has none.
    scale = parts.scale_factor if parts.scale_factor != 1.0 else cfg["scale_factor"]
    parts.unet.save_pretrained(weights / "unet", safe_serialization=True)
    parts.vq.save_pretrained(weights / "vq", safe_serialization=True)
    save_file(
        {"weight": parts.class_embedding.weight.detach().contiguous()},
        str(weights / "class_embedding.safetensors"),
    )
    ddconfig = cfg["ddconfig"]
    return {
        "conditional": True,
        "null_label": parts.null_class,
        "channels": int(ddconfig["in_channels"]),
        "sample_size": int(ddconfig.get("resolution", 256)),
        "latent_channels": int(cfg["unet_config"]["in_channels"]),
        "scale_factor": float(scale),
        "options": dict(options),
        "schedule": cfg["schedule"],
    }


# ------------------------------------------------------------------------------ classifiers


def prepare_classifier_stage(
    spec: Mapping[str, Any], checkpoint: Path | None, out_dir: Path
) -> None:
    """Rule ``prepare_classifier``: write ``out_dir/weights/model.safetensors`` + ``spec.json``
    from a downloaded checkpoint.

    The same files as training writes (:func:`diffguard.model_io.save_model`), so prediction
    caching and reconstruction load a downloaded classifier exactly like a trained one.

    Args:
        spec: classifier spec (``arch`` resnet50_tv / resnet18_32x32 / small_cnn, ``num_classes``,
            optional ``input_size`` and normaliser ``mean``/``std``); ``weights`` is ignored.
        checkpoint: the original file (torchvision ``.pth``, OpenOOD ``.ckpt`` with or without a
            ``module.``/``net.`` prefix, or a small_cnn state dict); None only for small_cnn
            (random initialisation is refused for the pretrained architectures).
        out_dir: the classifier directory; ``weights/`` is replaced atomically.
    """
    from diffguard.classifiers import build_classifier
    from diffguard.model_io import save_model

    spec = {k: v for k, v in spec.items() if k not in ("weights", "train")}
    arch = spec.get("arch")
    if checkpoint is None and arch != "small_cnn":
        raise BackendError(f"classifier arch {arch!r} needs a checkpoint (got none)")
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"classifier checkpoint not found: {checkpoint}")
    model = build_classifier({**spec, "weights": None if checkpoint is None else str(checkpoint)})
    model.spec = dict(spec)  # type: ignore[assignment]
    if checkpoint is not None:
        model.spec["source_sha256"] = _sha256(checkpoint)  # type: ignore[index]
        model.spec["source_file"] = checkpoint.name  # type: ignore[index]
    save_model(model, Path(out_dir) / WEIGHTS_DIR)
    log.info("prepared classifier %s from %s in %s", arch, checkpoint, out_dir)
