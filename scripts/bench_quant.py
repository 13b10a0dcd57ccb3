"""Quantised inference on CPU: size on disk, batch-1 latency and batch-128 throughput of the
quantised 3-layer MiniLM student against fp32 flaxdistil and PyTorch's dynamic int8.

    python scripts/bench_quant.py                     # all-MiniLM-L6-v2 layers 0,2,4, seq 128
    python scripts/bench_quant.py --batch 8 --seq 32 --throughput-repeats 2   # a quick look

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
    p.add_argument("--out", default="reports")
    p.add_argument("--name", default="bench_quant")
    args = p.parse_args(argv)
    with runner.user_errors():
        from flaxdistil.bench import quant

        with tempfile.TemporaryDirectory() as work:
            results = quant.run(
                args.teacher, args.layers, args.seq, args.batch, args.latency_repeats,
                args.throughput_repeats, work,
            )  # fmt: skip
        stem = Path(args.out) / args.name
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        markdown = quant.to_markdown(results)
        stem.with_suffix(".md").write_text(markdown)
        print(markdown)
        print(f"wrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
