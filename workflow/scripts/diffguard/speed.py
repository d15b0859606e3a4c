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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffguard import cfg, gdm, io
from diffguard import released_port as rp
from diffguard.method_api import MethodBatch, MethodJob, MethodOutput
from diffguard.methods import get_method, method_by_label, start_job
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


def _has_class_embedding(unet: Any) -> bool:
    """Whether a bare UNet is class-conditional (a GDM run on it then passes the null label)."""
    config = getattr(unet, "config", None)
    return getattr(config, "num_class_embeds", None) is not None


@dataclass
class BareUnet:
    """A bare diffusers UNet (or a variant's callable) with the backend interface the methods
    use: pixel space, any size, the UNet run in ``dtype``, its first ``channels`` outputs."""

    unet: Any
    channels: int
    dtype: torch.dtype
    conditional: bool
    null_label: int | None
    source: str = "bare UNet"
    latent: bool = False
    sample_size: int | None = None  # any: the loader's size

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if y is None else {"class_labels": y}
        return self.unet(x.to(self.dtype), t, **kwargs).sample[:, : self.channels].to(x.dtype)

    def encode(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return z


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
    """The released-execution and our runner of ``method`` (a registry label) on one batch.

    Ours is the method's batch entry point (:mod:`diffguard.methods`), the port its
    :data:`PORTS` entry, both on the same job: ``unet`` is a
    :class:`~diffguard.backends.DiffusionBackend` (inputs resized to the model's sample size
    and back, the LDM in its latent space, the model's null label) or a bare diffusers UNet
    (null label ``num_classes``). The score reference is the method's, as in the
    reconstruction jobs.
    """
    spec = method_by_label(method)
    if spec.name not in PORTS:
        raise ValueError(f"speed: method {method} has no released-execution port")
    model = (
        unet
        if _is_backend(unet)
        else BareUnet(
            unet, channels, dtype, spec.conditional or _has_class_embedding(unet), num_classes
        )
    )
    spec.module().check_model(model, "speed")
    job = start_job(spec.name, model, classifier, settings, where="speed")

    def port(job: MethodJob, batch: MethodBatch, counter: Any) -> MethodOutput:
        return PORTS[spec.name](job, batch, counter, denoise_batch_size)

    return {"released_port": _runner(job, port), "ours": _runner(job, job.entry)}


def _runner(job: MethodJob, entry: Callable[..., MethodOutput]) -> Runner:
    def run(x: torch.Tensor, y: torch.Tensor, c: gdm.CallCounter) -> tuple[Any, Any]:
        out = entry(job, MethodBatch(x, y), c)
        return out.reference, out.recon

    return run


def _gdm_port(
    job: MethodJob, batch: MethodBatch, counter: Any, denoise_batch_size: int
) -> MethodOutput:
    """GDM as the released code executes it (:func:`.released_port.gdm_reconstruct_released`)."""
    return gdm.run_with(rp.gdm_reconstruct_released, job, batch, counter, denoise_batch_size)


def _cfg_port(
    job: MethodJob, batch: MethodBatch, counter: Any, denoise_batch_size: int
) -> MethodOutput:
    """CFG as the released code executes it (:func:`.released_port.cfg_reconstruct_released`).

    Its split is the whole batch: Grad-CAM runs on the batch's own images, as in ours.
    """

    def mask_fn(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        s = job.settings
        return cfg.grad_cam_mask(job.classifier, batch.images01(), ys, s.cam_cut, counter)

    return cfg.run_with(rp.cfg_reconstruct_released, job, batch, counter, mask_fn)


PORTS: dict[str, Callable[[MethodJob, MethodBatch, Any, int], MethodOutput]] = {
    "gdm": _gdm_port,
    "cfg": _cfg_port,
}
"""Registered method -> its released-execution port on one batch (the speed baseline)."""


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
    per_method = _checked_inputs(images, methods, repeats, variants)
    classifier = classifier.to(device).eval()
    bench = _Bench(
        classifier=classifier,
        num_classes=num_classes,
        scorer=SimilarityScorer(list(distances), classifier, torch_hub_dir, device),
        memory=PeakMemory(device),
        device=device,
        threads=torch.get_num_threads() if device.type == "cpu" else 0,
        repeats=repeats,
        denoise_batch_size=denoise_batch_size,
    )
    rows: list[dict[str, Any]] = []
    with strict_float32():
        for method, (unet_in, settings) in methods.items():
            x_all = (per_method[method].to(device) * 2 - 1).float()
            with torch.no_grad():
                labels_all = classifier(per_method[method].to(device).float()).argmax(1)
            for dtype in resolve_dtypes(dtypes, device):
                runners = _dtype_runners(bench, method, unet_in, settings, x_all, dtype, variants)
                if runners is None:
                    continue
                if warmup:
                    for run in runners.values():
                        run(x_all[:2], labels_all[:2], gdm.CallCounter())
                for batch_size in batch_sizes:
                    measured = _measure(
                        bench,
                        method,
                        runners,
                        x_all,
                        labels_all,
                        int(batch_size),
                        dtype_name(dtype),
                    )
                    _log_rows(measured, method, dtype, int(batch_size), repeats)
                    rows += measured
    frame = pd.DataFrame(rows, columns=list(SPEED_COLUMNS))
    return frame


@dataclass
class _Bench:
    """What every measurement of one benchmark run shares."""

    classifier: torch.nn.Module
    num_classes: int
    scorer: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
    memory: PeakMemory
    device: torch.device
    threads: int
    repeats: int
    denoise_batch_size: int


def _checked_inputs(
    images: torch.Tensor | Mapping[str, torch.Tensor],
    methods: Mapping[str, Any],
    repeats: int,
    variants: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Method -> its images in [0, 1], after checking the benchmark's arguments."""
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
    return per_method


def _dtype_runners(
    bench: _Bench,
    method: str,
    unet_in: Any,
    settings: Any,
    x_all: torch.Tensor,
    dtype: torch.dtype,
    variants: Sequence[str],
) -> dict[str, Runner] | None:
    """Port, ours and ours per variant with the model in ``dtype`` (None: it does not run)."""
    device = bench.device
    # diffusers warns on any .to(dtype=...); a float32 run keeps the loaded weights
    unet = unet_in.to(device) if dtype == torch.float32 else copy.deepcopy(unet_in)
    if dtype != torch.float32:
        unet = unet.to(device=device, dtype=dtype)
    unet.eval()
    conditional = method_by_label(method).conditional
    if dtype != torch.float32 and not _unet_runs_in(unet, dtype, x_all, conditional):
        log.warning("%s: skipping %s (the model does not run in it)", method, dtype)
        return None

    def runners(model: Any) -> dict[str, Runner]:
        return method_runners(
            method,
            model,
            settings,
            bench.classifier,
            x_all.shape[1],
            bench.num_classes,
            dtype,
            bench.denoise_batch_size,
        )

    out = runners(unet)
    for variant in variants:
        out[f"ours+{variant}"] = runners(variant_unet(unet, variant))["ours"]
    return out


def _log_rows(
    rows: list[dict[str, Any]], method: str, dtype: torch.dtype, batch_size: int, repeats: int
) -> None:
    port, ours = rows[0], rows[1]
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
        port["images"],
        repeats,
    )


@dataclass
class _Passes:
    """Best-of-``repeats`` timings, counts, peak memory and outputs per implementation."""

    seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    peak: dict[str, float]
    counters: dict[str, gdm.CallCounter]
    outputs: dict[str, dict[str, list[torch.Tensor]]]


def _timed_passes(
    bench: _Bench,
    method: str,
    runners: Mapping[str, Runner],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> _Passes:
    """Both implementations over all loader batches, alternating per batch, ``repeats`` times.

    Wall and CPU seconds are each the fastest pass; counts, memory and outputs come from every
    pass (counts are per pass, outputs must agree across passes as both are deterministic).
    """
    names = list(runners)  # released_port, ours, then any variants of ours
    inf = float("inf")
    best = _Passes(dict.fromkeys(names, inf), dict.fromkeys(names, inf), dict.fromkeys(names, 0.0),
                   {impl: gdm.CallCounter() for impl in names}, {})  # fmt: skip
    for repeat in range(bench.repeats):
        wall, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        counters = {impl: gdm.CallCounter() for impl in names}
        outputs: dict[str, dict[str, list[torch.Tensor]]] = {
            impl: {"ref": [], "recon": []} for impl in names
        }
        for k, (x, y) in enumerate(batches):
            # alternate who goes first, so that neither always pays for new shapes or cold caches
            for impl in names if (k + repeat) % 2 == 0 else names[::-1]:
                bench.memory.start()
                _sync(bench.device)
                cpu_start = time.process_time()
                start = time.perf_counter()
                ref, recon = runners[impl](x, y, counters[impl])
                _sync(bench.device)
                wall[impl] += time.perf_counter() - start
                cpu[impl] += time.process_time() - cpu_start
                best.peak[impl] = max(best.peak[impl], bench.memory.stop())
                outputs[impl]["ref"].append(ref.cpu())
                outputs[impl]["recon"].append(recon.cpu())
        for impl in names:
            best.seconds[impl] = min(best.seconds[impl], wall[impl])
            best.cpu_seconds[impl] = min(best.cpu_seconds[impl], cpu[impl])
            if repeat == 0:
                best.counters[impl] = counters[impl]
                best.outputs[impl] = outputs[impl]
            elif counters[impl].unet_rows != best.counters[impl].unet_rows:
                raise RuntimeError(
                    f"{method} {impl}: UNet rows differ between passes "
                    f"({best.counters[impl].unet_rows} vs {counters[impl].unet_rows})"
                )
    return best


def _measure(
    bench: _Bench,
    method: str,
    runners: Mapping[str, Runner],
    x_all: torch.Tensor,
    labels_all: torch.Tensor,
    batch_size: int,
    dtype: str,
) -> list[dict[str, Any]]:
    """One table row per implementation: :func:`_timed_passes`, scores against the port's."""
    n = x_all.shape[0]
    names = list(runners)
    firsts = range(0, n, batch_size)
    batches = [(x_all[f : f + batch_size], labels_all[f : f + batch_size]) for f in firsts]
    p = _timed_passes(bench, method, runners, batches)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    recon_all: dict[str, torch.Tensor] = {}
    for impl in names:
        ref = torch.cat(p.outputs[impl]["ref"]).to(bench.device)
        recon_all[impl] = torch.cat(p.outputs[impl]["recon"])
        scores[impl] = bench.scorer(ref, recon_all[impl].to(bench.device))
    rows = []
    port_rate = n / p.seconds["released_port"]
    port_nfe = p.counters["released_port"].unet_rows / n
    for impl in names:
        counter = p.counters[impl]
        score_diff = max(
            float((scores[impl][k] - scores["released_port"][k]).abs().max()) for k in scores[impl]
        )
        recon_diff = float((recon_all[impl] - recon_all["released_port"]).abs().max())
        rate = n / p.seconds[impl]
        rows.append(
            {
                "method": method,
                "implementation": impl,
                "batch_size": batch_size,
                "device": bench.device.type,
                "dtype": dtype,
                "images": n,
                "repeats": bench.repeats,
                "seconds": p.seconds[impl],
                "cpu_seconds": p.cpu_seconds[impl],
                "images_per_s": rate,
                "nfe_per_image": counter.unet_rows / n,
                "classifier_fwd_per_image": counter.classifier_forward_rows / n,
                "classifier_bwd_per_image": counter.classifier_backward_rows / n,
                "peak_mem_mb": p.peak[impl],
                "max_abs_score_diff": score_diff,
                "max_abs_recon_diff": recon_diff,
                "speedup_vs_port": rate / port_rate,
                "cpu_speedup_vs_port": p.cpu_seconds["released_port"] / p.cpu_seconds[impl],
                "nfe_reduction_vs_port": 1 - (counter.unet_rows / n) / port_nfe,
                "threads": bench.threads,
                "mem_method": bench.memory.method,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- stage
def _stage_method(
    experiment: dict[str, Any],
    model_dir: str | Path,
    records: Sequence[Any],
    root: Path,
    benchmark: dict[str, Any],
    clf_spec: dict[str, Any] | None,
    seed: int,
) -> tuple[torch.Tensor, tuple[Any, Any]]:
    """An experiment's images and ``(model, settings)``; the model loaded on the CPU in float32."""
    from diffguard.runtime import open_experiment

    setup = open_experiment(
        experiment,
        benchmark,
        model_dir,
        torch.device("cpu"),
        classifier_spec=clf_spec,
        seed=seed,
        precision="float32",
    )
    # the experiment's own resolution, exactly as its reconstruct jobs load images
    images = setup.load_images(records, root, benchmark)
    backend = setup.model
    # A trained pixel model at the benchmark's size is timed as the bare UNet (as before);
    # converted models go through their backend (resizing, latent space, null label).
    same_size = backend.sample_size == images.shape[-1]
    model = backend.unet if backend.source == "train" and same_size else backend
    log.info(
        "%s: experiment %s, model %s, images %d px",
        get_method(setup.method).label,
        setup.name,
        model_dir,
        images.shape[-1],
    )
    return images, (model, setup.settings)


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
    from diffguard.data import read_imglist
    from diffguard.runtime import image_root, load_trained_classifier, resolve_device

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
    methods: dict[str, tuple[Any, Any]] = {}
    images: dict[str, torch.Tensor] = {}
    for experiment, model_dir in zip(experiments, model_dirs, strict=True):
        label = get_method(experiment["method"]).label
        if label in methods:
            raise ValueError(f"speed: two experiments of method {label}; give one of each")
        images[label], methods[label] = _stage_method(
            experiment, model_dir, records, root, benchmark, clf_spec, seed
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
