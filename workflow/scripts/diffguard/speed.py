"""Speed benchmark: the released code's execution of GDM / CFG against ours, same run and inputs.

For each method, compute dtype and loader batch size, the images are split into loader batches;
each batch is run through the released-execution port (:mod:`diffguard.released_port`) and then
through our implementation, alternately, so that both see the same machine load. Timed: the
reconstruction call (inversion, CAM mask for CFG, guided regeneration), with the device
synchronised; not timed: image loading, the classifier's prediction of the guidance labels (the
same for both) and the scores. Counted per image: UNet rows evaluated (NFE), classifier rows
forward and backward (each crop is a row). Memory: the peak over the run's calls above the
memory in use when each call starts (:class:`PeakMemory` says how it was measured).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import re
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffguard import cfg, gdm, io
from diffguard import released_port as rp
from diffguard.speed_tables import speed_latex, speed_markdown

log = logging.getLogger("diffguard")

SPEED_COLUMNS = (
    "method",
    "implementation",
    "batch_size",
    "device",
    "dtype",
    "images",
    "repeats",
    "seconds",
    "cpu_seconds",
    "images_per_s",
    "nfe_per_image",
    "classifier_fwd_per_image",
    "classifier_bwd_per_image",
    "peak_mem_mb",
    "max_abs_score_diff",
    "max_abs_recon_diff",
    "speedup_vs_port",
    "cpu_speedup_vs_port",
    "nfe_reduction_vs_port",
    "threads",
    "mem_method",
)
"""Columns of the benchmark table (one row per method x implementation x batch size x dtype)."""

IMPLEMENTATIONS = ("released_port", "ours")
VARIANTS = ("channels_last", "compile")
"""Optional variants of our implementation (``speed.variants``), each timed as ``ours+<name>``:
``channels_last`` (NHWC memory format for the UNet), ``compile`` (``torch.compile`` of the UNet,
compilation excluded by the warm-up). Measured, not assumed: keep one only where it wins."""
PAPER_IMAGES_PER_S = {"GDM": 0.05, "CFG": 0.53}
"""Paper, Sec. 5: images/s per V100 for GDM (ADM-256, 60 steps) and LDM (25 steps)."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_KIB = 1024


# -------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS so that the next RSS baseline is honest."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a code block above the memory in use when it starts, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    allocated memory at the start. CPU (Linux): the resident-set high-water mark ``VmHWM``, reset
    by writing 5 to ``/proc/self/clear_refs``, minus ``VmRSS`` at the start. Elsewhere:
    ``getrusage`` ``ru_maxrss`` growth, which cannot be reset and so is only a lower bound.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated - allocated at start"
        elif self._can_reset_hwm():
            self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs) - RSS at start"
        else:
            self.method = "getrusage ru_maxrss growth (lower bound)"
        self._base = 0

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return _proc_status_kib("VmHWM") is not None and _proc_status_kib("VmRSS") is not None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        if self.method.startswith("peak RSS"):
            Path("/proc/self/clear_refs").write_text("5")
            self._base = (_proc_status_kib("VmRSS") or 0) * _KIB
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("peak RSS"):
            peak = (_proc_status_kib("VmHWM") or 0) * _KIB
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB
        return max(peak - self._base, 0) / 2**20


# ------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_dtypes(spec: str | Sequence[str], device: torch.device) -> list[torch.dtype]:
    """Compute dtypes to benchmark: ``auto`` = float32, plus bf16 (else fp16) on CUDA."""
    if isinstance(spec, str) and spec == "auto":
        if device.type != "cuda":
            return [torch.float32]
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return [torch.float32, half]
    names = [spec] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in _DTYPES]
    if unknown:
        raise ValueError(f"speed dtypes: unknown {unknown}; expected 'auto' or some of {_DTYPES}")
    return [_DTYPES[n] for n in names]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_backend(model: Any) -> bool:
    """A :class:`diffguard.backends.DiffusionBackend` (else a bare diffusers UNet)."""
    return hasattr(model, "eps") and hasattr(model, "sample_size")


def _unet_runs_in(unet: Any, dtype: torch.dtype, x: torch.Tensor, conditional: bool) -> bool:
    """Whether the UNet gives a finite output in ``dtype`` on ``x``'s device."""
    try:
        with torch.no_grad():
            t = torch.full((1,), 500, dtype=torch.long, device=x.device)
            labels = torch.zeros(1, dtype=torch.long, device=x.device)
            if _is_backend(unet):
                from diffguard.backends import resize_images

                z = unet.encode(resize_images(x[:1], unet.sample_size), quantize=False)
                out = unet.eps(z, t, labels if unet.conditional else None)
                return bool(torch.isfinite(out).all())
            kwargs = {"class_labels": labels}
            out = unet(x[:1].to(dtype), t, **(kwargs if conditional else {})).sample
        return bool(torch.isfinite(out).all())
    except (RuntimeError, TypeError) as err:
        log.warning("UNet does not run in %s: %s", dtype, err)
        return False


def _uncond_eps(unet: Any, channels: int, dtype: torch.dtype) -> gdm.EpsModel:
    if _is_backend(unet):
        if unet.conditional:  # a conditional model's unconditional branch: the null label
            return lambda x, t: unet.eps(
                x, t, torch.full((x.shape[0],), unet.null_label, device=x.device)
            )
        return unet.eps

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x.to(dtype), t).sample[:, :channels].to(x.dtype)

    return eps


def _cond_eps(unet: Any, channels: int, dtype: torch.dtype) -> cfg.CondEpsModel:
    if _is_backend(unet):
        return unet.eps

    def eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return unet(x.to(dtype), t, class_labels=y).sample[:, :channels].to(x.dtype)

    return eps


def variant_unet(unet: Any, variant: str) -> Any:
    """``unet`` prepared for a speed variant (a callable with the UNet's signature).

    For a backend, the variant applies to its network on a copy of the backend.
    """
    if _is_backend(unet):
        backend = copy.deepcopy(unet)
        holder = backend.parts if hasattr(backend, "parts") else backend
        if variant == "channels_last":
            holder.unet = holder.unet.to(memory_format=torch.channels_last)
        elif variant == "compile":
            holder.unet = torch.compile(holder.unet)
        else:
            raise ValueError(
                f"speed.variants: unknown variant {variant!r}; expected one of {VARIANTS}"
            )
        return backend
    if variant == "channels_last":
        nhwc = copy.deepcopy(unet).to(memory_format=torch.channels_last)

        def call(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
            return nhwc(x.contiguous(memory_format=torch.channels_last), t, **kwargs)

        return call
    if variant == "compile":
        return torch.compile(unet)
    raise ValueError(f"speed.variants: unknown variant {variant!r}; expected one of {VARIANTS}")


@contextlib.contextmanager
def strict_float32() -> Any:
    """float32 that is float32 on CUDA: TF32 matmuls and convolutions (cuDNN's default) off.

    TF32 rounds products to 10 mantissa bits; guided DDIM trajectories amplify that into score
    differences of ~1e-3 between two batchings of the same float32 computation.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


Runner = Callable[[torch.Tensor, torch.Tensor, gdm.CallCounter], tuple[torch.Tensor, torch.Tensor]]
"""``run(x, labels, counter) -> (reference, recon)`` for one loader batch (x in [-1, 1])."""


def method_runners(
    method: str,
    unet: Any,
    settings: gdm.GdmSettings | cfg.CfgSettings,
    classifier: torch.nn.Module,
    channels: int,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    denoise_batch_size: int = 5,
) -> dict[str, Runner]:
    """The released-execution and our runner of ``method`` (GDM or CFG) on one loader batch.

    ``unet`` is a diffusers UNet or a :class:`~diffguard.backends.DiffusionBackend`; with a
    backend, as in the reconstruction jobs, inputs are resized to the model's sample size and
    back, the LDM runs in its latent space and the null label is the model's own.
    """
    if not _is_backend(unet):
        return _unet_runners(
            method, unet, settings, classifier, channels, num_classes, dtype, denoise_batch_size
        )
    if method == "CFG":
        return _backend_cfg_runners(unet, settings, classifier)
    if unet.latent:
        raise ValueError(f"speed: GDM needs a pixel-space model, got a latent {unet.source} one")
    # _uncond_eps reads a backend's eps; only the resizing is added around the runners.
    runners = _unet_runners(
        method, unet, settings, classifier, channels, num_classes, dtype, denoise_batch_size
    )
    twin = isinstance(settings, gdm.GdmSettings) and settings.uncond_aux
    return {name: _resized(run, unet.sample_size, not twin) for name, run in runners.items()}


def _resized(run: Runner, size: int, input_reference: bool) -> Runner:
    """``run`` at the model's ``size``, outputs back at the loader size; with
    ``input_reference`` (no unguided twin) the reference is the loader-size input itself."""
    from diffguard.backends import resize_images

    def call(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
        ref, recon = run(resize_images(x, size), y, c)
        ref = x.cpu() if input_reference else resize_images(ref, x.shape[-1])
        return ref, resize_images(recon, x.shape[-1])

    return call


def _unet_runners(
    method: str,
    unet: Any,
    settings: gdm.GdmSettings | cfg.CfgSettings,
    classifier: torch.nn.Module,
    channels: int,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    denoise_batch_size: int = 5,
) -> dict[str, Runner]:
    """The released-execution and our runner of ``method`` (GDM or CFG) on one loader batch.

    The score reference is the unguided twin with ``uncond_aux`` and the input otherwise, as in
    the reconstruction jobs.
    """
    if method == "GDM":
        if not isinstance(settings, gdm.GdmSettings):
            raise TypeError(f"GDM needs GdmSettings, got {type(settings).__name__}")
        eps = _uncond_eps(unet, channels, dtype)
        s = settings

        def gdm_port(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
            res = rp.gdm_reconstruct_released(eps, classifier, x, y, s, {}, c, denoise_batch_size)
            ref = res.recon_uncond if res.recon_uncond is not None else x.cpu()
            return ref, res.recon

        def gdm_ours(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
            res = gdm.reconstruct(eps, classifier, x, y, s, {}, c)
            ref = res.recon_uncond if res.recon_uncond is not None else x.cpu()
            return ref, res.recon

        return {"released_port": gdm_port, "ours": gdm_ours}
    if method == "CFG":
        if not isinstance(settings, cfg.CfgSettings):
            raise TypeError(f"CFG needs CfgSettings, got {type(settings).__name__}")
        eps_c = _cond_eps(unet, channels, dtype)
        c_s = settings

        def cfg_port(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
            def mask_fn(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
                return counted_cam(classifier, xs, ys, c_s.cam_cut, c)

            res = rp.cfg_reconstruct_released(eps_c, x, y, num_classes, c_s, mask_fn, counter=c)
            ref = res.recon_uncond if res.recon_uncond is not None else x.cpu()
            return ref, res.recon

        def cfg_ours(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
            mask = counted_cam(classifier, x, y, c_s.cam_cut, c) if c_s.use_cam else None
            res = cfg.reconstruct(eps_c, x, y, num_classes, c_s, mask, counter=c)
            ref = res.recon_uncond if res.recon_uncond is not None else x.cpu()
            return ref, res.recon

        return {"released_port": cfg_port, "ours": cfg_ours}
    raise ValueError(f"unknown method {method!r}; expected GDM or CFG")


def counted_cam(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cut: float,
    counter: gdm.CallCounter,
) -> torch.Tensor:
    """Grad-CAM mask of ``x`` in [-1, 1] for labels ``y``; one classifier fwd + bwd per image."""
    from diffguard.cam import cam_mask

    counter.classifier_forward_rows += len(x)
    counter.classifier_backward_rows += len(x)
    layer = classifier.cam_layer  # type: ignore[attr-defined]
    return cam_mask(classifier, layer, (x + 1) / 2, y, cut)


def _backend_cfg_runners(
    backend: Any, settings: gdm.GdmSettings | cfg.CfgSettings, classifier: torch.nn.Module
) -> dict[str, Runner]:
    """CFG runners on a backend (pixel or latent), at the model's sample size."""
    from diffguard.backends import resize_images

    if not isinstance(settings, cfg.CfgSettings):
        raise TypeError(f"CFG needs CfgSettings, got {type(settings).__name__}")
    c_s = settings
    null = int(backend.null_label)

    def encode(v: torch.Tensor) -> torch.Tensor:
        return backend.encode(v, quantize=c_s.encode_quantize)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return backend.decode(z, quantize=c_s.decode_quantize)

    def back(res: cfg.CfgResult, x: torch.Tensor) -> tuple[Any, Any]:
        size = x.shape[-1]
        ref = x.cpu() if res.recon_uncond is None else resize_images(res.recon_uncond, size)
        return ref, resize_images(res.recon, size)

    def cfg_port(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
        res = rp.cfg_reconstruct_released(
            backend.eps,
            resize_images(x, backend.sample_size),
            y,
            null,
            c_s,
            # Grad-CAM on the classifier's input (the loader size), as in the reconstruction
            # jobs; the port's split is the whole batch here.
            lambda xs, ys: counted_cam(classifier, x, ys, c_s.cam_cut, c),
            encode,
            decode,
            c,
        )
        return back(res, x)

    def cfg_ours(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
        mask = counted_cam(classifier, x, y, c_s.cam_cut, c) if c_s.use_cam else None
        x_m = resize_images(x, backend.sample_size)
        return back(cfg.reconstruct(backend.eps, x_m, y, null, c_s, mask, encode, decode, c), x)

    return {"released_port": cfg_port, "ours": cfg_ours}


# ----------------------------------------------------------------------------------- benchmark
def run_speed_benchmark(
    images: torch.Tensor | Mapping[str, torch.Tensor],
    classifier: torch.nn.Module,
    methods: Mapping[str, tuple[Any, gdm.GdmSettings | cfg.CfgSettings]],
    num_classes: int,
    batch_sizes: Sequence[int] = (1, 8, 32),
    device: str | torch.device = "cpu",
    dtypes: str | Sequence[str] = "auto",
    distances: Sequence[str] = ("ssim", "l2", "logits"),
    denoise_batch_size: int = 5,
    torch_hub_dir: str | Path | None = None,
    warmup: bool = True,
    repeats: int = 1,
    variants: Sequence[str] = (),
) -> pd.DataFrame:
    """Time the released execution and ours on the same images, weights and labels.

    Args:
        images: N x C x H x W in [0, 1], or method -> its own images (each experiment loads
            them at its own size, as its reconstruct jobs do).
        classifier: The classifier under protection (float32; it guides GDM, masks CFG, scores).
        methods: ``{"GDM" | "CFG": (diffusers UNet, settings)}``.
        num_classes: Classifier classes; also the null label of the conditional UNet.
        batch_sizes: Loader batch sizes to measure.
        device: Where the models run.
        dtypes: UNet compute dtypes (``auto``: float32 on CPU; float32 and bf16/fp16 on CUDA).
        distances: Scores compared between the two implementations.
        denoise_batch_size: The released denoising batch when adaptive early stop is off.
        torch_hub_dir: Weights folder for DISTS/LPIPS, if those distances are asked for.
        warmup: Run both implementations once on two images before measuring.
        repeats: Timed passes over all images; the fastest pass counts (best-of-R, so that a
            busy machine slows neither implementation more than the other).

    Returns:
        One row per method x implementation x batch size x dtype, columns :data:`SPEED_COLUMNS`.
    """
    from diffguard.distances import SimilarityScorer

    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"speed.repeats must be >= 1, got {repeats}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"speed.variants: unknown {unknown}; expected a subset of {VARIANTS}")
    per_method = dict(images) if isinstance(images, Mapping) else dict.fromkeys(methods, images)
    missing = [m for m in methods if m not in per_method]
    if missing:
        raise KeyError(f"speed: no images for method(s) {missing}")
    for method, imgs in per_method.items():
        if imgs.ndim != 4 or imgs.min() < 0 or imgs.max() > 1:
            raise ValueError(
                f"{method} images must be N x C x H x W in [0, 1], got shape {tuple(imgs.shape)}"
            )
    classifier = classifier.to(device).eval()
    scorer = SimilarityScorer(list(distances), classifier, torch_hub_dir, device)
    memory = PeakMemory(device)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    rows: list[dict[str, Any]] = []
    with strict_float32():
        for method, (unet_in, settings) in methods.items():
            x_all = (per_method[method].to(device) * 2 - 1).float()
            with torch.no_grad():
                labels_all = classifier(per_method[method].to(device).float()).argmax(1)
            n = x_all.shape[0]
            conditional = method == "CFG"
            for dtype in resolve_dtypes(dtypes, device):
                # diffusers warns on any .to(dtype=...); a float32 run keeps the loaded weights
                unet = unet_in.to(device) if dtype == torch.float32 else copy.deepcopy(unet_in)
                if dtype != torch.float32:
                    unet = unet.to(device=device, dtype=dtype)
                unet.eval()
                if dtype != torch.float32 and not _unet_runs_in(unet, dtype, x_all, conditional):
                    log.warning("%s: skipping %s (the model does not run in it)", method, dtype)
                    continue
                runners = method_runners(
                    method,
                    unet,
                    settings,
                    classifier,
                    x_all.shape[1],
                    num_classes,
                    dtype,
                    denoise_batch_size,
                )
                for variant in variants:
                    runners[f"ours+{variant}"] = method_runners(
                        method,
                        variant_unet(unet, variant),
                        settings,
                        classifier,
                        x_all.shape[1],
                        num_classes,
                        dtype,
                        denoise_batch_size,
                    )["ours"]
                if warmup:
                    for run in runners.values():
                        run(x_all[:2], labels_all[:2], gdm.CallCounter())
                for batch_size in batch_sizes:
                    rows += _measure(
                        method,
                        runners,
                        x_all,
                        labels_all,
                        int(batch_size),
                        scorer,
                        memory,
                        device,
                        dtype_name(dtype),
                        threads,
                        repeats,
                    )
                    port, ours = rows[-len(runners)], rows[-len(runners) + 1]
                    log.info(
                        "%s %s batch %d: port %.3f img/s %.1f NFE/img, ours %.3f img/s"
                        " %.1f NFE/img, CPU-time speed-up %.2fx, max |score diff| %.2e"
                        " (%d images, best of %d)",
                        method,
                        dtype_name(dtype),
                        batch_size,
                        port["images_per_s"],
                        port["nfe_per_image"],
                        ours["images_per_s"],
                        ours["nfe_per_image"],
                        ours["cpu_speedup_vs_port"],
                        ours["max_abs_score_diff"],
                        n,
                        repeats,
                    )
    frame = pd.DataFrame(rows, columns=list(SPEED_COLUMNS))
    return frame


def _measure(
    method: str,
    runners: Mapping[str, Runner],
    x_all: torch.Tensor,
    labels_all: torch.Tensor,
    batch_size: int,
    scorer: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    memory: PeakMemory,
    device: torch.device,
    dtype: str,
    threads: int,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Both implementations over all loader batches, alternating per batch, ``repeats`` times.

    Wall and CPU seconds are each the fastest pass; counts, memory and outputs come from every
    pass (counts are per pass, outputs must agree across passes as both are deterministic).
    """
    n = x_all.shape[0]
    names = list(runners)  # released_port, ours, then any variants of ours
    seconds = dict.fromkeys(names, float("inf"))
    cpu_seconds = dict.fromkeys(names, float("inf"))
    peak = dict.fromkeys(names, 0.0)
    counters = {impl: gdm.CallCounter() for impl in names}
    outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
    for repeat in range(repeats):
        pass_wall = dict.fromkeys(names, 0.0)
        pass_cpu = dict.fromkeys(names, 0.0)
        pass_counters = {impl: gdm.CallCounter() for impl in names}
        pass_outputs: dict[str, dict[str, list[torch.Tensor]]] = {
            impl: {"ref": [], "recon": []} for impl in names
        }
        for k, first in enumerate(range(0, n, batch_size)):
            x = x_all[first : first + batch_size]
            y = labels_all[first : first + batch_size]
            # alternate who goes first, so that neither always pays for new shapes or cold caches
            for impl in names if (k + repeat) % 2 == 0 else names[::-1]:
                memory.start()
                _sync(device)
                cpu_start = time.process_time()
                start = time.perf_counter()
                ref, recon = runners[impl](x, y, pass_counters[impl])
                _sync(device)
                pass_wall[impl] += time.perf_counter() - start
                pass_cpu[impl] += time.process_time() - cpu_start
                peak[impl] = max(peak[impl], memory.stop())
                pass_outputs[impl]["ref"].append(ref.cpu())
                pass_outputs[impl]["recon"].append(recon.cpu())
        for impl in names:
            seconds[impl] = min(seconds[impl], pass_wall[impl])
            cpu_seconds[impl] = min(cpu_seconds[impl], pass_cpu[impl])
            if repeat == 0:
                counters[impl] = pass_counters[impl]
                outputs[impl] = pass_outputs[impl]
            elif pass_counters[impl].unet_rows != counters[impl].unet_rows:
                raise RuntimeError(
                    f"{method} {impl}: UNet rows differ between passes "
                    f"({counters[impl].unet_rows} vs {pass_counters[impl].unet_rows})"
                )
    scores: dict[str, dict[str, torch.Tensor]] = {}
    recon_all: dict[str, torch.Tensor] = {}
    for impl in names:
        ref = torch.cat(outputs[impl]["ref"]).to(device)
        recon_all[impl] = torch.cat(outputs[impl]["recon"])
        scores[impl] = scorer(ref, recon_all[impl].to(device))
    rows = []
    port_rate = n / seconds["released_port"]
    port_nfe = counters["released_port"].unet_rows / n
    for impl in names:
        counter = counters[impl]
        score_diff = max(
            float((scores[impl][k] - scores["released_port"][k]).abs().max()) for k in scores[impl]
        )
        recon_diff = float((recon_all[impl] - recon_all["released_port"]).abs().max())
        rate = n / seconds[impl]
        rows.append(
            {
                "method": method,
                "implementation": impl,
                "batch_size": batch_size,
                "device": device.type,
                "dtype": dtype,
                "images": n,
                "repeats": repeats,
                "seconds": seconds[impl],
                "cpu_seconds": cpu_seconds[impl],
                "images_per_s": rate,
                "nfe_per_image": counter.unet_rows / n,
                "classifier_fwd_per_image": counter.classifier_forward_rows / n,
                "classifier_bwd_per_image": counter.classifier_backward_rows / n,
                "peak_mem_mb": peak[impl],
                "max_abs_score_diff": score_diff,
                "max_abs_recon_diff": recon_diff,
                "speedup_vs_port": rate / port_rate,
                "cpu_speedup_vs_port": cpu_seconds["released_port"] / cpu_seconds[impl],
                "nfe_reduction_vs_port": 1 - (counter.unet_rows / n) / port_nfe,
                "threads": threads,
                "mem_method": memory.method,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- stage
def speed_stage(
    *,
    classifier_weights: str | Path,
    experiments: Sequence[dict[str, Any]],
    model_dirs: Sequence[str | Path],
    imglist: str | Path,
    benchmark_json: str | Path,
    benchmark: dict[str, Any],
    num_images: int,
    batch_sizes: Sequence[int],
    device_name: str,
    dtypes: str | Sequence[str],
    distances: Sequence[str],
    run: str,
    out_csv: str | Path,
    out_md: str | Path,
    out_tex: str | Path,
    seed: int = 0,
    denoise_batch_size: int = 5,
    torch_hub_dir: str | None = None,
    repeats: int = 1,
    variants: Sequence[str] = (),
) -> pd.DataFrame:
    """Rule ``speed_benchmark``: load the run's models and images, benchmark, write the tables."""
    from diffguard.backends import check_schedule
    from diffguard.config import method_settings
    from diffguard.data import read_imglist
    from diffguard.runtime import (
        image_root,
        load_diffusion_model,
        load_experiment_images,
        load_trained_classifier,
        resolve_device,
    )

    torch.manual_seed(seed)
    device = resolve_device(device_name)
    records = read_imglist(imglist)
    if num_images < 1:
        raise ValueError(f"speed.images must be >= 1, got {num_images}")
    if num_images > len(records):
        log.warning("%s holds %d images; benchmarking all of them", imglist, len(records))
    records = records[:num_images]
    root = image_root(benchmark_json)
    classifier = load_trained_classifier(classifier_weights, device)
    clf_spec = getattr(classifier, "spec", None)
    methods: dict[str, tuple[Any, gdm.GdmSettings | cfg.CfgSettings]] = {}
    images: dict[str, torch.Tensor] = {}
    labels = {"gdm": "GDM", "cfg": "CFG"}
    for experiment, model_dir in zip(experiments, model_dirs, strict=True):
        label = labels[experiment["method"]]
        if label in methods:
            raise ValueError(f"speed: two experiments of method {label}; give one of each")
        backend = load_diffusion_model(model_dir, torch.device("cpu"))
        settings = method_settings(experiment, seed)
        check_schedule(backend, settings, f"experiments.{experiment['name']}.{label.lower()}")
        # the experiment's own resolution, exactly as its reconstruct jobs load images
        images[label] = load_experiment_images(records, root, experiment, benchmark, clf_spec)
        # A trained pixel model at the benchmark's size is timed as the bare UNet (as before);
        # converted models go through their backend (resizing, latent space, null label).
        same_size = backend.sample_size == images[label].shape[-1]
        model = backend.unet if backend.source == "train" and same_size else backend
        methods[label] = (model, settings)
        log.info(
            "%s: experiment %s, model %s, images %d px",
            label,
            experiment["name"],
            model_dir,
            images[label].shape[-1],
        )
    frame = run_speed_benchmark(
        images,
        classifier,
        methods,
        int(benchmark["num_classes"]),
        batch_sizes=[int(b) for b in batch_sizes],
        device=device,
        dtypes=dtypes,
        distances=distances,
        denoise_batch_size=denoise_batch_size,
        torch_hub_dir=torch_hub_dir,
        repeats=repeats,
        variants=variants,
    )
    io.write_csv(out_csv, frame)
    io.write_text(out_md, speed_markdown(frame, run))
    io.write_text(out_tex, speed_latex(frame, run))
    log.info("wrote %s, %s and %s", out_csv, out_md, out_tex)
    return frame
