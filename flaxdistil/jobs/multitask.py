"""Multi-task distillation: ``run(cfg, workdir)`` on a config with ``tasks`` (configs/common.py
base('multitask') documents the fields; flaxdistil/multitask.py the engine pieces).

Each task is set up as the single-task job sets one up (jobs/task.setup on a view of the config
with that task's data, teachers, metric and distill fields); the student's encoder is the first
task's student's, and every task keeps its own head. The one Loop trains it, one task per step;
evaluation scores every task on its validation split (``<task>/<metric>`` columns) and their
mean (``mean``, early stopping and the best checkpoint with eval.metric='mean'); the best params
are scored on each test split and each head is exported to ``<workdir>/best_hf/<task>`` and
checked in transformers. Behind scripts/distill_multitask.py; resumes from workdir.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import evaluate, multitask, sharding, train
from flaxdistil import student as students
from flaxdistil.data.batching import Batches
from flaxdistil.jobs import common
from flaxdistil.jobs import task as task_job
from flaxdistil.loop import EarlyStopping, Loop
from flaxdistil.models import Model
from flaxdistil.runner import UsageError

ENTRY_KEYS = ("name", "teacher", "teachers", "metric", "distill")
DEFAULT_METRIC = {
    "classification": "accuracy",
    "regression": "pearson",
    "multilabel": "micro_f1",
    "token_classification": "token_accuracy",
    "qa": "f1",
}


@dataclasses.dataclass
class Task:
    name: str
    cfg: object  # the single-task view of the config
    data: object  # task_data.TaskData
    head: str
    params: dict  # its student's (encoder + head), before the encoder is shared
    config: object  # its student's ModelConfig (num_labels, id2label of its head)
    teachers: list
    metric: str


# ---------------------------------------------------------------- the config


def entries(cfg) -> list[dict]:
    """The tasks, checked: a list of dicts with a unique name and data, known keys only."""
    raw = list(cfg.get("tasks") or [])
    if not raw:
        raise UsageError("tasks is empty: expected [{'name': ..., 'dataset': ...}, ...]")
    data_keys = tuple(cfg.data.keys())
    seen, out = set(), []
    for i, e in enumerate(raw):
        if not hasattr(e, "items"):
            raise UsageError(f"tasks[{i}] expects a dict {{'name': ..., 'dataset': ...}}: {e!r}")
        e = dict(e)
        name = e.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise UsageError(f"tasks[{i}] needs a 'name' (a string without '/'), got {name!r}")
        if name in seen:
            raise UsageError(f"tasks[{i}]: the task name {name!r} is used twice")
        seen.add(name)
        known = ENTRY_KEYS + data_keys
        for k in e:
            if k not in known:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f" (closest: {close[0]!r})" if close else ""
                raise UsageError(f"tasks[{i}] ({name}): unknown key {k!r}{hint}")
        if not e.get("dataset") and not e.get("train_file"):
            raise UsageError(f"tasks[{i}] ({name}) has no data: set 'dataset' or 'train_file'")
        out.append(e)
    return out


def _refuse_unsupported(cfg) -> None:
    """What the multi-task job does not do (yet), each refused with one line."""
    t = cfg.train
    if cfg.teacher.path or cfg.get("teachers"):
        raise UsageError("with tasks, set each task's 'teacher' (or 'teachers'), not teacher.path")
    refused = {
        "teacher.cache": cfg.teacher.cache,
        "train.accumulate > 1": t.accumulate > 1,
        "train.trainable": t.trainable,
        "train.qat_bits": t.qat_bits,
        "prune.sparsity": cfg.prune.sparsity,
        "data.array_record (streamed task data)": cfg.data.array_record
        or any(dict(e).get("array_record") for e in cfg.get("tasks") or []),
        "a multi-process run": jax.process_count() > 1,
    }
    for what, on in refused.items():
        if on:
            raise UsageError(f"{what} is not supported with tasks (flaxdistil/jobs/multitask.py)")


def task_config(cfg, e: dict):
    """The single-task config of entry ``e``: its data fields over ``data``'s, its teachers,
    metric and distill fields."""
    c = copy.deepcopy(cfg)
    c.tasks = []
    where = f"tasks entry {e['name']!r}"
    try:
        for k, v in e.items():
            if k in c.data:
                c.data[k] = v
        c.teacher.path = e.get("teacher", "") or ""
        c.teachers = list(e.get("teachers") or [])
        for k, v in dict(e.get("distill") or {}).items():
            if k not in c.distill:
                close = difflib.get_close_matches(k, list(c.distill), n=1)
                hint = f" (closest: {close[0]!r})" if close else ""
                raise UsageError(f"{where}: unknown distill field {k!r}{hint}")
            c.distill[k] = v
    except TypeError as err:  # a value of the wrong type for its field
        raise UsageError(f"{where}: {err}") from None
    return c


def setup(cfg) -> tuple[list[Task], object]:
    """(the tasks, the tokenizer they share)."""
    _refuse_unsupported(cfg)
    tasks, tokenizer = [], None
    for e in entries(cfg):
        print(f"task {e['name']}:", flush=True)
        c = task_config(cfg, e)
        tok, data, head, params, config, teachers = task_job.setup(c)
        if tokenizer is None:
            tokenizer = tok
        elif tok.get_vocab() != tokenizer.get_vocab():
            raise UsageError(
                f"task {e['name']!r}'s tokenizer differs from task {tasks[0].name!r}'s: one "
                "student encoder needs one vocabulary"
            )
        metric = e.get("metric") or DEFAULT_METRIC[data.spec.task_type]
        c.eval.metric = metric
        tasks.append(Task(e["name"], c, data, head, params, config, teachers, metric))
    return tasks, tokenizer


def _loop_config(cfg, tasks):
    """cfg with eval.mode resolved for eval.metric: 'mean' takes the tasks' own direction,
    which must agree; '<task>/<metric>' that metric's."""
    c, names = copy.deepcopy(cfg), [t.name for t in tasks]
    metric, mode = cfg.eval.metric, cfg.eval.mode
    if metric == "mean":
        if mode == "auto":
            modes = {t.name: EarlyStopping(t.metric).mode for t in tasks}
            if len(set(modes.values())) > 1:
                raise UsageError(
                    f"eval.metric 'mean' averages metrics of opposite directions {modes}: "
                    "choose the tasks' metrics alike or set eval.metric='<task>/<metric>'"
                )
            c.eval.mode = modes[names[0]]
    elif metric.partition("/")[0] not in names:
        raise UsageError(
            f"eval.metric with tasks is 'mean' (the mean of the tasks' metrics) or "
            f"'<task>/<metric>' with a task of {names}, got {metric!r}"
        )
    elif mode == "auto":
        c.eval.mode = EarlyStopping(metric.partition("/")[2]).mode
    return c


# ---------------------------------------------------------------- the engine


def build_engine(cfg, tasks, params, objectives, total_steps: int) -> common.Engine:
    """One state (encoder + every head), one compiled step per task (its head, teachers,
    objective and optimizer view), cached in TaskSteps."""
    t = cfg.train
    mesh = sharding.make_mesh(cfg.mesh.fsdp)
    if t.batch_size % mesh.devices.size:
        raise ValueError(
            f"train.batch_size {t.batch_size} does not divide over {mesh.devices.size} devices"
        )
    names = [task.name for task in tasks]
    kw = dict(
        learning_rate=t.learning_rate,
        total_steps=total_steps,
        warmup_steps=int(t.warmup_ratio * total_steps),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
    )
    txs = [multitask.make_optimizer(names, n, **kw) for n in names]
    state = train.create_state(params, txs[0], {})
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    steps, t_params, hparams = [], [], []
    for task, (obj, hp), tx in zip(tasks, objectives, txs):
        model = Model(task.config, task.head, jnp.dtype(t.dtype), t.remat or None, t.attention_impl)
        in_step = task.teachers if obj.needs_teacher else []
        models, tp, t_sh = common.place_teachers(in_step, task.head, t.attention_impl, mesh)
        student = multitask.TaskModel(model, task.name)
        steps.append(train.jit_train_step(obj, student, models, tx, mesh, state_sh, t_sh))
        t_params.append(tp)
        hparams.append(hp)
    step_fn = multitask.TaskSteps(names, steps)
    return common.Engine(state, step_fn, tuple(t_params), tuple(hparams), mesh)


def _objectives(tasks, tokenizer, total: int) -> list:
    out = []
    for task in tasks:
        print(f"task {task.name}:", end=" ", flush=True)
        obj, hp = common.build_objective(
            task.cfg, task.data.spec.task_type, task.config, task.teachers, tokenizer, total
        )
        if obj.matches:
            raise UsageError(
                f"task {task.name!r}: intermediate_matches are not supported with tasks "
                "(the KD on logits and the task loss are)"
            )
        out.append((obj, hp))
    return out


def scorer(tasks, batch_size: int, pad_id: int):
    """``score(params, split) -> {'<task>/<metric>': v, ..., 'mean': mean of the tasks'
    metrics}`` on the multi-task params tree."""
    forwards = [evaluate.make_forward(Model(t.config, t.head)) for t in tasks]

    def score(params, split="validation"):
        out, chosen = {}, []
        for t, forward in zip(tasks, forwards):
            p = multitask.task_params(params, t.name)
            m = evaluate.evaluate_task(forward, p, t.data, split, batch_size=batch_size,
                                       pad_id=pad_id)  # fmt: skip
            if t.metric not in m:
                raise UsageError(f"task {t.name!r}: metric {t.metric!r} is not one of {sorted(m)}")
            out.update({f"{t.name}/{k}": v for k, v in m.items()})
            chosen.append(m[t.metric])
        out["mean"] = float(np.mean(chosen))
        return out

    return score


# ---------------------------------------------------------------- the job


def run(cfg, workdir) -> dict:
    t_begin = time.perf_counter()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    tasks, tokenizer = setup(cfg)
    loop_cfg = _loop_config(cfg, tasks)
    shared, _ = multitask.split_params(tasks[0].params)
    heads = {task.name: multitask.split_params(task.params)[1] for task in tasks}
    params = multitask.combine(shared, heads)
    pad = tokenizer.pad_token_id
    parts = {
        task.name: Batches(task.data.splits["train"], t.batch_size, t.seed + k, pad,
                           t.pad_multiple, group_by_length=t.group_by_length)
        for k, task in enumerate(tasks)
    }  # fmt: skip
    batches = multitask.TaskBatches(parts, cfg.multitask.tau, t.seed)
    shown = ", ".join(f"{n} {w:.3f}" for n, w in zip(batches.names, batches.weights))
    print(f"task sampling (tau {cfg.multitask.tau:g}): {shown}", flush=True)
    print(f"student: {students.count_params(params):,} params, {len(tasks)} heads", flush=True)
    total = common.total_steps(cfg, len(batches) * t.batch_size)
    objectives = _objectives(tasks, tokenizer, total)
    engine = build_engine(cfg, tasks, params, objectives, total)
    score = scorer(tasks, cfg.eval.batch_size, pad)
    out = Loop(loop_cfg, workdir, total, score, t.desc or "distil tasks").run(engine, batches)
    best = jax.device_get(out.best_params(out.state.params))
    test = score(best, "test")
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), flush=True)
    results = _results(cfg, loop_cfg, tasks, batches, best, out, test)
    if cfg.export.hf and sharding.is_primary():
        for task in tasks:
            res = common.export_hf(workdir / "best_hf" / task.name,
                                   multitask.task_params(best, task.name), task.config, task.head,
                                   tokenizer, task.data, pad, cfg.export.check)  # fmt: skip
            results["tasks"][task.name].update(res)
    results["wall_time_s"] = out.wall_time_s(t_begin)
    if sharding.is_primary():
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _results(cfg, loop_cfg, tasks, batches, best, out, test) -> dict:
    steps_per_task = batches.task_counts(out.steps_run)
    per_task = {}
    for task, w in zip(tasks, batches.weights):
        mine = task.name + "/"
        n = students.count_params(multitask.task_params(best, task.name))
        per_task[task.name] = {
            "task": task.data.spec.task_type,
            "dataset": task.cfg.data.train_file or task.cfg.data.dataset,
            "teacher": [tt.path for tt in task.teachers] or None,
            "metric": task.metric,
            "sampling_weight": float(w),
            "steps": steps_per_task[task.name],
            "params": n,  # the encoder and this head: what best_hf/<task> holds
            "test": {k.removeprefix(mine): v for k, v in test.items() if k.startswith(mine)},
        }
    return {
        "tasks": per_task,
        "tau": cfg.multitask.tau,
        "params": students.count_params(best),  # the encoder once and every head
        "layers": tasks[0].config.num_hidden_layers,
        "metric": loop_cfg.eval.metric,
        "best_value": out.early.best,
        "best_step": out.early.best_step,
        "steps_run": out.steps_run,
        "epochs_run": out.steps_run / out.steps_per_epoch,
        "stopped_early": out.early.should_stop,
        "test_mean": test["mean"],
        "test": test,  # flat: '<task>/<metric>' and 'mean' (what scripts/seeds.py summarises)
        "train_time_s": out.train_time_s,
        "resumed_at_step": out.resumed_at_step,
    }
