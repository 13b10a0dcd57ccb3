"""What the benchmark measures and counts: model FLOPs and device peaks (MFU), interleaved timing,
memory (RSS, device allocator, XLA's analysis) and the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax

from flaxdistil.models import ModelConfig

# Dense peak TFLOP/s per device, keyed by a substring of jax's device_kind (first match wins).
# fp32 is the non-tensor-core peak; note that XLA runs fp32 matmuls in TF32 on these GPUs by
# default, so an fp32 MFU against it can exceed 100% (pass --peak-tflops to compare otherwise).
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756.0, "float32": 51.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
}
MFU_UNKNOWN = "n/a (peak unknown; pass --peak-tflops)"
Case = tuple[Callable[[], object], dict]  # (run one unit and block, facts about the case)


def peak_tflops(device_kind: str, dtype: str, override: float | None = None) -> float | None:
    if override:
        return override
    for key, peaks in PEAK_TFLOPS.items():
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


# ---------------------------------------------------------------- FLOPs


def encoder_flops(cfg: ModelConfig, batch: int, seq: int) -> int:
    """Matmul FLOPs of one encoder forward over N = B*T tokens (L layers, hidden D, FFN F):

        layers:    2 * N * L * (4*D^2 + 2*D*F)   QKV + output projections and the FFN
        attention: 4 * N * L * T * D             Q K^T and P V

    Elementwise work (softmax, LayerNorm, GELU, the losses) and embedding lookups are not counted.
    """
    L, D, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    n = batch * seq
    return 2 * n * L * (4 * D * D + 2 * D * F) + 4 * n * L * seq * D


def mlm_head_flops(cfg: ModelConfig, rows: int) -> int:
    """2 * R * (D^2 + D*V): the transform and the tied vocabulary projection at R rows."""
    D = cfg.hidden_size
    return 2 * rows * (D * D + D * cfg.vocab_size)


def step_flops(teacher: ModelConfig, student: ModelConfig, batch: int, seq: int, rows: int) -> int:
    """Model FLOPs of one distillation step: teacher forward + student forward and backward
    (backward = 2 x forward), with the MLM heads at ``rows`` rows (B*T, or the gathered masked
    tokens). In the usual shorthand, with non-embedding params P (head included) and N tokens:

        6 * P_student * N + 2 * P_teacher * N + (12 * L_s + 4 * L_t) * B * T^2 * D

    Remat recomputation and the optimizer update are not counted (model FLOPs, as in MFU).
    """
    t = encoder_flops(teacher, batch, seq) + mlm_head_flops(teacher, rows)
    s = encoder_flops(student, batch, seq) + mlm_head_flops(student, rows)
    return t + 3 * s


def classifier_flops(cfg: ModelConfig, batch: int, seq: int) -> int:
    """Inference forward of the sequence classifier: encoder + pooler (2*B*D^2)."""
    return encoder_flops(cfg, batch, seq) + 2 * batch * cfg.hidden_size**2


def xla_flops(compiled) -> float | None:
    """XLA's own count, where the backend provides one. It counts a loop body once, so for the
    scanned layers it is only comparable on 1-layer models (see flops_check)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


# ---------------------------------------------------------------- timing and memory


def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, settle: bool = False
) -> dict[str, list[float]]:
    """Seconds per call of each case, running the cases in turn ``repeats`` times.

    settle: one untimed call before each timed one, so that a short call does not pay for the
    previous case's leftovers (OpenMP threads still spinning, caches holding its weights).
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            if settle:
                run()
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def summarise(seconds: list[float]) -> dict:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": len(seconds),
    }


def start_memory() -> dict:
    """Before a case is built: reset the kernel's resident-set high-water mark (Linux) and note
    the resident set, so that the case's own peak can be told from what earlier cases hold."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    try:
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = 0
    return {"reset": reset, "rss_before": rss}


def peak_memory(start: dict, device=None) -> dict:
    """Peak device memory (accelerators; the allocator's peak so far), and the process's max RSS
    (getrusage) with what it rose above the RSS before the case (where the mark could be reset)."""
    device = device or jax.devices()[0]
    out = {}
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    out["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if start["reset"] and start["rss_before"]:
        out["rss_added_bytes"] = out["max_rss_bytes"] - start["rss_before"]
    return out


def xla_memory(compiled) -> int | None:
    """Bytes the executable needs: arguments + outputs - donated aliases + temporaries."""
    try:
        m = compiled.memory_analysis()
        used = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        return int(used + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- machine


def machine_info() -> dict:
    import flax
    import optax

    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import torch
        import transformers

        info.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
        )
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
