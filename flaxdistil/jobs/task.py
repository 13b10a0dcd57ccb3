"""Task fine-tuning and task distillation: ``run(cfg, workdir)``; a teacher makes it distillation.

The hard label is the task's (classification, regression, multi-label, token classification,
QA); with ``teacher.path`` the engine adds KD on the outputs and the intermediate matches.
Evaluation on the validation split every ``eval.every`` steps and at each epoch end, early
stopping on ``eval.metric``, the best params kept and scored on the test split, exported to
``<workdir>/best_hf`` and checked in transformers. Behind scripts/finetune.py,
scripts/distill_task.py and scripts/compare_models.py; resumes from workdir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from flaxdistil import evaluate, hf, sharding
from flaxdistil import student as students
from flaxdistil.data import task_data
from flaxdistil.data.batching import Batches
from flaxdistil.data.tasks import collate
from flaxdistil.jobs import common
from flaxdistil.loop import Loop
from flaxdistil.models import Model


def _with_labels(pre, id2label):
    if pre is not None and id2label is not None:
        pre.config = pre.config.replace(id2label=id2label)
    return pre


def setup(cfg):
    """(tokenizer, data, head, student params, student config, origin, teacher or None)."""
    rng = jax.random.key(cfg.train.seed)
    tokenizer = common.load_tokenizer(cfg)
    data = task_data.load_task_data(cfg.data, tokenizer, cfg.data.cache_dir or None)
    for report in data.reports:
        if report.skipped:
            print(report, flush=True)
    head = task_data.HEADS[data.spec.task_type]
    fields = task_data.head_fields(data)
    id2label = fields.pop("id2label", None)  # load_pretrained resets it when num_labels is given
    teacher = _with_labels(common.load_teacher(cfg, head, **fields), id2label)
    params, config, origin = common.build_student(cfg, teacher, head, rng, **fields)
    if id2label is not None:
        config = config.replace(id2label=id2label)
    common.check_vocab(tokenizer, config, *([teacher.config] if teacher else []))
    sizes = ", ".join(f"{len(e):,} {s}" for s, e in data.splits.items())
    print(f"data: {cfg.data.train_file or cfg.data.dataset} ({data.spec.task_type}): {sizes}")
    print(f"student: {origin}; {students.count_params(params):,} params", flush=True)
    if teacher is not None:
        n = students.count_params(teacher.params)
        print(f"teacher: {cfg.teacher.path}; {n:,} params", flush=True)
    return tokenizer, data, head, params, config, teacher


def run(cfg, workdir) -> dict:
    t_begin = time.perf_counter()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t, e = cfg.train, cfg.eval
    tokenizer, data, head, params, s_cfg, teacher = setup(cfg)
    task = data.spec.task_type
    train_rows = data.splits["train"]
    total = common.total_steps(cfg, len(train_rows))
    t_cfg = teacher.config if teacher else None
    obj, hparams = common.build_objective(cfg, task, s_cfg, t_cfg, tokenizer, total)
    engine = common.build_engine(cfg, head, params, s_cfg, teacher, obj, hparams, total)
    pad = tokenizer.pad_token_id
    batches = Batches(
        train_rows, t.batch_size, t.seed, pad, t.pad_multiple, group_by_length=t.group_by_length
    )
    forward = evaluate.make_forward(Model(s_cfg, head))
    score = lambda p, split="validation": evaluate.evaluate_task(
        forward, p, data, split, batch_size=e.batch_size, pad_id=pad
    )
    desc = t.desc or ("distil" if obj.needs_teacher else "finetune")
    out = Loop(cfg, workdir, total, score, desc).run(engine, batches)
    best = jax.device_get(out.best_params(out.state.params))
    test = score(best, "test")
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), flush=True)
    n = students.count_params(best)
    results = {
        "task": task,
        "dataset": cfg.data.train_file or cfg.data.dataset,
        "student": cfg.student.path or cfg.teacher.path,
        "layers": s_cfg.num_hidden_layers,
        "teacher": cfg.teacher.path or None,
        "params": n,
        "size_mb": n * 4 / 2**20,
        "metric": e.metric,
        "best_value": out.early.best,
        "best_step": out.early.best_step,
        "best_epoch": (out.early.best_step or 0) / out.steps_per_epoch,
        "steps_run": out.steps_run,
        "epochs_run": out.steps_run / out.steps_per_epoch,
        "stopped_early": out.early.should_stop,
        "test": test,
        "train_time_s": out.train_time_s,
    }
    primary = sharding.is_primary()  # process 0 alone exports and writes the results
    if cfg.export.hf and primary:
        results.update(_export(cfg, workdir, best, s_cfg, head, tokenizer, data, pad))
        common.save_projections(workdir / "projections.npz", out.state.proj)
    results["wall_time_s"] = time.perf_counter() - t_begin
    if primary:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    sharding.barrier("task job: outputs written")  # what runs next may read them
    return results


def _export(cfg, workdir: Path, params, s_cfg, head, tokenizer, data, pad_id: int) -> dict:
    out = hf.save_pretrained(workdir / "best_hf", params, s_cfg, head, tokenizer_from=tokenizer)
    res = {"exported_to": str(out)}
    print(f"best model exported to {out}", flush=True)
    if not cfg.export.check:
        return res
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: skipped the transformers check of the export", flush=True)
        return res
    from flaxdistil.parity import compare_with_transformers

    encoded = data.splits["validation"]
    idx = np.arange(min(8, len(encoded)))
    batch = collate(encoded, idx, pad_id, 16)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    diffs = compare_with_transformers(out, params, s_cfg, head, batch)
    res["transformers_max_abs_diff"] = diffs
    res["transformers_check_ok"] = bool(max(diffs.values()) < 1e-3)
    print(f"transformers check of the export: max |diff| {diffs}", flush=True)
    return res
