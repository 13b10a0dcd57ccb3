"""Benchmark pieces of flaxdistil against the PyTorch reference (CLI: scripts/bench.py).

A *case* is one thing to time (a distillation step, an inference call) built by a ``*_case``
function, which compiles it, warms it up and reads its memory, one case at a time. The cases of
one comparison are then timed *interleaved*, one unit of each in turn, so that load from other
processes on a shared machine falls on all of them alike; medians over the repeats are reported.
The PyTorch side is in bench_torch.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import sharding, train, xla_cpu
from flaxdistil.models import Model, ModelConfig, inference_fn, init_params
from flaxdistil.student import derive_student

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
CLS_ID, SEP_ID, FIRST_WORD_ID = 101, 102, 104  # BERT's uncased vocabulary: ids >= 104 are words
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


# ---------------------------------------------------------------- inputs and models


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length [CLS] words [SEP] rows (packed pre-training data has almost no padding)."""
    if vocab <= FIRST_WORD_ID:
        raise ValueError(f"--vocab must exceed {FIRST_WORD_ID} (BERT's special ids), got {vocab}")
    ids = np.random.default_rng(seed).integers(FIRST_WORD_ID, vocab, (batch, seq), np.int32)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def teacher_student(cfg: ModelConfig, student_layers: int, head: str, seed: int = 0):
    """Random teacher params and a student sliced from them (the general-distillation set-up)."""
    params = jax.tree.map(np.asarray, init_params(cfg, head, jax.random.key(seed)))
    s_params, s_cfg, _ = derive_student(params, cfg, layers="uniform", num_layers=student_layers)
    return params, s_params, s_cfg


@dataclasses.dataclass(frozen=True)
class Variant:
    """Options of the flaxdistil step, parsed from e.g. 'gather+fused+remat=dots+teacher=bfloat16'.

    gather: MLM heads at the masked tokens only (DistillSpec.gather_masked, KL on masked tokens);
    fused: jax.nn.dot_product_attention (cuDNN on GPU); remat: a policy of encoder.REMAT_POLICIES;
    teacher: the teacher's dtype (weights and compute) when it differs from the student's;
    rng: the PRNG implementation of the step's key (jax.random.key(..., impl=...)), e.g. 'rbg',
    which draws the masks and dropout with XLA's RngBitGenerator instead of threefry;
    dots: 'eigen' compiles the step with xla_cpu.EIGEN_DOTS (CPU only; default: XLA's choice).
    """

    gather: bool = False
    fused: bool = False
    remat: str | None = None
    teacher: str | None = None
    rng: str | None = None
    dots: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        kw: dict = {}
        for part in filter(None, text.strip().split("+")):
            key, _, value = part.partition("=")
            if key in ("gather", "fused") and not value:
                kw[key] = True
            elif value and (
                key in ("remat", "teacher", "rng") or (key, value) == ("dots", "eigen")
            ):
                kw[key] = value
            elif key != "base":
                raise ValueError(
                    f"unknown variant part {part!r} in {text!r}: expected base, gather, fused, "
                    "remat=<none|dots|dots_no_batch>, teacher=<dtype>, rng=<impl> or "
                    "dots=eigen, joined with '+'"
                )
        return cls(**kw)

    @property
    def name(self) -> str:
        parts = ["gather"] * self.gather + ["fused"] * self.fused
        parts += [f"remat={self.remat}"] * bool(self.remat)
        parts += [f"teacher={self.teacher}"] * bool(self.teacher)
        parts += [f"rng={self.rng}"] * bool(self.rng)
        parts += [f"dots={self.dots}"] * bool(self.dots)
        return "+".join(parts) or "base"


# ---------------------------------------------------------------- flaxdistil cases


def jax_train_case(
    t_params,
    s_params,
    t_cfg: ModelConfig,
    s_cfg: ModelConfig,
    host_batch: dict,
    dtype: str,
    variant: Variant,
    *,
    warmup: int = 2,
    devices=None,
) -> Case:
    """The jitted general-distillation step (train.jit_distill_step) on ``devices``."""
    memory = start_memory()
    mesh = sharding.make_mesh(devices=devices)
    t_dtype = jnp.dtype(variant.teacher or dtype)
    attention = "fused" if variant.fused else "einsum"
    student = Model(
        s_cfg, "mlm", dtype=jnp.dtype(dtype), remat=variant.remat, attention_impl=attention
    )
    teacher = Model(t_cfg, "mlm", dtype=t_dtype, attention_impl=attention)
    spec = train.DistillSpec(
        alpha_ce=5.0,
        alpha_mlm=2.0,
        alpha_cos=1.0,
        restrict_ce_to_mask=variant.gather,
        gather_masked=variant.gather,
        vocab_size=t_cfg.vocab_size,
    )
    tx = train.make_optimizer(
        learning_rate=5e-4, total_steps=10_000, warmup_steps=100, max_grad_norm=5.0
    )
    state = train.create_state(s_params, tx)
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    t_sh = sharding.tree_shardings(t_params, mesh)
    t_params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, t_dtype), t_params), t_sh)
    batch = sharding.shard_batch(host_batch, mesh)
    rng = jax.random.key(0, impl=variant.rng)
    options = dict(xla_cpu.EIGEN_DOTS) if variant.dots == "eigen" else None
    step = train.jit_distill_step(
        student, teacher, spec, tx, mesh, state_sh, t_sh, compiler_options=options
    )

    t0 = time.perf_counter()
    compiled = step.lower(state, t_params, batch, rng, None).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], t_params, batch, rng, None)
        return jax.block_until_ready(metrics)

    for _ in range(max(warmup, 1)):  # at least one step: its metrics are checked
        metrics = run()
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(math.isfinite(v) for v in metrics.values()) or metrics.get("masked_dropped", 0):
        raise RuntimeError(f"benchmark step went wrong: {metrics}")
    B, T = host_batch["input_ids"].shape
    rows = train.masked_capacity(B * T, spec.mlm_probability) if variant.gather else B * T
    return run, {
        "compile_s": compile_s,
        "flops": step_flops(t_cfg, s_cfg, B, T, rows),
        "xla_flops": xla_flops(compiled),
        "xla_bytes": xla_memory(compiled),
        "memory": peak_memory(memory, mesh.devices.flat[0]),
        "loss": metrics["loss"],
        "devices": int(mesh.devices.size),
    }


def flops_check(t_cfg, s_cfg, batch: int, seq: int, dtype: str, variant: Variant) -> dict:
    """Compare step_flops with XLA's cost analysis on 1-layer teacher and student of the same
    widths and shapes: XLA counts a scanned loop body once, so the full step under-reports."""
    one_t, one_s = t_cfg.replace(num_hidden_layers=1), s_cfg.replace(num_hidden_layers=1)
    t_params, s_params, _ = teacher_student(one_t, 1, "mlm")
    _, info = jax_train_case(
        t_params,
        s_params,
        one_t,
        one_s,
        random_batch(batch, seq, t_cfg.vocab_size),
        dtype,
        variant,
        warmup=0,
    )
    xla = info["xla_flops"]
    return {
        "analytic_1layer": info["flops"],
        "xla_1layer": xla,
        "xla_over_analytic": xla / info["flops"] if xla else None,
    }


def jax_infer_case(
    cfg: ModelConfig,
    params,
    host_batch: dict,
    dtype: str,
    *,
    fused: bool,
    scan_layers: bool,
    xla_default_dots: bool = False,
) -> Case:
    """The sequence-classifier forward of models.inference_fn; inputs come from the host at each
    call. scan_layers=True times the scanned layers instead of inference_fn's unrolled default;
    xla_default_dots compiles without inference_fn's CPU options (xla_cpu.inference_options)."""
    memory = start_memory()
    attention = "fused" if fused else "einsum"
    fn, params = inference_fn(
        cfg,
        "seq_cls",
        params,
        dtype,
        unroll_layers=not scan_layers,
        attention_impl=attention,
        compiler_options=None if xla_default_dots else "auto",
    )
    ids, mask = host_batch["input_ids"], host_batch["attention_mask"]
    t0 = time.perf_counter()
    compiled = fn.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: compiled(params, ids, mask).block_until_ready()
    for _ in range(3):
        run()
    B, T = ids.shape
    return run, {
        "compile_s": compile_s,
        "flops": classifier_flops(cfg, B, T),
        "memory": peak_memory(memory),
    }


# ---------------------------------------------------------------- op profile (jax.profiler)


def read_trace_events(path) -> list[dict]:
    """The events of a perfetto trace that jax.profiler.trace(create_perfetto_trace=True) wrote."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def _op_threads(events: list[dict]) -> set:
    """(pid, tid) of the threads that run XLA ops: XLA:CPU's Eigen pool, or any GPU stream."""
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    keep = set()
    for e in events:
        if e.get("name") == "thread_name":
            on_device = procs.get(e["pid"], "").startswith("/device:")
            if on_device or e["args"]["name"].startswith("tf_XLAEigen"):
                keep.add((e["pid"], e["tid"]))
    return keep


# Op kinds that are matrix multiplies: XLA dots, YNNPACK/XNNPACK fusions (CPU), cuBLAS/cuDNN/
# Triton GEMMs (GPU).
MATMUL_OPS = re.compile(r"dot|ynn|xnn|gemm|cublas|cutlass|triton|cudnn|matmul|conv")


def op_kind(name: str) -> str:
    """'bitcast_dynamic-update-slice_fusion.9' -> 'bitcast_dynamic-update-slice_fusion'."""
    base, _, suffix = name.rpartition(".")
    return base if base and suffix.isdigit() else name


def op_profile(events: list[dict], steps: int, top: int = 30) -> dict:
    """Self time (own duration minus that of the events nested in it, e.g. a while loop's body)
    per op kind and for the ``top`` costliest ops, in ms per step."""
    threads = _op_threads(events)
    spans = sorted(
        (e for e in events if e.get("ph") == "X" and (e["pid"], e["tid"]) in threads),
        key=lambda e: (e["pid"], e["tid"], e["ts"], -e.get("dur", 0)),
    )
    per_op: dict[str, float] = {}
    stack: list[dict] = []  # the open spans of the current thread, outermost first

    def close(span):
        per_op[span["name"]] = per_op.get(span["name"], 0.0) + span["dur"] - span["child"]

    for e in spans:
        thread, dur = (e["pid"], e["tid"]), e.get("dur", 0.0)
        while stack and (stack[-1]["thread"] != thread or stack[-1]["end"] <= e["ts"]):
            close(stack.pop())
        if stack:
            stack[-1]["child"] += dur
        stack.append(
            {"thread": thread, "end": e["ts"] + dur, "name": e["name"], "dur": dur, "child": 0.0}
        )
    while stack:
        close(stack.pop())
    ms = lambda us: us / 1e3 / steps
    kinds: dict[str, float] = {}
    for name, us in per_op.items():
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + us
    ranked = lambda d, n=None: dict(
        sorted(((k, ms(v)) for k, v in d.items()), key=lambda kv: -kv[1])[:n]
    )
    return {
        "op_ms_total": ms(sum(per_op.values())),
        "matmul_ms": ms(sum(us for kind, us in kinds.items() if MATMUL_OPS.search(kind))),
        "kinds_ms": ranked(kinds),
        "top_ops_ms": ranked(per_op, top),
    }


def format_op_profile(profile: dict, rows: int = 20) -> str:
    total = profile["op_ms_total"]
    lines = [
        f"step wall time {profile['step_wall_ms']:.1f} ms; XLA ops {total:.1f} ms per step "
        f"(self time summed over the threads that run ops), of which matrix multiplies "
        f"{profile['matmul_ms']:.1f} ms ({profile['matmul_ms'] / total:.0%})",
        "",
        "| op kind | ms per step | share of op time |",
        "|---|---|---|",
    ]
    for kind, ms in list(profile["kinds_ms"].items())[:rows]:
        lines.append(f"| {kind} | {ms:.2f} | {ms / total:.1%} |")
    return "\n".join(lines)


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
