"""The benchmark's markdown report and issue 5's targets, from the rows of bench_suite."""

from __future__ import annotations

from flaxdistil import bench


def targets(results: dict) -> list[dict]:
    """Issue 5's targets, each met / missed / not measured on this run."""
    out = []
    infer = [r for r in results.get("inference", []) if r["mode"] == "latency" and "ms" in r]
    for r in infer:
        if "vs_teacher" in r:
            out.append(
                _target(
                    f"{r['impl']} CPU batch-1 student/teacher latency <= 0.55",
                    r["vs_teacher"],
                    r["vs_teacher"] <= 0.55,
                )
            )
        if "vs_torch_eager" in r:
            out.append(
                _target(
                    f"{r['model']} flaxdistil/torch latency <= 1.0 (no slower)",
                    r["vs_torch_eager"],
                    r["vs_torch_eager"] <= 1.0,
                )
            )
    gpu = results["machine"]["backend"] == "gpu"
    best = [
        r
        for r in results.get("train", [])
        if r["impl"] == "flaxdistil"
        and r["dtype"] == "bfloat16"
        and r["seq"] == 512
        and "tokens_per_s" in r
    ]
    best = max(best, key=lambda r: r["tokens_per_s"], default=None)
    mfu = best and best.get("mfu")
    out.append(
        _target(
            "bf16 seq-512 step MFU >= 45% (H100)",
            mfu,
            bool(mfu and mfu >= 0.45),
            measured=gpu and mfu is not None,
        )
    )
    ratio = best and best.get("vs_torch_eager")
    out.append(
        _target(
            "bf16 seq-512 step >= 1.5x eager PyTorch (H100)",
            ratio,
            bool(ratio and ratio >= 1.5),
            measured=gpu and ratio is not None,
        )
    )
    return out


def _target(name, value, met, measured=True):
    status = ("met" if met else "missed") if measured else "not measured (needs a GPU run)"
    return {"target": name, "value": value, "status": status}


def _f(x, spec=",.0f", suffix=""):
    return "" if x is None else f"{x:{spec}}{suffix}"


def _mem(row):
    m = row.get("memory") or {}
    if "device_peak_bytes" in m:
        return f"{m['device_peak_bytes'] / 2**20:,.0f} MiB (device)"
    if "max_rss_bytes" in m:
        scope = "" if m.get("rss_scope") == "this case" else "*"
        return f"{m['max_rss_bytes'] / 2**20:,.0f} MiB RSS{scope}"
    return ""


def _spread(row):
    t = row.get("time")
    return f"{1e3 * t['median_s']:.1f} ({1e3 * t['min_s']:.1f}-{1e3 * t['max_s']:.1f})" if t else ""


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]


def to_markdown(results: dict, title: str = "flaxdistil benchmark") -> str:
    m, a = results["machine"], results["args"]
    lines = [
        f"# {title}",
        "",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['memory_gb']} GB; backend "
        f"**{m['backend']}** ({', '.join(sorted(set(m['devices'])))}); {m['date_utc']}; load "
        f"average at start {', '.join(f'{x:.1f}' for x in m['load_average_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in m.get('load_average_end', ()))}.",
        f"Versions: jax {m['jax']}, flax {m['flax']}, optax {m['optax']}, torch "
        f"{m.get('torch', '-')}, transformers {m.get('transformers', '-')} (torch threads "
        f"{m.get('torch_threads', '-')}), python {m['python']}.",
        f"Command: `{a['command']}`",
        "",
        "Times are medians over interleaved repeats (min-max in brackets). * RSS: the process's "
        "peak so far (could not reset it per case).",
    ]
    train = results.get("train", [])
    if train:
        lines += [
            "",
            f"## Distillation step (teacher {a['teacher']} -> student "
            f"{a['student_layers']} layers, batch {a['batch']})",
            "",
        ]
        header = [
            "seq",
            "dtype",
            "impl",
            "variant",
            "step ms",
            "tokens/s",
            "seq/s",
            "TFLOP/s",
            "MFU",
            "compile s",
            "memory",
            "vs torch eager",
            "vs torch compile",
        ]
        body = []
        for r in train:
            if "error" in r:
                body.append(
                    [r["seq"], r["dtype"], r["impl"], r["variant"], f"failed: {r['error'][:120]}"]
                    + [""] * 8
                )
                continue
            mfu = r.get("mfu")
            body.append(
                [
                    r["seq"],
                    r["dtype"],
                    r["impl"],
                    r["variant"],
                    _spread(r),
                    _f(r["tokens_per_s"]),
                    _f(r["seqs_per_s"], ".1f"),
                    _f(r["tflops_per_s"], ".3f"),
                    bench.MFU_UNKNOWN if mfu is None else _f(100 * mfu, ".1f", "%"),
                    _f(r.get("compile_s"), ".1f"),
                    _mem(r),
                    _f(r.get("vs_torch_eager"), ".2f", "x"),
                    _f(r.get("vs_torch_compile"), ".2f", "x"),
                ]
            )
        lines += _table(header, body)
        checks = [r for r in train if "flops_check" in r]
        if checks:
            lines += [
                "",
                "FLOP count check (analytic formula vs XLA's cost analysis, on 1-layer "
                "teacher and student of the same shapes; XLA counts a scanned loop body "
                "once, so the full step cannot be compared directly):",
                "",
            ]
            seen, body = set(), []
            for r in checks:
                c, key = r["flops_check"], (r["seq"], r["dtype"], r["variant"].startswith("gather"))
                if key not in seen:
                    seen.add(key)
                    body.append(
                        [
                            r["seq"],
                            r["dtype"],
                            "gather" if key[2] else "base",
                            _f(c["analytic_1layer"] / 1e9, ",.2f"),
                            _f((c["xla_1layer"] or 0) / 1e9, ",.2f"),
                            _f(c["xla_over_analytic"], ".3f"),
                        ]
                    )
            lines += _table(
                ["seq", "dtype", "heads", "analytic GFLOP", "XLA GFLOP", "XLA/analytic"], body
            )
    infer = results.get("inference", [])
    if infer:
        lines += ["", "## Inference (sequence classifier forward)", ""]
        header = [
            "mode",
            "model",
            "impl",
            "batch x seq",
            "ms",
            "seq/s",
            "tokens/s",
            "student/teacher",
            "flaxdistil/torch",
            "memory",
        ]
        body = []
        for r in infer:
            if "error" in r:
                body.append(
                    [
                        r["mode"],
                        r["model"],
                        r["impl"],
                        f"{r['batch']} x {r['seq']}",
                        f"failed: {r['error'][:120]}",
                    ]
                    + [""] * 5
                )
                continue
            body.append(
                [
                    r["mode"],
                    r["model"],
                    r["impl"],
                    f"{r['batch']} x {r['seq']}",
                    _spread(r),
                    _f(r["seqs_per_s"], ",.1f"),
                    _f(r["tokens_per_s"]),
                    _f(r.get("vs_teacher"), ".2f", "x"),
                    _f(r.get("vs_torch_eager"), ".2f", "x"),
                    _mem(r),
                ]
            )
        lines += _table(header, body)
    scaling = results.get("scaling", [])
    if scaling:
        lines += ["", "## Scaling (fixed batch per device)", ""]
        body = [
            [
                r["devices"],
                r["batch"],
                r["seq"],
                r["dtype"],
                r.get("variant", ""),
                _f(r.get("tokens_per_s")),
                _f(r.get("speedup"), ".2f", "x"),
                _f(r.get("efficiency"), ".0%"),
                r.get("error", "")[:120],
            ]
            for r in scaling
        ]
        header = [
            "devices",
            "batch",
            "seq",
            "dtype",
            "variant",
            "tokens/s",
            "speedup",
            "efficiency",
            "error",
        ]
        lines += _table(header, body)
        if results.get("scaling_note"):
            lines += ["", results["scaling_note"]]
    lines += ["", "## Targets (issue 5)", ""]
    lines += _table(
        ["target", "value", "status"],
        [[t["target"], _f(t["value"], ".3f"), t["status"]] for t in targets(results)],
    )
    return "\n".join(lines) + "\n"
