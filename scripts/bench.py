"""Benchmark flaxdistil against PyTorch/transformers: distillation step, inference, scaling.

    python scripts/bench.py                      # BERT-base -> 6 layers, seq 128/512, fp32/bf16
    python scripts/bench.py --hidden 256 --layers 4 --student-layers 2 --seq 128 --batch 8 \\
        --sections train --name bench_cpu        # reduced sizes on a CPU
    python scripts/bench.py --quick              # a tiny smoke run (CI)

Writes <out>/<name>.json and .md (name defaults to bench_<backend>) and prints the tables. On an
accelerator, set XLA_PYTHON_CLIENT_PREALLOCATE=false (done here) so that torch has memory too.
Hand-written notes after the NOTES_MARKER line of an existing .md are kept.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NOTES_MARKER = "<!-- notes: kept when the tables above are regenerated -->"
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
    add("--scaling-devices", type=ints, default=[], help="device counts (default 1..all)")
    add("--fake-devices", type=int, default=0, help="CPU only: fake this many host devices")
    add("--quick", action="store_true", help="tiny sizes: a smoke run")
    add("--out", default="reports")
    add("--name", default="", help="output file stem (default bench_<backend>)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.scaling_devices = args.scaling_devices or [1, 2]
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.fake_devices:  # must happen before jax is imported
        flag = f"--xla_force_host_platform_device_count={args.fake_devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from flaxdistil import bench, bench_report, bench_suite
    from flaxdistil.models import ModelConfig

    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads or max(args.hidden // 64, 1),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, *args.seq),
    )
    variants = [bench.Variant.parse(v) for v in args.variants]
    torch_modes = (["eager"] + ["compile"] * args.torch_compile) if args.torch else []
    command = " ".join(["python scripts/bench.py", *args.argv])
    results = {"machine": bench.machine_info(), "args": vars(args) | {"command": command}}
    results["args"]["teacher"] = f"{args.layers}x{args.hidden} vocab {args.vocab}"
    common = dict(student_layers=args.student_layers)
    if "infer" in args.sections:
        results["inference"] = bench_suite.infer_section(
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
        )
    if "train" in args.sections:
        results["train"] = bench_suite.train_section(
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
        )
    if "scaling" in args.sections:
        counts = args.scaling_devices or list(range(1, jax.device_count() + 1))
        if jax.device_count() < max(counts):
            results |= _scaling_subprocess(args, max(counts))
        else:
            results["scaling"] = bench_suite.scaling_section(
                cfg,
                **common,
                seq=args.seq[0],
                per_device_batch=max(args.batch // max(counts), 1),
                dtype=args.dtypes[0],
                variant=variants[-1],
                steps=args.steps,
                device_counts=counts,
            )
            if jax.default_backend() == "cpu":
                results["scaling_note"] = (
                    "On fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count) the "
                    "devices share the same cores: this only checks that data parallelism runs."
                )
    results["machine"]["load_average_end"] = os.getloadavg()
    results["targets"] = bench_report.targets(results)
    _write(args, results, bench_report.to_markdown(results))
    return results


def _scaling_subprocess(args, n: int) -> dict:
    """Scaling on CPU needs fake devices, which must be set before jax starts: run it apart."""
    import jax

    if jax.default_backend() != "cpu":
        return {"scaling": [{"devices": n, "error": f"only {jax.device_count()} devices"}]}
    with tempfile.TemporaryDirectory() as tmp:
        own = _argv_without(args.argv, "--sections", "--out", "--name", "--fake-devices")
        cmd = [
            sys.executable,
            __file__,
            *own,
            "--sections",
            "scaling",
            "--fake-devices",
            str(n),
            "--out",
            tmp,
            "--name",
            "s",
        ]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        child = json.loads(Path(tmp, "s.json").read_text())
    return {k: child[k] for k in ("scaling", "scaling_note") if k in child}


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


def _write(args, results: dict, markdown: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"bench_{results['machine']['backend']}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = out / f"{stem}.md"
    notes = md.read_text().partition(NOTES_MARKER)[2] if md.exists() else ""
    md.write_text(markdown + ("\n" + NOTES_MARKER + notes if notes else ""))
    print(markdown)
    print(f"wrote {out / stem}.json and .md", flush=True)


if __name__ == "__main__":
    main()
