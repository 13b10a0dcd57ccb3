"""The benchmark's markdown report and issue 5's targets, from the rows of suite.py."""

from __future__ import annotations

from flaxdistil.bench.measure import MFU_UNKNOWN


def targets(results: dict) -> list[dict]:
    """Issue 5's targets, each met / missed / not measured on this run."""
    out = []
    cpu = results["machine"]["backend"] == "cpu"  # the latency targets are CPU ones
    latency = [
        r for r in results.get("inference", []) if cpu and r["mode"] == "latency" and "ms" in r
    ]
    for r in latency:
        who = f"{r['impl']} ({r['variant']})"
        if "vs_teacher" in r:
            name = f"CPU batch-1 latency, student/teacher <= 0.55: {who}"
            out.append(_target(name, r["vs_teacher"], r["vs_teacher"] <= 0.55))
        if "vs_torch_eager" in r:
            name = f"CPU batch-1 latency, flaxdistil/fastest torch <= 1: {r['model']} {who}"
            out.append(_target(name, r["vs_torch_eager"], r["vs_torch_eager"] <= 1.0))
    seq512 = [
        r
        for r in results.get("train", [])
        if r["impl"] == "flaxdistil" and r["dtype"] == "bfloat16" and r["seq"] == 512
    ]
    best = max((r for r in seq512 if "tokens_per_s" in r), key=_tokens, default={})
    gpu = results["machine"]["backend"] == "gpu"
    mfu, ratio = best.get("mfu"), best.get("vs_torch_eager")
    out.append(_target("H100 bf16 seq-512 step MFU >= 45%", mfu, (mfu or 0) >= 0.45, gpu and mfu))
    out.append(
        _target(
            "H100 bf16 seq-512 step >= 1.5x eager PyTorch",
            ratio,
            (ratio or 0) >= 1.5,
            gpu and ratio,
        )
    )
    return out


def _tokens(row):
    return row["tokens_per_s"]


def _target(name, value, met, measured=True):
    status = ("met" if met else "missed") if measured else "not measured (needs a GPU run)"
    return {"target": name, "value": value, "status": status}


# ---------------------------------------------------------------- formatting


def _f(x, spec=",.0f", suffix=""):
    return "" if x is None else f"{x:{spec}}{suffix}"


def _mem(row):
    m = row.get("memory") or {}
    if "device_peak_bytes" in m:
        return f"{m['device_peak_bytes'] / 2**20:,.0f} MiB (device)"
    if "rss_added_bytes" in m:
        return f"+{m['rss_added_bytes'] / 2**20:,.0f} (RSS {m['max_rss_bytes'] / 2**20:,.0f})"
    return f"RSS {m['max_rss_bytes'] / 2**20:,.0f}*" if "max_rss_bytes" in m else ""


def _spread(row):
    t = row["time"]
    return f"{1e3 * t['median_s']:.1f} ({1e3 * t['min_s']:.1f}-{1e3 * t['max_s']:.1f})"


def _mfu(row):
    return MFU_UNKNOWN if row.get("mfu") is None else f"{100 * row['mfu']:.1f}%"


def _table(rows: list[dict], columns: list[tuple[str, object]]) -> list[str]:
    """columns: (header, key or row -> str). A failed case shows its error after the keys."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells, error = [], r.get("error")
        for _, col in columns:
            if isinstance(col, str):
                cells.append(str(r.get(col, "")))
            elif error:
                cells.append("failed: " + error[:150].replace("|", "/").replace("\n", " "))
                error = None  # shown once; the other computed cells stay empty
            else:
                cells.append("" if "error" in r else col(r))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


TRAIN_COLUMNS = [
    ("seq", "seq"),
    ("dtype", "dtype"),
    ("impl", "impl"),
    ("variant", "variant"),
    ("step ms", _spread),
    ("tokens/s", lambda r: _f(r["tokens_per_s"])),
    ("seq/s", lambda r: _f(r["seqs_per_s"], ".1f")),
    ("TFLOP/s", lambda r: _f(r["tflops_per_s"], ".3f")),
    ("MFU", _mfu),
    ("compile s", lambda r: _f(r.get("compile_s"), ".1f")),
    ("memory", _mem),
    ("XLA step MiB", lambda r: _f(r["xla_bytes"] / 2**20) if r.get("xla_bytes") else ""),
    ("vs torch eager", lambda r: _f(r.get("vs_torch_eager"), ".2f", "x")),
    ("vs torch compile", lambda r: _f(r.get("vs_torch_compile"), ".2f", "x")),
]
INFER_COLUMNS = [
    ("mode", "mode"),
    ("model", "model"),
    ("impl", "impl"),
    ("variant", "variant"),
    ("batch x seq", lambda r: f"{r['batch']} x {r['seq']}"),
    ("ms", _spread),
    ("seq/s", lambda r: _f(r["seqs_per_s"], ",.1f")),
    ("tokens/s", lambda r: _f(r["tokens_per_s"])),
    ("student/teacher", lambda r: _f(r.get("vs_teacher"), ".2f", "x")),
    ("flaxdistil/fastest torch", lambda r: _f(r.get("vs_torch_eager"), ".2f", "x")),
    ("memory", _mem),
]
SCALING_COLUMNS = [
    ("devices", "devices"),
    ("batch", "batch"),
    ("seq", "seq"),
    ("dtype", "dtype"),
    ("variant", "variant"),
    ("tokens/s", lambda r: _f(r["tokens_per_s"])),
    ("speedup", lambda r: _f(r.get("speedup"), ".2f", "x")),
    ("efficiency", lambda r: _f(r.get("efficiency"), ".0%")),
]
CHECK_COLUMNS = [
    ("seq", "seq"),
    ("dtype", "dtype"),
    ("heads", "heads"),
    ("analytic GFLOP", lambda r: _f(r["analytic_1layer"] / 1e9, ",.3f")),
    ("XLA GFLOP", lambda r: _f((r["xla_1layer"] or 0) / 1e9, ",.3f")),
    ("XLA/analytic", lambda r: _f(r["xla_over_analytic"], ".3f")),
]


def merge(old: dict, new: dict) -> dict:
    """``new``'s runs replace the rows of ``old`` with the same section and setup; others stay."""
    fresh = {(r["section"], r["setup"]) for r in new["runs"]}
    out = {"machine": new["machine"]}
    out["runs"] = [r for r in old.get("runs", []) if (r["section"], r["setup"]) not in fresh]
    out["runs"] += new["runs"]
    for key in SECTIONS:
        rows = [r for r in old.get(key, []) if (key, r.get("setup")) not in fresh]
        if rows + new.get(key, []):
            out[key] = rows + new.get(key, [])
    return out


SECTIONS = {
    "train": ("Distillation step", TRAIN_COLUMNS),
    "inference": ("Inference: sequence classifier forward", INFER_COLUMNS),
    "scaling": ("Scaling: fixed batch per device", SCALING_COLUMNS),
}


def to_markdown(results: dict, title: str = "flaxdistil benchmark") -> str:
    m = results["machine"]
    lines = [
        f"# {title}",
        "",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['memory_gb']} GB; backend "
        f"**{m['backend']}** ({', '.join(sorted(set(m['devices'])))}).",
        f"Versions: jax {m['jax']}, flax {m['flax']}, optax {m['optax']}, torch "
        f"{m.get('torch', '-')}, transformers {m.get('transformers', '-')}, python "
        f"{m['python']}; torch's default CPU threads {m.get('torch_threads', '-')}; XLA_FLAGS "
        f"'{m['xla_flags']}'.",
        "",
        "Times are medians over interleaved repeats (min-max in brackets); ratios are medians of "
        "the per-round ratios of adjacent calls, against the fastest torch setting. Memory "
        "(MiB): peak device memory; on CPU how far the process's resident set rose above its "
        "size before the case was built, while it was built and warmed up (its params, "
        "optimizer state, compiled step and temporaries; freed memory that the allocator reuses "
        "is not counted again), and the process's peak RSS in brackets (* where the high-water "
        "mark could not be reset: the process's peak so far). MFU counts model FLOPs "
        "(flaxdistil.bench.measure.step_flops).",
    ]
    for key, (title_, columns) in SECTIONS.items():
        for run in (r for r in results.get("runs", []) if r["section"] == key):
            rows = [r for r in results.get(key, []) if r.get("setup") == run["setup"]]
            load = " -> ".join(", ".join(f"{x:.1f}" for x in la) for la in run["load_average"])
            lines += ["", f"## {title_} ({run['setup']})", ""]
            lines += [
                f"`{run['command']}`",
                "",
                f"{run['date_utc']}; load average (1, 5, 15 min) {load}.",
                "",
                *_table(rows, columns),
            ]
            notes = sorted({r["note"] for r in rows if r.get("note")})
            lines += ["", *notes] if notes else []
            if key == "train":
                lines += _flops_checks(rows)
    lines += ["", "## Targets (issue 5)", ""]
    target_cols = [
        ("target", "target"),
        ("value", lambda t: _f(t["value"], ".3f")),
        ("status", "status"),
    ]
    lines += _table(targets(results), target_cols)
    return "\n".join(lines) + "\n"


def _flops_checks(rows: list[dict]) -> list[str]:
    checks, seen = [], set()
    for r in rows:
        heads = "gather" if r["variant"].startswith("gather") else "base"
        if "flops_check" in r and (r["seq"], r["dtype"], heads) not in seen:
            seen.add((r["seq"], r["dtype"], heads))
            checks.append({**r["flops_check"], **r, "heads": heads})
    if not checks:
        return []
    return [
        "",
        "FLOP count check: the analytic formula against XLA's cost analysis of the same step with "
        "1-layer teacher and student (XLA counts a scanned loop body once, so the full step cannot "
        "be compared directly; XLA also counts elementwise work):",
        "",
        *_table(checks, CHECK_COLUMNS),
    ]
