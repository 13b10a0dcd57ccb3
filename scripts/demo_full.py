"""The README's main job, offline on real weights and real data (issue 4, section 7).

    python scripts/demo_full.py [--workdir workdirs/demo_full] [--dataset bbc_news] [--reuse]

1. fine-tune all-MiniLM-L6-v2 on the movie-review snippets (binary sentiment): the teacher;
2. four 3-layer students with the same hyperparameters, in two pairs that each start from one
   set of weights: every other layer of the fine-tuned teacher, distilled (hard-label CE + KL at
   temperature T on the teacher's logits) and trained without the teacher; the same layers of
   the *pretrained* MiniLM, distilled and trained without the teacher. Within a pair only the
   teacher differs; across pairs only the initialisation;
3. evaluate all five on the test split, export the distilled students to Hugging Face format and
   check them in transformers (PyTorch), measure CPU latency at batch 1 (jitted forward on one
   sentence, median of 50 runs), and print / write the table (<workdir>/results.{json,md}).
Every phase shows a progress bar. --reuse skips phases whose results.json already exists.
One seed (train.seed 4): the seeded comparison of the same four arms is `make results-protocols`.

Expected (2-core CPU): movie_snippets in about 20 min. The exported students match transformers
to ~4e-6.
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
    ("distill", "teacher's L3 slice + KD"),
    ("baseline_ft", "teacher's L3 slice, no teacher"),
    ("distill_pre", "pretrained L3 slice + KD"),
    ("baseline", "pretrained L3 slice, no teacher"),
)
# (distilled, its twin from the same weights without the teacher)
PAIRS = (("distill", "baseline_ft"), ("distill_pre", "baseline"))


def phase_configs(args, workdir: Path) -> dict:
    module = importlib.import_module(CONFIGS[args.dataset])
    cfgs = {name: module.get_config(None if name == "teacher" else name) for name, _ in ROWS}
    for name, c in cfgs.items():
        if name != "teacher":  # the KD target, and the weights of the teacher's slices
            c.teacher.path = str(workdir / "teacher" / "best_hf")
        c.train.checkpoint_every = 0  # the full state at the end only: saves cost seconds here
        c.train.desc = name
        c.export.check = name.startswith("distill")  # the export checks the demo reports
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


def pair_checks(results: dict) -> dict:
    """Per distilled arm: the share of the teacher's test accuracy it keeps, whether it beats
    its no-teacher twin from the same weights, and its transformers export check."""
    acc = {k: r["test"]["accuracy"] for k, r in results.items()}
    return {
        kd: {
            "keeps_fraction_of_teacher_accuracy": acc[kd] / acc["teacher"],
            "keeps_95pct_of_teacher_accuracy": bool(acc[kd] >= 0.95 * acc["teacher"]),
            "beats_twin_without_teacher": bool(acc[kd] > acc[twin]),
            "twin": twin,
            "export_checked_in_transformers": results[kd].get("transformers_check_ok"),
            "export_max_abs_diff": results[kd].get("transformers_max_abs_diff"),
        }
        for kd, twin in PAIRS
    }


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
        print(f"\n=== [{i + 1}/{len(ROWS) + 1}] {label} ===", flush=True)
        t0 = time.perf_counter()
        results[name] = run_phase(name, cfgs[name], workdir, args.reuse)
        # A reused phase counts with the wall time it took when it ran.
        phase_time[name] = max(time.perf_counter() - t0, results[name]["wall_time_s"])

    if not sharding.is_primary():  # multi-host: process 0 measures and writes the table
        return
    print(f"\n=== [{len(ROWS) + 1}/{len(ROWS) + 1}] latency at batch 1 and the table ===")
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(workdir / "teacher" / "best_hf")
    latency = latencies_ms({name: workdir / name / "best_hf" for name, _ in ROWS}, tokenizer)
    for name, _ in ROWS:
        results[name]["latency_ms"] = latency[name]
        results[name]["phase_wall_s"] = phase_time[name]
    phase_time["latency"] = time.perf_counter() - t0
    checks = pair_checks(results)
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
    for kd, twin in PAIRS:
        c, (a, b) = checks[kd], (results[k]["test"]["accuracy"] for k in (kd, twin))
        verdict = "beats" if c["beats_twin_without_teacher"] else "does NOT beat"
        print(
            f"{dict(ROWS)[kd]}: {c['keeps_fraction_of_teacher_accuracy']:.1%} of the teacher's "
            f"test accuracy; {verdict} its twin without the teacher ({a:.4f} vs {b:.4f}); export "
            f"checked in transformers, max |diff| {c['export_max_abs_diff']}"
        )
    print(
        "phase wall times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in phase_time.items())
        + f"; total {total / 60:.1f} min"
    )
    print(f"wrote {workdir / 'results.json'} and {workdir / 'results.md'}")


if __name__ == "__main__":
    with runner.user_errors():
        main()
