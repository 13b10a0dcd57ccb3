"""Run one config over several seeds and report mean +- std of the test metrics.

    python scripts/seeds.py --config configs/sentiment_minilm.py:tiny_kd --workdir W \
        --seeds=0,1,2 [--job=task|general|multitask] [--config.a.b=VALUE ...]

Each seed runs in <workdir>/seed_<s> (finished seeds are reused, interrupted ones resume);
<workdir>/seeds.json holds every run's results and the summary. Compare arms run with the same
seeds with scripts/arms_table.py (paired differences with bootstrap intervals).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402
from flaxdistil import seeds as seeding  # noqa: E402
from flaxdistil.jobs import general, multitask, task  # noqa: E402

JOBS = {"task": task.run, "general": general.run, "multitask": multitask.run}


def main(cfg, workdir, seeds, job):
    if job not in JOBS:
        raise runner.UsageError(f"--job must be one of {sorted(JOBS)}, got {job!r}")
    try:
        ids = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise runner.UsageError(f"--seeds expects a list like 0,1,2, got {seeds!r}") from None
    if len(ids) == 1 and "," not in seeds:  # --seeds=3 means three seeds 0, 1, 2
        ids = list(range(ids[0]))
    if not ids:
        raise runner.UsageError("--seeds is empty")
    return seeding.run_seeds(JOBS[job], cfg, workdir, ids)


if __name__ == "__main__":
    runner.run(main, flags={"seeds": "3", "job": "task"})
