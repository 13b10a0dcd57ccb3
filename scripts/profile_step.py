"""Where the time of flaxdistil's distillation step goes, by XLA op kind (jax.profiler).

    python scripts/profile_step.py --hidden 256 --layers 4 --student-layers 2 --seq 128 --batch 8
    python scripts/profile_step.py --variant gather+fused --dtype bfloat16 --steps 5

Traces --steps steps of the same jitted step that scripts/bench.py times (random weights), sums
the device time of each XLA op over the steps and prints a table per op kind (the op name without
its number: dot, copy, dynamic-update-slice fusions, ...) with the share of the step's wall time.
Writes <out>/<name>.json with the kinds and the 30 costliest ops.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--hidden", type=int, default=256)
    add("--layers", type=int, default=4, help="teacher layers")
    add("--student-layers", type=int, default=2)
    add("--vocab", type=int, default=30522)
    add("--seq", type=int, default=128)
    add("--batch", type=int, default=8)
    add("--dtype", default="float32")
    add("--variant", default="gather", help="as in scripts/bench.py --variants")
    add("--steps", type=int, default=5)
    add("--out", default="reports")
    add("--name", default="profile_step", help="output file stem")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    import jax

    from flaxdistil.bench import cases
    from flaxdistil.bench.profile import format_op_profile, op_profile, read_trace_events
    from flaxdistil.models import ModelConfig

    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.seq),
    )
    t_params, s_params, s_cfg = cases.teacher_student(cfg, args.student_layers, "mlm")
    batch = cases.random_batch(args.batch, args.seq, cfg.vocab_size)
    variant = cases.Variant.parse(args.variant)
    run, _ = cases.jax_train_case(t_params, s_params, cfg, s_cfg, batch, args.dtype, variant)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                run()
        wall_s = (time.perf_counter() - t0) / args.steps
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        profile = op_profile(read_trace_events(trace), args.steps)
    profile |= {"step_wall_ms": 1e3 * wall_s, "args": vars(args), "backend": jax.default_backend()}
    print(format_op_profile(profile))
    out = Path(args.out) / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"wrote {out}")
    return profile


if __name__ == "__main__":
    main()
