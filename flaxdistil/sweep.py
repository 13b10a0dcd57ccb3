"""Seed 004's experiment: accuracy against compressed size, iterative magnitude pruning and
post-training quantisation, for one or more fine-tuned models of one task.

``run(cfg, workdir, {'large': DIR, 'small': DIR}, Plan())`` writes, per model under
``<workdir>/<name>/``:

- ``float/``: the model as given, scored on the test split;
- ``quant_<b>bit/``: ``quantize.quantize_params`` at b bits (every Dense kernel per output
  channel, symmetric; embedding tables float, or at ``Plan.embedding_bits``), saved with
  ``quantize.save_compact`` and scored from what was read back. Deterministic: one run;
- ``prune_<pct>/seed_<s>/``: the task job (flaxdistil/jobs/task.py) from the same fine-tuned
  weights with ``prune.sparsity`` = the target and ``prune.rounds`` from seed 004's rule
  (``rounds_for``: each round zeroes ~``Plan.per_round`` of the weights still there, then
  ``Plan.steps_per_round`` fine-tuning steps), over ``Plan.seeds`` through seeds.run_seeds;
  the final params (evaluated only at the last step, so "best" is the last, fully pruned one)
  stored by ``prune.save_sparse``.

and ``<workdir>/sweep.json`` (every point, the size rule, the plan, the equal-size comparison),
``<workdir>/sweep.png`` (test accuracy vs size in MB, one colour per model, pruning and
quantisation as separate markers, error bars = std over seeds) and ``<workdir>/sweep.md`` (every
point as a table row, then the equal-size comparison); with ``Plan.embedding_bits`` = E the three
are ``sweep_embE.*``, so that a second run with quantised embeddings (the pruning levels and the
float point reused, only the quantised points new) keeps the first run's files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from flaxdistil import evaluate, prune, quantize, seeds, sharding
from flaxdistil import student as students
from flaxdistil.models import Model

SIZE_RULE = (
    "size = bytes of the one weights file on disk / 2^20 (MB): float and pruned models "
    f"prune.save_sparse's {prune.SPARSE_FILE} (each tensor float32 dense, or a packed "
    "1-bit mask + float32 nonzero values where smaller); quantised models "
    f"quantize.save_compact's {quantize.COMPACT_FILE} (packed codes + float32 scales + "
    "float leaves); config.json and tokenizer files not counted"
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the sweep runs. The fine-tuning budget of a pruning level is rounds x
    steps_per_round task-job steps at the config's batch size and learning rate."""

    targets: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    bits: tuple[int, ...] = (8, 6, 4, 3)
    per_round: float = 0.15  # seed 004: each round zeroes 15% of the remaining weights
    steps_per_round: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    embedding_bits: int = 0  # 0: embedding tables stay float32 in the quantised points
    metric: str = "accuracy"
    keep_checkpoints: bool = False  # the pruning runs' orbax state (3x the model) is removed

    def check(self) -> None:
        for t in self.targets:
            if prune.check_sparsity(t, "pruning target") == 0:
                raise ValueError(
                    "pruning target 0 is the float point, always measured: give targets in (0, 1)"
                )
        if not 0.0 < self.per_round < 1.0:
            raise ValueError(f"per_round must be in (0, 1), got {self.per_round}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        for b in self.bits:
            quantize.check_bits(b)
        if self.embedding_bits:
            quantize.check_bits(self.embedding_bits, "embedding bits")
        if self.targets and not self.seeds:
            raise ValueError("pruning needs at least one seed")


def rounds_for(target: float, per_round: float = 0.15) -> int:
    """Seed 004's number of rounds to reach `target`: r rounds that each zero a fraction f of
    what remains leave (1 - f)^r, so r = log(1 - target) / log(1 - per_round), rounded to the
    nearest integer (>= 1; 0 for target 0). prune.round_sparsities then uses the exact
    f = 1 - (1 - target)^(1/r), close to per_round."""
    prune.check_sparsity(target, "pruning target")
    if target == 0:
        return 0
    return max(1, round(math.log1p(-target) / math.log1p(-per_round)))


def round_fraction(target: float, rounds: int) -> float:
    """The share of the remaining weights each of `rounds` rounds zeroes to reach target."""
    return 1.0 - (1.0 - target) ** (1.0 / rounds)


def level_config(cfg, model_dir, target: float, plan: Plan):
    """The task-job config of one pruning level: fine-tuning (no teacher) of model_dir, pruned
    to target in rounds_for(target) rounds, evaluated on validation at the last step only (so
    the params kept are the fully pruned ones), no transformers check, no intermediate orbax
    checkpoints."""
    c = cfg.copy_and_resolve_references()
    r = rounds_for(target, plan.per_round)
    c.teacher.path, c.teachers = "", []
    c.student.update(init="pretrained", path=str(model_dir), layers="")
    c.prune.update(sparsity=float(target), rounds=r)
    c.train.update(steps=r * plan.steps_per_round, checkpoint_every=0)
    c.eval.update(every=0, at_epoch_end=False, patience=0)
    c.export.check = False
    return c


# ---------------------------------------------------------------- the deterministic points


class Scorer:
    """The test split and the fine-tuned model as the task job reads them (task.setup), and a
    test-metric function for any params of that model."""

    def __init__(self, cfg, model_dir):
        from flaxdistil.jobs import task

        c = level_config(cfg, model_dir, 0.0, Plan())
        tok, self.data, self.head, self.params, self.config, _ = task.setup(c)
        self.pad_id, self.batch_size = tok.pad_token_id, cfg.eval.batch_size
        self.forward = evaluate.make_forward(Model(self.config, self.head))

    def __call__(self, params) -> dict:
        return evaluate.evaluate_task(
            self.forward, params, self.data, "test", batch_size=self.batch_size, pad_id=self.pad_id
        )


def _cached(out: Path, make) -> dict:
    """A point's record from out/point.json, or made, written there and returned."""
    f = out / "point.json"
    if f.exists():
        return json.loads(f.read_text())
    point = make()
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(point, indent=2))
    return point


def _mb(path) -> float:
    return os.path.getsize(path) / 2**20


def float_point(scorer: Scorer, out: Path) -> dict:
    f = prune.save_sparse(scorer.params, out / prune.SPARSE_FILE)
    test = scorer(prune.load_sparse(f))
    return {
        "kind": "float",
        "file": str(f),
        "size_mb": _mb(f),
        "test": test,
        "sparsity": prune.sparsity_of(scorer.params),
    }


def quant_point(scorer: Scorer, bits: int, embedding_bits: int, out: Path) -> dict:
    qp = quantize.quantize_params(scorer.params, bits=bits, embeddings=embedding_bits or False)
    d = quantize.save_compact(qp, scorer.config, out / "model", scorer.head)
    stored, _, _ = quantize.load_compact(d)  # score what is on disk
    test = scorer(quantize.dequantize_params(stored))
    f = d / quantize.COMPACT_FILE
    return {
        "kind": "quant",
        "bits": bits,
        "embedding_bits": embedding_bits,
        "file": str(f),
        "size_mb": _mb(f),
        "test": test,
    }


# ---------------------------------------------------------------- the pruning levels


def prune_level(cfg, model_dir, target: float, plan: Plan, out: Path, head: str) -> dict:
    from flaxdistil import hf
    from flaxdistil.jobs import task

    c = level_config(cfg, model_dir, target, plan)
    t0 = time.perf_counter()
    summary = seeds.run_seeds(task.run, c, out, plan.seeds)
    runs = []
    for s, res in zip(summary["seeds"], summary["runs"]):
        d = out / f"seed_{s}"
        f = d / prune.SPARSE_FILE
        if not f.exists():
            params = hf.load_pretrained(d / "best_hf", head).params
            prune.save_sparse(params, f)
        if not plan.keep_checkpoints:
            for sub in ("checkpoints", "best"):
                shutil.rmtree(d / sub, ignore_errors=True)
        runs.append(
            {
                "seed": s,
                "test": res["test"],
                "sparsity": res["sparsity"],
                "size_mb": _mb(f),
                "file": str(f),
                "steps": res["steps_run"],
                "train_time_s": res["train_time_s"],
                "wall_time_s": res["wall_time_s"],
            }
        )
    r = c.prune.rounds
    return {
        "kind": "prune",
        "target": target,
        "rounds": r,
        "per_round": round_fraction(target, r),
        "steps": c.train.steps,
        "seeds": summary["seeds"],
        "runs": runs,
        "level_wall_time_s": time.perf_counter() - t0,
        **{k: mean_std([x[k] for x in runs]) for k in ("sparsity", "size_mb")},
        "test": summary["test"],  # {metric: [mean, std]}
    }


def mean_std(xs) -> list[float]:
    x = np.asarray(xs, np.float64)
    return [float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0]


# ---------------------------------------------------------------- the whole sweep


def emb_suffix(embedding_bits: int) -> str:
    """The quantised points' and the outputs' name suffix: '' for float embeddings."""
    return f"_emb{embedding_bits}" if embedding_bits else ""


def sweep_model(cfg, model_dir, out: Path, plan: Plan) -> dict:
    scorer = Scorer(cfg, model_dir)
    rec = {
        "path": str(model_dir),
        "params": students.count_params(scorer.params),
        "layers": scorer.config.num_hidden_layers,
        "float": _cached(out / "float", lambda: float_point(scorer, out / "float")),
        "quant": [],
        "prune": [],
    }
    if plan.metric not in rec["float"]["test"]:
        raise ValueError(
            f"metric {plan.metric!r} is not a test metric of this task: "
            f"expected one of {sorted(rec['float']['test'])}"
        )
    for b in plan.bits:
        d = out / f"quant_{b}bit{emb_suffix(plan.embedding_bits)}"
        rec["quant"].append(
            _cached(d, lambda b=b, d=d: quant_point(scorer, b, plan.embedding_bits, d))
        )
    for t in plan.targets:
        d = out / f"prune_{round(t * 100)}"
        rec["prune"].append(prune_level(cfg, model_dir, t, plan, d, scorer.head))
    return rec


def run(cfg, workdir, models: dict, plan: Plan) -> dict:
    """The sweep of every model (name -> fine-tuned HF dir); sweep.json + sweep.png."""
    plan.check()
    if not models:
        raise ValueError("no models: expected name=DIR pairs (e.g. large=DIR,small=DIR)")
    for name, path in models.items():
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"model {name}: no config.json in {path} (expected a fine-tuned HF dir)"
            )
    workdir = Path(workdir).resolve()
    recs = {n: sweep_model(cfg, p, workdir / n, plan) for n, p in models.items()}
    result = {
        "dataset": cfg.data.train_file or cfg.data.dataset,
        "metric": plan.metric,
        "size_rule": SIZE_RULE,
        "plan": dataclasses.asdict(plan),
        "budget": f"each pruning level: rounds x {plan.steps_per_round} steps at batch "
        f"{cfg.train.batch_size}, learning rate {cfg.train.learning_rate:g}, from the fine-tuned "
        "weights",
        "models": recs,
        "equal_size": equal_size(recs, plan.metric),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if sharding.is_primary():
        stem = workdir / ("sweep" + emb_suffix(plan.embedding_bits))
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
        plot(result, stem.with_suffix(".png"))
        stem.with_suffix(".md").write_text(markdown(result))
    for line in result["equal_size"]["lines"]:
        print(line, flush=True)
    return result


# ---------------------------------------------------------------- reading the points


def points(rec: dict, metric: str) -> list[dict]:
    """Every point of one model: label, kind, size_mb (mean, std), metric (mean, std)."""
    f = rec["float"]
    out = [
        dict(
            label="float32", kind="float", size=(f["size_mb"], 0.0), value=(f["test"][metric], 0.0)
        )
    ]
    for q in rec["quant"]:
        out.append(
            dict(
                label=f"{q['bits']}-bit",
                kind="quant",
                size=(q["size_mb"], 0.0),
                value=(q["test"][metric], 0.0),
            )
        )
    for p in rec["prune"]:
        out.append(
            dict(
                label=f"{p['target']:.0%} pruned",
                kind="prune",
                size=tuple(p["size_mb"]),
                value=tuple(p["test"][metric]),
            )
        )
    return out


def equal_size(recs: dict, metric: str) -> dict:
    """Seed 004's question from the points: for every point of the smallest model (fewest
    params), the best point of each larger model no bigger on disk, and the difference."""
    if len(recs) < 2:
        return {"rows": [], "lines": ["one model only: no equal-size comparison"]}
    order = sorted(recs, key=lambda n: recs[n]["params"])
    small, rows, lines = order[0], [], []
    for big in order[1:]:
        cands = points(recs[big], metric)
        for p in points(recs[small], metric):
            fit = [c for c in cands if c["size"][0] <= p["size"][0]]
            if not fit:
                lines.append(
                    f"{small} {p['label']} ({p['size'][0]:.1f} MB): no {big} point as small"
                )
                continue
            b = max(fit, key=lambda c: c["value"][0])
            d = b["value"][0] - p["value"][0]
            rows.append(
                {
                    "small": small,
                    "small_point": p["label"],
                    "small_mb": p["size"][0],
                    "small_value": p["value"],
                    "large": big,
                    "large_point": b["label"],
                    "large_mb": b["size"][0],
                    "large_value": b["value"],
                    "difference": d,
                }
            )
            lines.append(
                f"{small} {p['label']} ({p['size'][0]:.1f} MB): {metric} {p['value'][0]:.4f} ± "
                f"{p['value'][1]:.4f}; best {big} within that size: {b['label']} "
                f"({b['size'][0]:.1f} MB) {b['value'][0]:.4f} ± {b['value'][1]:.4f}: "
                f"{big} {'more' if d > 0 else 'less' if d < 0 else 'as'} accurate by {abs(d):.4f}"
            )
    return {"rows": rows, "lines": lines}


KINDS = {"prune": "magnitude pruning", "quant": "quantisation"}


def _pm(mean_std_, digits: int) -> str:
    m, sd = mean_std_
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if sd else f"{m:.{digits}f}"


def markdown(result: dict) -> str:
    """sweep.md: one row per point of every model (mean ± std over seeds for pruning), then the
    equal-size comparison lines."""
    metric = result["metric"]
    lines = [
        f"| model | point | size on disk (MB) | test {metric} | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, rec in result["models"].items():
        what = f"{name} ({rec['layers']} layers, {rec['params'] / 1e6:.1f}M)"
        seeds_ = ", ".join(map(str, result["plan"]["seeds"]))
        for p in points(rec, metric):
            n = seeds_ if p["kind"] == "prune" else "deterministic"
            lines.append(
                f"| {what} | {p['label']} | {_pm(p['size'], 2)} | {_pm(p['value'], 4)} | {n} |"
            )
    lines += ["", *(f"- {line}" for line in result["equal_size"]["lines"])]
    return "\n".join(lines) + "\n"


def plot(result: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on CPU boxes / CI
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    style = {"prune": ("o", "-"), "quant": ("s", "--")}  # marker, line
    for i, (name, rec) in enumerate(result["models"].items()):
        colour = f"C{i}"
        pts = points(rec, metric)
        base = pts[0]
        what = f"{name} ({rec['layers']} layers, {rec['params'] / 1e6:.1f}M)"
        ax.plot(*base["size"][:1], base["value"][0], marker="*", markersize=12, color=colour,
                linestyle="none", label=f"{what}: float32")  # fmt: skip
        for kind, (marker, line) in style.items():
            ps = [base] + sorted((p for p in pts if p["kind"] == kind), key=lambda p: -p["size"][0])
            xs, ys = [p["size"][0] for p in ps], [p["value"][0] for p in ps]
            ax.plot(xs, ys, color=colour, linestyle=line, linewidth=1)
            ax.errorbar(xs[1:], ys[1:], xerr=[p["size"][1] for p in ps[1:]],
                        yerr=[p["value"][1] for p in ps[1:]], color=colour, marker=marker,
                        linestyle="none", capsize=3,
                        label=f"{what}: {KINDS[kind]}")  # fmt: skip
            for p in ps[1:]:
                ax.annotate(
                    p["label"],
                    (p["size"][0], p["value"][0]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    seeds_ = ", ".join(map(str, result["plan"]["seeds"]))
    ax.set(
        xlabel="compressed size on disk (MB)",
        ylabel=f"test {metric}",
        title=f"{result['dataset']}: test {metric} vs compressed size",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = (
        f"pruning: mean ± std over seeds {seeds_}; quantisation deterministic. "
        f"{result['size_rule']}."
    )
    fig.text(0.01, 0.01, caption, fontsize=6, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
