"""The teachers of a config scored alone and as an ensemble: ``run(cfg, workdir)``.

The ensemble is the KD target the students of that config learn from: the weighted mean of the
teachers' logits (``distill.teacher_average='logits'``, TextBrewer's multi-teacher rule) or of
their probabilities ('probs'), with each entry's ``weight``. Each teacher and the ensemble are
scored on the validation and test splits of ``data``; ``<workdir>/results.json`` holds them all.
Behind scripts/evaluate_teachers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flaxdistil import evaluate, sharding
from flaxdistil import teachers as teachers_
from flaxdistil.data import task_data
from flaxdistil.jobs import common

SPLITS = ("validation", "test")


def run(cfg, workdir) -> dict:
    if not teachers_.entries(cfg):
        raise ValueError("no teacher to score: set teacher.path or teachers")
    tokenizer = common.load_tokenizer(cfg)
    data = task_data.load_task_data(cfg.data, tokenizer, cfg.data.cache_dir or None)
    task = data.spec.task_type
    head = task_data.HEADS[task]
    fields = task_data.head_fields(data)
    fields.pop("id2label", None)
    teachers = common.load_teachers(cfg, head, **fields)
    common.teacher_tokenizers(teachers, teachers[0].config, tokenizer, task)
    own = [t.path for t in teachers if t.own_tokenizer is not None]
    if own:  # its outputs would need the data encoded its way and aligned to the others'
        raise ValueError(
            f"the teachers' ensemble needs one tokenizer: {', '.join(own)} tokenize(s) "
            f"differently from {teachers[0].path}"
        )
    pad, bs = tokenizer.pad_token_id, cfg.eval.batch_size
    outs = {s: [] for s in SPLITS}
    results = {"task": task, "dataset": cfg.data.train_file or cfg.data.dataset, "teachers": []}
    for t in teachers:
        forward = evaluate.make_forward(t.model(head))
        row, params = {"path": t.path, "weight": t.weight}, t.run_params()
        for s in SPLITS:
            outs[s].append(evaluate.predict(forward, params, data.splits[s], bs, pad))
            row[s] = evaluate.score_outputs(outs[s][-1], data, s)
        _print(t.path, row["test"])
        results["teachers"].append(row)
    average = cfg.distill.teacher_average
    weights = [t.weight for t in teachers]
    results["ensemble"] = {"average": average, "weights": weights}
    for s in SPLITS:
        mixed = evaluate.ensemble_outputs(outs[s], weights, average, task)
        results["ensemble"][s] = evaluate.score_outputs(mixed, data, s)
    _print(f"ensemble of {len(teachers)} ({average})", results["ensemble"]["test"])
    results["teachers_test_mean_std"] = _mean_std([r["test"] for r in results["teachers"]])
    if sharding.is_primary():
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _print(name: str, scores: dict) -> None:
    print(f"{name}: test " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)


def _mean_std(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if all(isinstance(r.get(k), int | float) for r in rows)]
    out = {}
    for k in keys:
        x = np.asarray([r[k] for r in rows], np.float64)
        out[k] = [float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0]
    return out
