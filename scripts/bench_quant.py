"""Quantised inference on CPU: size on disk, batch-1 latency and batch-128 throughput of the
quantised 3-layer MiniLM student against fp32 flaxdistil and PyTorch's dynamic int8.

    python scripts/bench_quant.py                     # all-MiniLM-L6-v2 layers 0,2,4, seq 128
    python scripts/bench_quant.py --batch 8 --seq 32 --throughput-repeats 2   # a quick look
    python scripts/bench_quant.py --sections gemm     # one [16384, 384] x [384, 1536] GEMM alone

Writes <out>/<name>.json and .md (flaxdistil/bench/quant.py says what is measured).
"""

import argparse
import json
import tempfile
from pathlib import Path

from flaxdistil import runner


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="all-MiniLM-L6-v2", help="HF dir or asset name")
    p.add_argument("--layers", default="every_other", help="student layers (derive_student)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=128, help="the throughput batch")
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--throughput-repeats", type=int, default=5)
    p.add_argument(
        "--sections",
        default="model,gemm",
        help="model: the whole forward; gemm: "
        "its biggest matmul alone, each way (fp32, int8, PyTorch's int8)",
    )
    p.add_argument("--gemm-shape", default="16384,384,1536", help="M,K,N of the gemm section")
    p.add_argument("--gemm-repeats", type=int, default=10)
    p.add_argument("--out", default="reports")
    p.add_argument("--name", default="bench_quant")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    if not sections or set(sections) - {"model", "gemm"}:
        p.error(f"--sections expects model and/or gemm, got {args.sections!r}")
    try:
        shape = tuple(int(x) for x in args.gemm_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        p.error(f"--gemm-shape expects three positive integers M,K,N, got {args.gemm_shape!r}")
    with runner.user_errors():
        from flaxdistil.bench import measure, quant

        results, markdown = {"machine": measure.machine_info()}, ""
        if "model" in sections:
            with tempfile.TemporaryDirectory() as work:
                results = quant.run(
                    args.teacher, args.layers, args.seq, args.batch, args.latency_repeats,
                    args.throughput_repeats, work,
                )  # fmt: skip
            markdown = quant.to_markdown(results)
        if "gemm" in sections:
            results["gemm"] = quant.gemm(shape, args.gemm_repeats)
            markdown += ("\n" if markdown else "") + quant.gemm_markdown(results["gemm"])
        stem = Path(args.out) / args.name
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown)
        print(markdown)
        print(f"wrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
