"""The model-comparison experiment: several checkpoints, one dataset, identical hyperparameters.

After "To Distil or Not To Distil: BERT, RoBERTa, and XLNet" (seed article 000): every model is
fine-tuned with the same config (max_seq_length, at most N epochs, early stopping with patience
3, MCC evaluated every N steps and at each epoch end); per model we report wall time, steps to
the best eval, final test MCC / accuracy and parameters, as ``comparison.csv`` and PNG plots
(eval metric against steps per model; run time per model).

With ``compare.seeds`` (e.g. "0,1,2") each model runs once per seed through seeds.run_seeds
(``<workdir>/<model>/seed_<s>/``, ``seeds.json``; finished seeds are reused); a path holding
``{seed}`` reads that seed's checkpoint (a student distilled with the same seed). Then
``comparison.csv`` has a row per model and seed, ``summary.csv`` mean and std per model,
``comparison.md`` the paired differences from the first model (seeds.arms_table), and the plots
show the mean over seeds with a +-1 std band / error bars.

A model is ``name=path``, ``name=path@layers`` (a slice: every_other, "0,2,4") or
``name=random:PRESET`` (a randomly initialised student of one of student.PRESETS' shapes, e.g.
TextBrewer's T4-tiny, built on the config's student.path).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

COLUMNS = (
    "model",
    "seed",
    "path",
    "layers",
    "params",
    "wall_time_s",
    "train_time_s",
    "steps_to_best",
    "best_epoch",
    "steps_run",
    "stopped_early",
    "val_metric",
    "test_mcc",
    "test_accuracy",
    "test_macro_f1",
)
# The per-seed numbers summary.csv averages (mean, std with ddof 1).
AVERAGED = (
    "wall_time_s",
    "train_time_s",
    "steps_to_best",
    "best_epoch",
    "steps_run",
    "val_metric",
    "test_mcc",
    "test_accuracy",
    "test_macro_f1",
)
RANDOM = "random:"


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    path: str
    layers: str = ""  # "" keeps all layers; every_other / "0,2,4" slice the checkpoint

    @property
    def preset(self) -> str | None:
        """The student shape of a 'random:PRESET' entry (None for a checkpoint)."""
        return self.path[len(RANDOM) :] if self.path.startswith(RANDOM) else None


def parse_models(spec: str) -> list[Entry]:
    """'name=path[@layers];name2=random:PRESET' -> entries (';' or newlines separate models)."""
    from flaxdistil.student import PRESETS

    entries = []
    for item in spec.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, rest = item.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ValueError(
                f"compare.models item {item!r}: expected 'name=path', 'name=path@layers' or "
                "'name=random:PRESET'"
            )
        path, _, layers = rest.partition("@")
        e = Entry(name.strip(), path.strip(), layers.strip())
        if e.preset is not None and (e.preset not in PRESETS or e.layers):
            raise ValueError(
                f"compare.models item {item!r}: expected 'random:' and one of {list(PRESETS)} "
                "(no @layers)"
            )
        entries.append(e)
    names = [e.name for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ValueError(f"compare.models needs distinct model names, got {names}")
    return entries


def parse_seeds(spec) -> list[int] | None:
    """compare.seeds: '' (one run with train.seed) or a list like '0,1,2'."""
    if spec in ("", None):
        return None
    try:
        ids = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"compare.seeds: expected distinct integers like '0,1,2', got {spec!r}")
    return ids


def summary_row(entry: Entry, results: dict, seed: int) -> dict:
    test = results["test"]
    return {
        "model": entry.name,
        "seed": seed,
        "path": entry.path,
        "layers": results["layers"],
        "params": results["params"],
        "wall_time_s": round(results["wall_time_s"], 1),
        "train_time_s": round(results["train_time_s"], 1),
        "steps_to_best": results["best_step"],
        "best_epoch": round(results["best_epoch"], 3),
        "steps_run": results["steps_run"],
        "stopped_early": results["stopped_early"],
        "val_metric": results["best_value"],
        "test_mcc": test.get("mcc"),
        "test_accuracy": test.get("accuracy"),
        "test_macro_f1": test.get("macro_f1"),
    }


def summarize_rows(rows: list[dict]) -> list[dict]:
    """One row per model: the seeds, params, runs stopped early, and mean / std (ddof 1; 0 for
    one seed) of every AVERAGED column."""
    import numpy as np

    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        row = {
            "model": name,
            "seeds": len(mine),
            "params": mine[0]["params"],
            "stopped_early": sum(bool(r["stopped_early"]) for r in mine),
        }
        for k in AVERAGED:
            x = np.array([r[k] for r in mine if r[k] is not None], np.float64)
            if len(x):
                row[f"{k}_mean"] = float(x.mean())
                row[f"{k}_std"] = float(x.std(ddof=1)) if len(x) > 1 else 0.0
        out.append(row)
    return out


def read_curve(eval_csv: Path, metric: str) -> tuple[list[int], list[float]]:
    """(steps, eval metric) from a run's eval.csv."""
    with Path(eval_csv).open() as f:
        rows = list(csv.DictReader(f))
    key = f"eval_{metric}"
    if rows and key not in rows[0]:
        raise ValueError(f"{eval_csv} has no column {key!r}: {list(rows[0])}")
    return [int(float(r["step"])) for r in rows], [float(r[key]) for r in rows]


def mean_curve(curves: list[tuple[list[int], list[float]]]):
    """(steps, mean, std) over seeds' curves: at each step the seeds that evaluated there (runs
    stopped early end sooner; the seeds share the eval steps, as they share eval.every)."""
    import numpy as np

    at: dict[int, list[float]] = {}
    for steps, values in curves:
        for st, v in zip(steps, values, strict=True):
            at.setdefault(st, []).append(v)
    steps = sorted(at)
    mean = [float(np.mean(at[s])) for s in steps]
    std = [float(np.std(at[s], ddof=1)) if len(at[s]) > 1 else 0.0 for s in steps]
    return steps, mean, std


def write_report(rows: list[dict], curves: dict, out_dir, metric: str = "mcc") -> list[Path]:
    """comparison.csv (a row per model and seed), summary.csv (mean / std per model),
    <metric>_vs_steps.png and runtime.png; returns the paths written. curves: {model: [(steps,
    values) per seed]}."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CPU boxes / CI
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "comparison.csv"
    _write_csv(table, COLUMNS, rows)
    summary = summarize_rows(rows)
    summary_csv = out_dir / "summary.csv"
    _write_csv(summary_csv, list(dict.fromkeys(k for r in summary for k in r)), summary)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        steps, mean, std = mean_curve(runs)
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            lo, hi = np.subtract(mean, std), np.add(mean, std)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    seeds = max(len(r) for r in curves.values())
    band = ", mean +- std over seeds" if seeds > 1 else ""
    ax.set(xlabel="training steps", ylabel=f"validation {metric}", title=f"{metric} vs steps{band}")
    ax.grid(alpha=0.3)
    ax.legend()
    curve_png = out_dir / f"{metric}_vs_steps.png"
    fig.tight_layout()
    fig.savefig(curve_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    minutes = [r["wall_time_s_mean"] / 60 for r in summary]
    err = [r["wall_time_s_std"] / 60 for r in summary]
    names = [r["model"] for r in summary]
    bars = ax.bar(range(len(names)), minutes, yerr=err, capsize=4, color="tab:blue")
    ax.bar_label(bars, labels=[f"{m:.1f}" for m in minutes], padding=6)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")  # long names overlap flat
    ax.set(ylabel="wall time (minutes)", title=f"run time per model{band}")
    runtime_png = out_dir / "runtime.png"
    fig.tight_layout()
    fig.savefig(runtime_png, dpi=120)
    plt.close(fig)
    return [table, summary_csv, curve_png, runtime_png]


def _write_csv(path: Path, columns, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def configure(cfg, e: Entry):
    """cfg for one model: only student.init / path / layers / preset change."""
    c = cfg.copy_and_resolve_references()
    c.unlock()
    if e.preset is not None:
        c.student.init, c.student.preset, c.student.layers = "random", e.preset, ""
    else:
        c.student.init, c.student.path, c.student.layers = "pretrained", e.path, e.layers
    c.train.desc = e.name
    return c


def compare(cfg, workdir, entries: list[Entry] | None = None) -> list[dict]:
    """Fine-tune every entry of cfg.compare.models with cfg, once or per compare.seeds."""
    from flaxdistil import seeds as seeding
    from flaxdistil import sharding
    from flaxdistil.jobs import task

    entries = entries or parse_models(cfg.compare.models)
    seed_ids = parse_seeds(cfg.compare.get("seeds", ""))
    workdir = Path(workdir)
    rows, curves = [], {}
    metric = cfg.compare.get("plot_metric") or cfg.eval.metric
    for i, e in enumerate(entries):
        print(f"[{i + 1}/{len(entries)}] {e.name}: {e.path} {e.layers}".rstrip(), flush=True)
        c = configure(cfg, e)
        if seed_ids is None:
            runs, dirs, ids = [task.run(c, workdir / e.name)], [workdir / e.name], [c.train.seed]
        else:
            runs = seeding.run_seeds(task.run, c, workdir / e.name, seed_ids)["runs"]
            dirs, ids = [workdir / e.name / f"seed_{s}" for s in seed_ids], seed_ids
        rows += [summary_row(e, r, s) for r, s in zip(runs, ids, strict=True)]
        curves[e.name] = [read_curve(d / "eval.csv", metric) for d in dirs]
    if not sharding.is_primary():  # multi-host: process 0 writes the report
        return rows
    paths = write_report(rows, curves, workdir, metric)
    print(format_rows(summarize_rows(rows)), flush=True)
    if seed_ids is not None and len(seed_ids) > 1 and len(entries) > 1:
        wanted = dict.fromkeys((metric, "mcc", "accuracy"))
        metrics = [m for m in wanted if rows[0].get(f"test_{m}") is not None]
        md = seeding.arms_table({e.name: workdir / e.name for e in entries}, metrics)
        (workdir / "comparison.md").write_text(md + "\n")
        paths.append(workdir / "comparison.md")
        print(md, flush=True)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return rows


def format_rows(summary: list[dict]) -> str:
    """The summary as text: mean (and +- std over seeds where there are several)."""

    def cell(r, k, fmt):
        if f"{k}_mean" not in r:  # e.g. no MCC for a regression task
            return "-"
        m, s = r[f"{k}_mean"], r[f"{k}_std"]
        return f"{m:{fmt}}" + (f" +- {s:{fmt}}" if r["seeds"] > 1 else "")

    head = (
        f"{'model':<20}{'seeds':>6}{'params':>12}{'wall s':>16}{'to best':>16}"
        f"{'MCC':>20}{'acc':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in summary:
        lines.append(
            f"{r['model']:<20}{r['seeds']:>6}{r['params']:>12,}{cell(r, 'wall_time_s', '.0f'):>16}"
            f"{cell(r, 'steps_to_best', '.0f'):>16}{cell(r, 'test_mcc', '.4f'):>20}"
            f"{cell(r, 'test_accuracy', '.4f'):>20}"
        )
    return "\n".join(lines)
