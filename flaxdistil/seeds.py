"""Repeated runs over seeds, mean +- std, and paired bootstrap intervals of differences.

``run_seeds(job, cfg, workdir, seeds)`` runs ``job(cfg with train.seed = s, workdir/seed_<s>)``
for each seed (a finished seed is read back, an interrupted one resumes) and writes
``<workdir>/seeds.json``: the per-seed results and mean / std (ddof=1) of every test metric.
Arms compared with the same seeds start from the same weights seed by seed (train.seed fixes
the random init, the data order and dropout), so ``paired_bootstrap`` resamples seeds jointly.
A string field holding ``{seed}`` is formatted per seed, so a second stage reads the first
stage's run of the same seed (``student.path=workdirs/gd/seed_{seed}/student_hf``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def run_seeds(job, cfg, workdir, seeds) -> dict:
    workdir = Path(workdir)
    runs = []
    for s in seeds:
        out = workdir / f"seed_{s}"
        done = out / "results.json"
        if done.exists():
            print(f"seed {s}: reusing {done}", flush=True)
            runs.append(json.loads(done.read_text()))
            continue
        c = with_seed(cfg, int(s))
        print(f"=== seed {s} ===", flush=True)
        runs.append(job(c, out))
    summary = {"seeds": list(map(int, seeds)), "runs": runs, "test": summarize(runs)}
    workdir.mkdir(parents=True, exist_ok=True)
    from flaxdistil import sharding

    if sharding.is_primary():  # multi-host: process 0 writes
        (workdir / "seeds.json").write_text(json.dumps(summary, indent=2))
    for k, (mean, std) in summary["test"].items():
        print(f"test {k}: {mean:.4f} +- {std:.4f} over {len(runs)} seeds", flush=True)
    return summary


def with_seed(cfg, seed: int):
    """A copy of cfg with train.seed = seed and '{seed}' in every string field replaced."""
    c = cfg.copy_and_resolve_references()
    c.train.seed = seed
    with c.unlocked():
        for group in c.values():
            if not hasattr(group, "items"):
                continue
            for k, v in group.items():
                if isinstance(v, str) and "{seed}" in v:
                    group[k] = v.replace("{seed}", str(seed))
    return c


def _test_metrics(run: dict) -> dict:
    """Task results keep test metrics under 'test'; general distillation under 'student'."""
    return run.get("test") or run.get("student") or {}


def summarize(runs: list[dict]) -> dict:
    """{metric: (mean, std)} over runs (std with ddof=1; 0 for one run)."""
    keys = sorted(set.intersection(*(set(_test_metrics(r)) for r in runs))) if runs else []
    out = {}
    for k in keys:
        x = np.array([float(_test_metrics(r)[k]) for r in runs])
        out[k] = (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0)
    return out


def paired_bootstrap(a, b, n: int = 10_000, seed: int = 0, level: float = 0.95):
    """(mean of b - a, low, high): a percentile bootstrap interval of the mean paired difference,
    resampling the pairs (seeds). With 3 seeds it is coarse; it says how far the seeds agree."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D lists, got {len(d)} pairs")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(d.mean()), float(lo), float(hi)


def _by_seed(summary: dict, seeds: list[int], metric: str) -> list[float]:
    runs = dict(zip(summary["seeds"], summary["runs"]))
    return [float(_test_metrics(runs[s])[metric]) for s in seeds]


def arms_table(arms: dict[str, Path], metrics: list[str], baseline: str | None = None) -> str:
    """Markdown: mean +- std per arm and metric, and each arm's paired difference from the
    baseline arm with its 95% bootstrap interval (* where the interval excludes 0)."""
    data = {name: json.loads((Path(p) / "seeds.json").read_text()) for name, p in arms.items()}
    baseline = baseline or next(iter(arms))
    base = data[baseline]
    head = "| arm | seeds | " + " | ".join(metrics) + f" | difference vs {baseline} |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for name, d in data.items():
        cells = [f"{d['test'][m][0]:.4f} ± {d['test'][m][1]:.4f}" for m in metrics]
        diff = ""
        if name != baseline:
            shared = [s for s in d["seeds"] if s in base["seeds"]]
            a, b = (_by_seed(r, shared, metrics[0]) for r in (base, d))
            mean, lo, hi = paired_bootstrap(a, b)
            star = "*" if lo > 0 or hi < 0 else ""
            diff = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]{star}"
        lines.append(f"| {name} | {len(d['seeds'])} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines)
