"""Seed 004's experiment (accuracy vs compressed size) and the compression pipeline table.

    python scripts/compress_sweep.py --config configs/sentiment_minilm.py --workdir W \
        --models=large=workdirs/sent_teacher/best_hf,small=workdirs/sent_distill/seed_0/best_hf \
        [--seeds=0,1,2] [--targets=0.3,0.5,0.7,0.9] [--bits=8,6,4,3] [--per_round=0.15] \
        [--steps_per_round=5] [--embedding_bits=0] [--config.train.batch_size=32 ...]

    python scripts/compress_sweep.py --mode=pipeline --config configs/sentiment_minilm.py \
        --workdir W --models=teacher=DIR,student=DIR [--heads_keep=8 --ffn_keep=1024]

sweep (flaxdistil/sweep.py): each model fine-tuned for the task (an HF dir with its head) is
scored as it is, quantised at each of --bits (deterministic), and pruned to each of --targets by
seed 004's rule (rounds of ~--per_round of the remaining weights, --steps_per_round fine-tuning
steps after each, the config's batch size and learning rate) once per seed; W/sweep.json,
W/sweep.png (test accuracy vs size in MB) and W/sweep.md (W/sweep_embE.* with --embedding_bits=E).
Finished points and seeds are reused.
pipeline (flaxdistil/compress_table.py): teacher -> distilled student -> heads / FFN pruning ->
vocabulary pruning -> int8: W/pipeline.md and W/pipeline.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402

FLAGS = {
    "mode": "sweep",
    "models": "",
    "seeds": "0,1,2",
    "targets": "0.3,0.5,0.7,0.9",
    "bits": "8,6,4,3",
    "per_round": "0.15",
    "steps_per_round": "5",
    "embedding_bits": "0",
    "metric": "accuracy",
    "heads_keep": "8",
    "ffn_keep": "1024",
    "latency_runs": "50",
}


def _list(name: str, raw: str, kind):
    try:
        return tuple(kind(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise runner.UsageError(f"--{name} expects a comma-separated list, got {raw!r}") from None


def _one(name: str, raw: str, kind):
    try:
        return kind(raw)
    except ValueError:
        raise runner.UsageError(f"--{name} expects {kind.__name__}, got {raw!r}") from None


def _models(raw: str) -> dict:
    pairs = [p for p in raw.split(",") if p.strip()]
    if not pairs or any("=" not in p for p in pairs):
        raise runner.UsageError(f"--models expects name=DIR,name=DIR, got {raw!r}")
    return dict(p.split("=", 1) for p in pairs)


def main(cfg, workdir, **f):
    models = _models(f["models"])
    if f["mode"] == "pipeline":
        from flaxdistil import compress_table

        if len(models) != 2:
            raise runner.UsageError(
                f"--mode=pipeline expects --models=teacher=DIR,student=DIR, got {len(models)}"
            )
        teacher, student = models.values()
        return compress_table.table(
            cfg, teacher, student, workdir, heads_keep=_one("heads_keep", f["heads_keep"], int),
            ffn_keep=_one("ffn_keep", f["ffn_keep"], int), metric=f["metric"],
            runs=_one("latency_runs", f["latency_runs"], int),
        )  # fmt: skip
    if f["mode"] != "sweep":
        raise runner.UsageError(f"--mode must be sweep or pipeline, got {f['mode']!r}")
    from flaxdistil import sweep

    plan = sweep.Plan(
        targets=_list("targets", f["targets"], float), bits=_list("bits", f["bits"], int),
        per_round=_one("per_round", f["per_round"], float),
        steps_per_round=_one("steps_per_round", f["steps_per_round"], int),
        seeds=_list("seeds", f["seeds"], int),
        embedding_bits=_one("embedding_bits", f["embedding_bits"], int), metric=f["metric"],
    )  # fmt: skip
    return sweep.run(cfg, workdir, models, plan)


if __name__ == "__main__":
    runner.run(main, flags=FLAGS)
