"""The benchmark's sections (training, inference, scaling): rows for the JSON and report.py.

Each section builds its cases one by one (a failing case becomes a row with its error, so that a
torch.compile that does not work on some machine is reported, not fatal), times the cases of one
comparison interleaved, and returns plain rows (dicts) for the JSON and the tables.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import traceback
from collections.abc import Callable

import jax

from flaxdistil import xla_cpu
from flaxdistil.bench import cases, measure
from flaxdistil.bench.cases import Variant
from flaxdistil.models import ModelConfig


def _build(built: list, meta: dict, make: Callable[..., measure.Case], *args, **kw) -> None:
    try:
        run, info = make(*args, **kw)
    except Exception as e:  # noqa: BLE001 - reported in the row, e.g. a torch.compile failure
        traceback.print_exc()
        built.append((meta | {"error": f"{type(e).__name__}: {e}"[:400]}, None))
        return
    built.append((meta | info, run))


def _time(built: list, repeats: int, settle: bool = False) -> list[dict]:
    """Time the built cases interleaved; each call processes row['batch'] x row['seq'] tokens."""
    runs = {i: run for i, (_, run) in enumerate(built) if run is not None}
    times = measure.interleaved(runs, repeats, settle)
    rows = []
    for i, (row, _) in enumerate(built):
        if i in times:
            t = measure.summarise(times[i])
            seqs, tokens = row["batch"], row["batch"] * row["seq"]
            row |= {
                "time": t,
                "times_s": times[i],
                "ms": 1e3 * t["median_s"],
                "seqs_per_s": seqs / t["median_s"],
                "tokens_per_s": tokens / t["median_s"],
                "tflops_per_s": row["flops"] / t["median_s"] / 1e12,
            }
        rows.append(row)
    built.clear()
    gc.collect()
    return rows


def paired_ratio(row: dict, ref: dict) -> float:
    """Median over the interleaved rounds of row's time / ref's time in the same round: adjacent
    calls share the machine's load, so the ratio is steadier than a ratio of medians."""
    return statistics.median(a / b for a, b in zip(row["times_s"], ref["times_s"]))


def _fastest(rows: list[dict]) -> dict | None:
    return min((r for r in rows if "times_s" in r), key=lambda r: r["ms"], default=None)


def _mfu(rows: list[dict], peak_override: float | None) -> None:
    kind = jax.devices()[0].device_kind
    for row in rows:
        peak = measure.peak_tflops(kind, row["dtype"], peak_override)
        row["peak_tflops"] = peak
        if "tflops_per_s" in row:
            row["mfu"] = row["tflops_per_s"] / peak if peak else None


def train_section(
    cfg: ModelConfig,
    *,
    student_layers: int,
    seqs: list[int],
    batch: int,
    dtypes: list[str],
    variants: list[Variant],
    steps: int,
    torch_modes: list[str],
    torch_threads: list[int] = (0,),
    peak_tflops: float | None = None,
    check_flops: bool = True,
) -> list[dict]:
    """The distillation step: flaxdistil variants against torch (eager / compile) per seq, dtype."""
    if torch_modes:
        from flaxdistil.bench import torch_ref

    t_params, s_params, s_cfg = cases.teacher_student(cfg, student_layers, "mlm")
    gathers = sorted({v.gather for v in variants})
    rows = []
    for seq in seqs:
        host = cases.random_batch(batch, seq, cfg.vocab_size)
        for dtype in dtypes:
            meta = {"seq": seq, "dtype": dtype, "batch": batch}
            built: list = []
            for v in variants:
                meta_v = meta | {"impl": "flaxdistil", "variant": v.name}
                args = (t_params, s_params, cfg, s_cfg, host, dtype, v)
                _build(built, meta_v, cases.jax_train_case, *args)
            for mode, gather, threads in itertools.product(torch_modes, gathers, torch_threads):
                impl = f"torch {mode}" + _threads_note(threads, torch_threads)
                meta_t = meta | {"impl": impl, "variant": ("base", "gather")[gather]}
                kw = {"gather": gather, "compile": mode == "compile", "threads": threads}
                _build(built, meta_t, torch_ref.torch_train_case, cfg, s_cfg, host, dtype, **kw)
            group = _time(built, steps)
            if check_flops:
                for gather in gathers:
                    check = cases.flops_check(cfg, s_cfg, batch, seq, dtype, Variant(gather))
                    for row in group:
                        if (
                            row["impl"] == "flaxdistil"
                            and row["variant"].startswith("gather") == gather
                        ):
                            row["flops_check"] = check
            _ratios(group)
            rows += group
    _mfu(rows, peak_tflops)
    return rows


def _threads_note(threads: int, all_threads) -> str:
    return f" ({threads or 'default'} thr)" if len(all_threads) > 1 else ""


def _ratios(group: list[dict]) -> None:
    """flaxdistil's speed over the fastest torch eager / compile row with the same loss (paired)."""
    for row in group:
        if row["impl"] != "flaxdistil" or "times_s" not in row:
            continue
        gather = "gather" if row["variant"].startswith("gather") else "base"
        for mode in ("eager", "compile"):
            same = [r for r in group if r["impl"].startswith(f"torch {mode}")]
            ref = _fastest([r for r in same if r["variant"] == gather])
            if ref:
                row[f"vs_torch_{mode}"] = 1 / paired_ratio(row, ref)


def infer_section(
    cfg: ModelConfig,
    *,
    student_layers: int,
    latency_tokens: int,
    latency_repeats: int,
    throughput_batch: int,
    throughput_seq: int,
    throughput_repeats: int,
    dtype: str = "float32",
    fused: bool = False,
    with_torch: bool = True,
    torch_threads: list[int] = (0,),
) -> list[dict]:
    """Sequence-classifier forward: latency at batch 1 and throughput, teacher vs student,
    flaxdistil (models.inference_fn: scanned and unrolled layers; on CPU also without its Eigen
    dots) vs torch (eager, inference_mode)."""
    cfg = cfg.replace(num_labels=1)  # an STS-B-like regression head
    t_params, s_params, s_cfg = cases.teacher_student(cfg, student_layers, "seq_cls")
    models = {"teacher": (cfg, t_params), "student": (s_cfg, s_params)}
    rows = []
    jax_variants = {
        "scan": {"scan_layers": True},
        "unrolled": {"scan_layers": False},  # inference_fn's default
    }
    if xla_cpu.inference_options():  # what inference_fn's CPU options buy
        jax_variants["unrolled, xla default dots"] = {
            "scan_layers": False,
            "xla_default_dots": True,
        }
    shapes = [
        ("latency", 1, latency_tokens, latency_repeats),
        ("throughput", throughput_batch, throughput_seq, throughput_repeats),
    ]
    for mode, batch, seq, repeats in shapes:
        host = cases.random_batch(batch, seq, cfg.vocab_size)
        built: list = []
        for who, (c, params) in models.items():
            meta = {
                "mode": mode,
                "model": f"{who} {c.num_hidden_layers}L",
                "batch": batch,
                "seq": seq,
                "dtype": dtype,
            }
            for variant, kw in jax_variants.items():
                meta_j = meta | {"impl": "flaxdistil", "variant": variant}
                kw = kw | {"fused": fused}
                _build(built, meta_j, cases.jax_infer_case, c, params, host, dtype, **kw)
            for threads in torch_threads if with_torch else ():
                from flaxdistil.bench import torch_ref

                meta_t = meta | {"impl": "torch eager", "variant": f"{threads or 'default'} thr"}
                _build(built, meta_t, torch_ref.torch_infer_case, c, host, dtype, threads)
        group = _time(built, repeats, settle=True)  # short calls: see measure.interleaved
        _infer_ratios([r for r in group if "ms" in r])
        rows += group
    return rows


def _infer_ratios(rows: list[dict]) -> None:
    """Time ratios (paired): student/teacher per (impl, variant); flaxdistil/fastest torch."""
    by = {(r["model"].split()[0], r["impl"], r["variant"]): r for r in rows}
    for (who, impl, variant), row in by.items():
        if who == "student" and ("teacher", impl, variant) in by:
            row["vs_teacher"] = paired_ratio(row, by["teacher", impl, variant])
        ref = _fastest([r for (w, i, _), r in by.items() if w == who and i == "torch eager"])
        if impl == "flaxdistil" and ref:
            row["vs_torch_eager"] = paired_ratio(row, ref)


def scaling_section(
    cfg: ModelConfig,
    *,
    student_layers: int,
    seq: int,
    per_device_batch: int,
    dtype: str,
    variant: Variant,
    steps: int,
    device_counts: list[int],
) -> list[dict]:
    """Tokens/s of the step on 1..N devices with a fixed batch per device (weak scaling)."""
    t_params, s_params, s_cfg = cases.teacher_student(cfg, student_layers, "mlm")
    built: list = []
    for n in device_counts:
        host = cases.random_batch(per_device_batch * n, seq, cfg.vocab_size)
        meta = {
            "devices": n,
            "batch": per_device_batch * n,
            "seq": seq,
            "dtype": dtype,
            "variant": variant.name,
        }
        args = (t_params, s_params, cfg, s_cfg, host, dtype, variant)
        _build(built, meta, cases.jax_train_case, *args, devices=jax.devices()[:n])
    rows = _time(built, steps)
    one = next((r for r in rows if r.get("devices") == 1 and "tokens_per_s" in r), None)
    for row in rows:
        if one and "tokens_per_s" in row:
            row["speedup"] = row["tokens_per_s"] / one["tokens_per_s"]
            row["efficiency"] = row["speedup"] / row["devices"]
    return rows
