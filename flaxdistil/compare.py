"""The model-comparison experiment: several checkpoints, one dataset, identical hyperparameters.

After "To Distil or Not To Distil: BERT, RoBERTa, and XLNet" (seed article 000): every model is
fine-tuned with the same config (max_seq_length, at most N epochs, early stopping with patience
3, seed 4, MCC evaluated every N steps and at each epoch end); per model we report wall time,
steps to the best eval, final test MCC / accuracy and parameters, as ``comparison.csv`` and PNG
plots (eval metric against steps per model; run time per model).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

COLUMNS = (
    "model",
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


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    path: str
    layers: str = ""  # "" keeps all layers; every_other / "0,2,4" slice the checkpoint


def parse_models(spec: str) -> list[Entry]:
    """'name=path[@layers];name2=path2' -> entries (';' or newlines separate models)."""
    entries = []
    for item in spec.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, rest = item.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ValueError(
                f"compare.models item {item!r}: expected 'name=path' or 'name=path@layers'"
            )
        path, _, layers = rest.partition("@")
        entries.append(Entry(name.strip(), path.strip(), layers.strip()))
    names = [e.name for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ValueError(f"compare.models needs distinct model names, got {names}")
    return entries


def summary_row(entry: Entry, results: dict) -> dict:
    test = results["test"]
    return {
        "model": entry.name,
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


def read_curve(eval_csv: Path, metric: str) -> tuple[list[int], list[float]]:
    """(steps, eval metric) from a run's eval.csv."""
    with Path(eval_csv).open() as f:
        rows = list(csv.DictReader(f))
    key = f"eval_{metric}"
    if rows and key not in rows[0]:
        raise ValueError(f"{eval_csv} has no column {key!r}: {list(rows[0])}")
    return [int(float(r["step"])) for r in rows], [float(r[key]) for r in rows]


def write_report(rows: list[dict], curves: dict, out_dir, metric: str = "mcc") -> list[Path]:
    """comparison.csv, <metric>_vs_steps.png and runtime.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CPU boxes / CI
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "comparison.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set(xlabel="training steps", ylabel=f"validation {metric}", title=f"{metric} vs steps")
    ax.grid(alpha=0.3)
    ax.legend()
    curve_png = out_dir / f"{metric}_vs_steps.png"
    fig.tight_layout()
    fig.savefig(curve_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [r["model"] for r in rows]
    bars = ax.bar(names, [r["wall_time_s"] / 60 for r in rows], color="tab:blue")
    ax.bar_label(bars, labels=[f"{r['wall_time_s'] / 60:.1f}" for r in rows])
    ax.set(ylabel="wall time (minutes)", title="run time per model")
    runtime_png = out_dir / "runtime.png"
    fig.tight_layout()
    fig.savefig(runtime_png, dpi=120)
    plt.close(fig)
    return [table, curve_png, runtime_png]


def compare(cfg, workdir, entries: list[Entry] | None = None) -> list[dict]:
    """Fine-tune every entry of cfg.compare.models with cfg (only student.path/layers change)."""
    from flaxdistil.jobs import task

    entries = entries or parse_models(cfg.compare.models)
    workdir = Path(workdir)
    rows, curves = [], {}
    metric = cfg.compare.get("plot_metric") or cfg.eval.metric
    for i, e in enumerate(entries):
        print(f"[{i + 1}/{len(entries)}] {e.name}: {e.path} {e.layers}".rstrip(), flush=True)
        c = cfg.copy_and_resolve_references()
        c.unlock()
        c.student.init, c.student.path, c.student.layers = "pretrained", e.path, e.layers
        c.train.desc = e.name
        results = task.run(c, workdir / e.name)
        rows.append(summary_row(e, results))
        curves[e.name] = read_curve(workdir / e.name / "eval.csv", metric)
    from flaxdistil import sharding

    if not sharding.is_primary():  # multi-host: process 0 writes the report
        return rows
    paths = write_report(rows, curves, workdir, metric)
    print(format_rows(rows), flush=True)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = f"{'model':<20}{'params':>12}{'wall s':>9}{'to best':>9}{'MCC':>8}{'acc':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<20}{r['params']:>12,}{r['wall_time_s']:>9.0f}{r['steps_to_best']:>9}"
            f"{r['test_mcc']:>8.4f}{r['test_accuracy']:>8.4f}"
        )
    return "\n".join(lines)
