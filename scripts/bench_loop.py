"""Benchmark the training loop against the pure jitted step, and the checkpoint stall per save.

    python scripts/bench_loop.py                 # teacher 4x256 -> 2 layers, batch 8 x 128
    python scripts/bench_loop.py --hidden 768 --layers 12 --student-layers 6 --steps 8 \\
        --save-every 2 --repeats 2 --merge       # BERT-base -> 6 layers (README's CPU sizes)
    python scripts/bench_loop.py --quick         # a tiny smoke run

Writes <out>/<name>.json and .md (flaxdistil/bench/loop.py says what each case times); with
--merge, rows of other sizes already in the .json are kept. Targets: the loop's tokens/s >= 95%
of the pure step's; an asynchronous save stalls the steps less than a synchronous one.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # flaxdistil.bench.loop reads configs/

QUICK = dict(hidden=32, layers=2, student_layers=1, vocab=256, seq=16, batch=2, steps=6,
             save_every=2, repeats=1)  # fmt: skip


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--hidden", type=int, default=256)
    add("--layers", type=int, default=4, help="teacher layers")
    add("--student-layers", type=int, default=2)
    add("--vocab", type=int, default=30522)
    add("--seq", type=int, default=128)
    add("--batch", type=int, default=8)
    add("--steps", type=int, default=20, help="steps per timed run")
    add("--save-every", type=int, default=5, help="checkpoint interval of the '+ saves' cases")
    add("--repeats", type=int, default=3, help="interleaved rounds of all cases")
    add("--quick", action="store_true", help="tiny sizes: a smoke run")
    add("--out", default="reports")
    add("--name", default="bench_loop")
    add("--merge", action=argparse.BooleanOptionalAction, default=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    from flaxdistil.bench import loop, measure
    from flaxdistil.models import ModelConfig

    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.seq),
    )
    setup = f"teacher {args.layers}x{args.hidden} -> student {args.student_layers}L"
    start = os.getloadavg()
    rows = loop.loop_section(cfg, student_layers=args.student_layers, batch=args.batch,
                             seq=args.seq, steps=args.steps, save_every=args.save_every,
                             repeats=args.repeats)  # fmt: skip
    run = {
        "setup": setup,
        "command": " ".join(["python scripts/bench_loop.py", *args.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [start, os.getloadavg()],
    }
    rows = [r | {"setup": setup} for r in rows]
    results = {"machine": measure.machine_info(), "runs": [run], "loop": rows}
    js = Path(args.out) / f"{args.name}.json"
    if args.merge and js.exists():
        old = json.loads(js.read_text())
        results["runs"] = [r for r in old["runs"] if r["setup"] != setup] + results["runs"]
        results["loop"] = [r for r in old["loop"] if r["setup"] != setup] + results["loop"]
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = to_markdown(results)
    js.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {js} and {js.with_suffix('.md')}", flush=True)
    return results


def to_markdown(results: dict) -> str:
    m = results["machine"]
    out = [
        "# Training loop vs the pure jitted step; checkpoint stall per save",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['backend']}, jax {m['jax']}; medians of "
        "interleaved rounds (flaxdistil/bench/loop.py says what each case times).",
        "",
    ]
    for run in results["runs"]:
        out.append(f"- `{run['command']}` ({run['date_utc']}, load average {run['load_average']})")
    out += [
        "",
        "| setup | case | batch x seq | state MB | ms/step | tokens/s | share of step | "
        "stall per save | blocked per save |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "" if v is None else format(v, f)
    for r in results["loop"]:
        out.append(
            f"| {r['setup']} | {r['case']} | {r['batch']} x {r['seq']} | {r['state_mb']} | "
            f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['share_of_step']:.1%} | "
            f"{fmt(r.get('stall_per_save_s'), '.3f')} | {fmt(r.get('blocked_per_save_s'), '.3f')} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
