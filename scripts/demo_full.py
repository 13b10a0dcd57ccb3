"""The README's main job, offline on real weights and real data (issue 4, section 7).

    python scripts/demo_full.py [--workdir workdirs/demo_full] [--dataset bbc_news] [--reuse]

1. fine-tune all-MiniLM-L6-v2 on the movie-review snippets (binary sentiment): the teacher;
2. slice every other layer of the fine-tuned teacher into a 3-layer student and distil it
   (hard-label CE + KL at temperature T on the teacher's logits);
3. fine-tune the same 3 layers sliced from the *pretrained* MiniLM, same hyperparameters, no
   teacher: the baseline;
4. evaluate all three on the test split, export the distilled student to Hugging Face format and
   check it in transformers (PyTorch), measure CPU latency at batch 1 (jitted forward on one
   sentence, median of 50 runs), and print / write the table (<workdir>/results.{json,md}).
Every phase shows a progress bar. --reuse skips phases whose results.json already exists.

Expected (seed 4, 2-core CPU): movie_snippets in 12 min, test accuracy teacher 0.838, distilled
0.815, baseline 0.817 (2026-12-01; one seed, see the README on what that does and does not show);
bbc_news (old stacks, 2026-11-22) teacher 0.964, distilled 0.959, baseline 0.946. The exported
student matches transformers to ~4e-6.
"""

import argparse
import functools
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

import numpy as np  # noqa: E402

from flaxdistil import hf, runner, sharding  # noqa: E402
from flaxdistil.jobs import task  # noqa: E402
from flaxdistil.models import inference_fn  # noqa: E402

CONFIGS = {"movie_snippets": "configs.sentiment_minilm", "bbc_news": "configs.bbc_minilm"}
SENTENCE = "A gripping, funny and thoroughly original movie that never lets go."
ROWS = (
    ("teacher", "teacher (MiniLM-L6)"),
    ("distilled", "student L3, distilled"),
    ("baseline", "student L3, no teacher"),
)


def phase_configs(args, workdir: Path) -> dict:
    module = importlib.import_module(CONFIGS[args.dataset])
    cfgs = {
        "teacher": module.get_config(),
        "distilled": module.get_config("distill"),
        "baseline": module.get_config("baseline"),
    }
    cfgs["distilled"].teacher.path = str(workdir / "teacher" / "best_hf")
    for name, c in cfgs.items():
        c.train.checkpoint_every = 0  # the full state at the end only: saves cost seconds here
        c.train.desc = name
        c.export.check = name == "distilled"  # the export check the demo reports
        c.train.epochs = args.epochs or c.train.epochs
        c.data.max_length = args.max_length or c.data.max_length
        lr = args.teacher_lr if name == "teacher" else args.student_lr
        c.train.learning_rate = lr or c.train.learning_rate
        if args.smoke:  # a few steps on a few examples: checks the plumbing, not the numbers
            c.data.update(max_train_examples=128, max_eval_examples=64)
            c.train.steps, c.eval.every = 4, 2
    return cfgs


def latencies_ms(hf_dirs: dict, tokenizer, runs: int = 50) -> dict:
    """Median wall time of models.inference_fn (jitted, unrolled layers) on one sentence (batch 1)
    per model, after a warm-up. The models take turns run by run, so load from other processes on
    a shared CPU hits them alike."""
    enc = tokenizer([SENTENCE], return_tensors="np")
    args = [enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]]
    calls = {}
    for name, path in hf_dirs.items():
        pre = hf.load_pretrained(path, "seq_cls")
        fwd, params = inference_fn(pre.config, "seq_cls", pre.params)
        fwd(params, *args).block_until_ready()
        calls[name] = functools.partial(fwd, params, *args)
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call().block_until_ready()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t) * 1000) for name, t in times.items()}


def run_phase(name: str, cfg, workdir: Path, reuse: bool) -> dict:
    out = workdir / name
    if reuse and (out / "results.json").exists():
        print(f"reusing {out / 'results.json'}", flush=True)
        return json.loads((out / "results.json").read_text())
    return task.run(cfg, out)


def table(results: dict, dataset: str) -> str:
    lines = [
        f"| model ({dataset}) | test accuracy | test MCC | params | size (MB) | "
        "CPU latency, batch 1 (ms) | train time (s) | steps to best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        r = results[key]
        lines.append(
            f"| {label} | {r['test']['accuracy']:.4f} | {r['test']['mcc']:.4f} | "
            f"{r['params'] / 1e6:.1f}M | {r['size_mb']:.1f} | {r['latency_ms']:.1f} | "
            f"{r['train_time_s']:.0f} | {r['best_step']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="workdirs/demo_full")
    ap.add_argument("--dataset", default="movie_snippets", choices=sorted(CONFIGS))
    ap.add_argument("--epochs", type=int, help="override every phase's train.epochs")
    ap.add_argument("--max_length", type=int, help="override data.max_length")
    ap.add_argument("--teacher_lr", type=float, help="override the teacher's learning rate")
    ap.add_argument("--student_lr", type=float, help="override the students' learning rate")
    ap.add_argument("--reuse", action="store_true", help="skip phases that already finished")
    ap.add_argument("--smoke", action="store_true", help="4 steps per phase (plumbing check)")
    runner.add_distributed_args(ap)
    args = ap.parse_args()
    runner.initialize_distributed(vars(args))
    t_start = time.perf_counter()
    workdir = Path(args.workdir).resolve() / args.dataset
    cfgs = phase_configs(args, workdir)
    results, phase_time = {}, {}
    for i, (name, label) in enumerate(ROWS):
        print(f"\n=== [{i + 1}/4] {label} ===", flush=True)
        t0 = time.perf_counter()
        results[name] = run_phase(name, cfgs[name], workdir, args.reuse)
        # A reused phase counts with the wall time it took when it ran.
        phase_time[name] = max(time.perf_counter() - t0, results[name]["wall_time_s"])

    if not sharding.is_primary():  # multi-host: process 0 measures and writes the table
        return
    print("\n=== [4/4] latency at batch 1 and the table ===", flush=True)
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(workdir / "teacher" / "best_hf")
    latency = latencies_ms({name: workdir / name / "best_hf" for name, _ in ROWS}, tokenizer)
    for name, _ in ROWS:
        results[name]["latency_ms"] = latency[name]
        results[name]["phase_wall_s"] = phase_time[name]
    phase_time["latency"] = time.perf_counter() - t0
    t, d, b = (results[k]["test"]["accuracy"] for k in ("teacher", "distilled", "baseline"))
    checks = {
        "distilled_keeps_95pct_of_teacher_accuracy": bool(d >= 0.95 * t),
        "distilled_beats_baseline": bool(d > b),
        "distilled_keeps_fraction": d / t,
        "export_checked_in_transformers": results["distilled"].get("transformers_check_ok"),
        "export_max_abs_diff": results["distilled"].get("transformers_max_abs_diff"),
    }
    total = max(time.perf_counter() - t_start, sum(phase_time.values()))
    summary = {
        "dataset": args.dataset,
        "models": results,
        "checks": checks,
        "phase_wall_s": phase_time,
        "total_wall_s": total,
    }
    md = table(results, args.dataset)
    (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    (workdir / "results.md").write_text(md + "\n")
    print("\n" + md)
    print(
        f"\ndistilled student keeps {d / t:.1%} of the teacher's test accuracy "
        f"({'>=' if checks['distilled_keeps_95pct_of_teacher_accuracy'] else '<'} 95%) and "
        f"{'beats' if checks['distilled_beats_baseline'] else 'does NOT beat'} the no-teacher "
        f"student ({d:.4f} vs {b:.4f})"
    )
    print(f"export checked in transformers: max |diff| {checks['export_max_abs_diff']}")
    print(
        "phase wall times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in phase_time.items())
        + f"; total {total / 60:.1f} min"
    )
    print(f"wrote {workdir / 'results.json'} and {workdir / 'results.md'}")


if __name__ == "__main__":
    with runner.user_errors():
        main()
