"""Task fine-tuning and task distillation: ``run(cfg, workdir)``; a teacher makes it distillation.

The hard label is the task's (classification, regression, multi-label, token classification,
QA); with ``teacher.path`` (or ``teachers``, several) the engine adds KD on the outputs and the
intermediate matches; ``teacher.cache`` reads the teachers' outputs from an on-disk cache.
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

from flaxdistil import evaluate, prune, sharding
from flaxdistil import student as students
from flaxdistil import teachers as teachers_
from flaxdistil.data import task_data
from flaxdistil.jobs import common
from flaxdistil.loop import Loop
from flaxdistil.models import Model


def _with_labels(pre, id2label):
    if pre is not None and id2label is not None:
        pre.config = pre.config.replace(id2label=id2label)
    return pre


def setup(cfg):
    """(tokenizer, data, head, student params, student config, teachers (a list, maybe []))."""
    if cfg.get("tasks"):  # a multi-task config: its own job
        raise ValueError("this config has tasks: run it with scripts/distill_multitask.py")
    rng = jax.random.key(cfg.train.seed)
    tokenizer = common.load_tokenizer(cfg)
    data = task_data.load_task_data(cfg.data, tokenizer, cfg.data.cache_dir or None)
    for report in data.reports:
        if report.skipped:
            print(report, flush=True)
    head = task_data.HEADS[data.spec.task_type]
    fields = task_data.head_fields(data)
    id2label = fields.pop("id2label", None)  # load_pretrained resets it when num_labels is given
    teachers = common.load_teachers(cfg, head, **fields)
    for t in teachers:
        _with_labels(t.pre, id2label)
    first = teachers[0].pre if teachers else None
    params, config, origin = common.build_student(cfg, first, head, rng, **fields)
    if id2label is not None:
        config = config.replace(id2label=id2label)
    common.teacher_tokenizers(teachers, config, tokenizer, data.spec.task_type)
    if data.streamed:
        _refuse_with_stream(cfg, teachers)
    for t in teachers:  # a teacher with its own tokenizer reads the same examples in its tokens
        if t.own_tokenizer is not None:
            t.rows = task_data.encode_split(data, "train", t.own_tokenizer, cfg.data)
    sizes = ", ".join(f"{len(e):,} {s}" for s, e in data.splits.items())
    if data.streamed:
        n = data.manifest["splits"]["train"]["sequences"]
        sizes = f"{n:,} train streamed from {data.streamed}, {sizes}"
    print(f"data: {_data_name(cfg)} ({data.spec.task_type}): {sizes}")
    print(f"student: {origin}; {students.count_params(params):,} params", flush=True)
    for t in teachers:
        n = students.count_params(t.params)
        print(f"teacher: {t.path}; {n:,} params (weight {t.weight:g}, {t.dtype})", flush=True)
    return tokenizer, data, head, params, config, teachers


def _data_name(cfg) -> str:
    d = cfg.data
    return d.get("array_record") or d.train_file or d.dataset


def _refuse_with_stream(cfg, teachers) -> None:
    """What needs the training examples in memory, refused with data.array_record."""
    if cfg.teacher.cache:
        raise ValueError("teacher.cache needs the in-memory examples: unset data.array_record")
    if any(t.own_tokenizer is not None for t in teachers):
        raise ValueError(
            "a teacher with its own tokenizer reads the training examples in its tokens, which "
            "data.array_record does not hold: unset data.array_record or the teacher's tokenizer"
        )


def streamed_batches(cfg, data, pad_id: int):
    """The training batches of a prepared task (data.array_record) through grain."""
    from flaxdistil.data import stream

    d, t = cfg.data, cfg.train
    return stream.StreamBatches(
        d.array_record,
        t.batch_size,
        t.seed,
        pad_id,
        t.pad_multiple,
        group_by_length=t.group_by_length,
        threads=d.read_threads,
        prefetch=d.prefetch,
        workers=d.workers,
    )


def run(cfg, workdir) -> dict:
    t_begin = time.perf_counter()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t, e = cfg.train, cfg.eval
    tokenizer, data, head, params, s_cfg, teachers = setup(cfg)
    task = data.spec.task_type
    pad = tokenizer.pad_token_id
    if data.streamed:
        batches, cached = streamed_batches(cfg, data, pad), False
        total = common.total_steps(cfg, batches.n)
        obj, hparams = common.build_objective(cfg, task, s_cfg, teachers, tokenizer, total)
    else:
        train_rows = data.splits["train"]
        total = common.total_steps(cfg, len(train_rows))
        obj, hparams = common.build_objective(cfg, task, s_cfg, teachers, tokenizer, total)
        batches, cached = common.train_batches(cfg, train_rows, pad, teachers, obj, head)
    engine = common.build_engine(cfg, head, params, s_cfg, teachers, obj, hparams, total, cached)
    forward = evaluate.make_forward(Model(s_cfg, head))
    score = lambda p, split="validation", per_label=False: evaluate.evaluate_task(
        forward, p, data, split, batch_size=e.batch_size, pad_id=pad, per_label=per_label
    )
    desc = t.desc or ("distil" if obj.needs_teacher else "finetune")
    out = Loop(cfg, workdir, total, score, desc).run(engine, batches)
    best = jax.device_get(out.best_params(out.state.params))
    test = score(best, "test", per_label=True)
    per_label = test.pop("per_label", None)  # a table, kept apart from the scalar metrics
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), flush=True)
    n = students.count_params(best)
    results = {
        "task": task,
        "dataset": _data_name(cfg),
        "streamed": bool(data.streamed),
        "student": cfg.student.path or teachers_.first_path(cfg),
        "layers": s_cfg.num_hidden_layers,
        "teacher": _teacher_paths(teachers),
        "teacher_cache": cached,
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
        "test_per_label": per_label,
        "train_time_s": out.train_time_s,
        "resumed_at_step": out.resumed_at_step,
    }
    primary = sharding.is_primary()  # process 0 alone exports and writes the results
    if cfg.prune.sparsity:
        results.update(_pruned(cfg, best, total, out.early.best_step))
    if cfg.export.hf and primary:
        results.update(_export(cfg, workdir, best, s_cfg, head, tokenizer, data, pad))
        common.save_projections(workdir / "projections.npz", out.state.proj)
    results["wall_time_s"] = out.wall_time_s(t_begin)
    if primary:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    sharding.barrier("task job: outputs written")  # what runs next may read them
    return results


def _teacher_paths(teachers):
    """None, the teacher's path, or the list of paths of several teachers."""
    paths = [t.path for t in teachers]
    return paths[0] if len(paths) == 1 else paths or None


def _pruned(cfg, best, total: int, best_step) -> dict:
    """The sparsity of the params kept as best: early stopping may keep ones from before the
    last pruning round, which are less sparse than asked."""
    got = prune.sparsity_of(best)
    last = prune.round_steps(total, cfg.prune.rounds)[-1]
    print(f"pruned: {got:.1%} of the encoder's kernels are zero (asked {cfg.prune.sparsity:.1%})")
    if best_step is not None and best_step <= last:
        print(f"note: the best step {best_step} precedes the last pruning round (step {last + 1})")
    return {"sparsity": got, "sparsity_target": cfg.prune.sparsity}


def _export(cfg, workdir: Path, params, s_cfg, head, tokenizer, data, pad_id: int) -> dict:
    out = workdir / "best_hf"
    return common.export_hf(out, params, s_cfg, head, tokenizer, data, pad_id, cfg.export.check)
