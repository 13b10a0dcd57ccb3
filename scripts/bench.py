"""Benchmark flaxdistil against PyTorch/transformers: distillation step, inference, scaling.

    python scripts/bench.py                      # BERT-base -> 6 layers, seq 128/512, fp32/bf16
    python scripts/bench.py --hidden 256 --layers 4 --student-layers 2 --seq 128 --batch 8 \\
        --sections train --name bench_cpu        # reduced sizes on a CPU
    python scripts/bench.py --quick              # a tiny smoke run (CI)

Writes <out>/<name>.json and .md (name defaults to bench_<backend>) and prints the tables; with
--merge, rows of other sections or sizes already in the .json are kept (one report for runs at
different sizes). Hand-written notes after the NOTES_MARKER line of an existing .md are kept.
XLA_PYTHON_CLIENT_PREALLOCATE=false is set so that torch has GPU memory too.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOTES_MARKER = "<!-- notes: kept when the tables above are regenerated -->"
SECTION_KEYS = {"infer": "inference", "train": "train", "scaling": "scaling"}
QUICK = dict(
    hidden=32,
    layers=2,
    student_layers=1,
    heads=4,
    vocab=256,
    seq=[16],
    batch=2,
    steps=2,
    dtypes=["float32"],
    latency_tokens=8,
    latency_repeats=3,
    throughput_batch=4,
    throughput_seq=16,
    torch_compile=False,
    scaling_devices=[1, 2],
)


def parse(argv=None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]
    strs = lambda s: [x for x in s.split(",") if x]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--hidden", type=int, default=768)
    add("--layers", type=int, default=12, help="teacher layers")
    add("--student-layers", type=int, default=6)
    add("--heads", type=int, default=0, help="attention heads (0: hidden // 64)")
    add("--vocab", type=int, default=30522)
    add("--seq", type=ints, default=[128, 512])
    add("--batch", type=int, default=32)
    add("--steps", type=int, default=10, help="timed repeats per case (after warm-up)")
    add("--dtypes", type=strs, default=["float32", "bfloat16"])
    add(
        "--variants",
        type=strs,
        default=["base", "gather"],
        help="flaxdistil step options, e.g. base,gather,gather+fused,remat=dots,teacher=bfloat16",
    )
    add("--torch", action=argparse.BooleanOptionalAction, default=True, help="the reference")
    add("--torch-compile", action=argparse.BooleanOptionalAction, default=True)
    add(
        "--torch-threads",
        type=ints,
        default=[0],
        help="torch CPU thread counts to compare, e.g. 2,1 (0: torch's default)",
    )
    add("--sections", type=strs, default=["train", "infer", "scaling"])
    add("--peak-tflops", type=float, default=None, help="device peak for MFU (unknown devices)")
    add("--check-flops", action=argparse.BooleanOptionalAction, default=True)
    add("--latency-tokens", type=int, default=20, help="batch-1 sentence length")
    add("--latency-repeats", type=int, default=50)
    add("--throughput-batch", type=int, default=128)
    add("--throughput-seq", type=int, default=128)
    add("--infer-dtype", default="float32")
    add("--infer-fused", action="store_true", help="fused attention in the inference forward")
    add(
        "--scaling-devices",
        type=ints,
        default=[],
        help="device counts (default 1..all); scaling runs the first --seq and --dtypes and the "
        "last --variants with --batch split over the most devices",
    )
    add("--fake-devices", type=int, default=0, help="CPU only: fake this many host devices")
    add("--quick", action="store_true", help="tiny sizes: a smoke run")
    add("--out", default="reports")
    add("--name", default="", help="output file stem (default bench_<backend>)")
    add(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add to an existing <out>/<name>.json: replace only its rows of the same sections "
        "and sizes (one report for sections run at different sizes)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:  # tiny defaults; flags given explicitly still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.fake_devices:  # must happen before jax is imported
        flag = f"--xla_force_host_platform_device_count={args.fake_devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    from flaxdistil.bench import cases, measure, report, suite
    from flaxdistil.models import ModelConfig

    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads or max(args.hidden // 64, 1),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, *args.seq),
    )
    variants = [cases.Variant.parse(v) for v in args.variants]
    torch_modes = (["eager"] + ["compile"] * args.torch_compile) if args.torch else []
    common = dict(student_layers=args.student_layers)
    sections = {
        "infer": lambda: suite.infer_section(
            cfg,
            **common,
            latency_tokens=args.latency_tokens,
            latency_repeats=args.latency_repeats,
            throughput_batch=args.throughput_batch,
            throughput_seq=args.throughput_seq,
            throughput_repeats=args.steps,
            dtype=args.infer_dtype,
            fused=args.infer_fused,
            with_torch=args.torch,
            torch_threads=args.torch_threads,
        ),
        "train": lambda: suite.train_section(
            cfg,
            **common,
            seqs=args.seq,
            batch=args.batch,
            dtypes=args.dtypes,
            variants=variants,
            steps=args.steps,
            torch_modes=torch_modes,
            torch_threads=args.torch_threads,
            peak_tflops=args.peak_tflops,
            check_flops=args.check_flops,
        ),
        "scaling": lambda: _scaling(args, cfg, variants[-1]),
    }
    setup = (
        f"teacher {args.layers}x{args.hidden} -> student {args.student_layers}L, vocab {args.vocab}"
    )
    results = {"machine": measure.machine_info(), "runs": []}
    for name in args.sections:
        if name not in sections:
            raise ValueError(f"unknown section {name!r}: expected one of {list(sections)}")
        start = os.getloadavg()
        key = SECTION_KEYS[name]
        results[key] = [row | {"setup": setup} for row in sections[name]()]
        results["runs"].append(
            {
                "section": key,
                "setup": setup,
                "command": " ".join(["python scripts/bench.py", *args.argv]),
                "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load_average": [start, os.getloadavg()],
            }
        )
    js = _paths(args, results)[0]
    if args.merge and js.exists():
        results = report.merge(json.loads(js.read_text()), results)
    results["targets"] = report.targets(results)
    _write(args, results, report.to_markdown(results))
    return results


def _scaling(args, cfg, variant) -> list[dict]:
    import jax

    from flaxdistil.bench import suite

    counts = args.scaling_devices or list(range(1, jax.device_count() + 1))
    if jax.device_count() < max(counts):
        return _scaling_subprocess(args, max(counts))
    rows = suite.scaling_section(
        cfg,
        student_layers=args.student_layers,
        seq=args.seq[0],
        per_device_batch=max(args.batch // max(counts), 1),
        dtype=args.dtypes[0],
        variant=variant,
        steps=args.steps,
        device_counts=counts,
    )
    if jax.default_backend() == "cpu":
        for row in rows:
            row["note"] = "fake CPU devices share the same cores: this only checks that it runs"
    return rows


def _scaling_subprocess(args, n: int) -> list[dict]:
    """Scaling on CPU needs fake devices, which must be set before jax starts: run it apart."""
    import jax

    if jax.default_backend() != "cpu":
        return [{"devices": n, "error": f"only {jax.device_count()} devices"}]
    with tempfile.TemporaryDirectory() as tmp:
        own = _argv_without(args.argv, "--sections", "--out", "--name", "--fake-devices")
        cmd = [
            sys.executable,
            __file__,
            *own,
            "--sections",
            "scaling",
            "--no-merge",
            "--fake-devices",
            str(n),
            "--out",
            tmp,
            "--name",
            "s",
        ]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        return json.loads(Path(tmp, "s.json").read_text())["scaling"]


def _argv_without(argv: list[str], *flags) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def _paths(args, results: dict) -> tuple[Path, Path]:
    stem = Path(args.out) / (args.name or f"bench_{results['machine']['backend']}")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _write(args, results: dict, markdown: str) -> None:
    js, md = _paths(args, results)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    notes = md.read_text().partition(NOTES_MARKER)[2] if md.exists() else ""
    md.write_text(markdown + ("\n" + NOTES_MARKER + notes if notes else ""))
    print(markdown)
    print(f"wrote {js} and {md}", flush=True)


if __name__ == "__main__":
    main()
