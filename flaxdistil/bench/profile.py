"""Where the time of a jitted step goes: per-op self time from a jax.profiler perfetto trace
(CLI: scripts/profile_step.py)."""

from __future__ import annotations

import gzip
import json
import re


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
