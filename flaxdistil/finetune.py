"""Task fine-tuning and task-specific distillation: one loop, a teacher turns it into distillation.

``task_step(state, teacher_params, batch, rng, *, student, teacher, task, spec, tx)`` is the pure
step (``jit_task_step`` compiles it once): the hard-label loss of the task, plus with a teacher
``alpha_kd`` x KD on the outputs (soft KL at temperature T; MSE for regression) and an optional
``alpha_hidden`` x cosine/MSE on the last hidden state. ``evaluate`` scores a split with
``metrics.compute``; ``EarlyStopping`` keeps the best eval; ``run_finetune(cfg, workdir)`` is the
job behind scripts/finetune.py and scripts/distill_task.py (configs/finetune_common.py: fields).
Data and model set-up live in finetune_setup.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxdistil import hf, losses, metrics, sharding, train
from flaxdistil import student as students
from flaxdistil.checkpoint import Checkpointer
from flaxdistil.data.tasks import collate
from flaxdistil.finetune_setup import HEADS, TaskData, setup
from flaxdistil.logger import MetricsLogger, Progress, check_finite
from flaxdistil.models import Model

_NEG = -1e4  # logit given to padding positions of QA start/end distributions (finite: no NaN)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static loss weights (hashable: part of the compiled step's identity)."""

    alpha_hard: float = 1.0  # the task loss on gold labels
    alpha_kd: float = 0.0  # KD on the teacher's outputs
    temperature: float = 2.0
    alpha_hidden: float = 0.0  # last hidden state, student vs teacher
    hidden_loss: str = "cos"  # cos | mse

    def __post_init__(self):
        if self.hidden_loss not in ("cos", "mse"):
            raise ValueError(f"hidden_loss must be 'cos' or 'mse', got {self.hidden_loss!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.alpha_kd > 0 or self.alpha_hidden > 0


# ---------------------------------------------------------------- losses


def _qa_logits(logits_BxTx2, mask_BxT):
    """(start, end) logits [B,T] with padding pushed to ~-inf, so it carries no probability."""
    keep = jnp.asarray(mask_BxT).astype(bool)
    x = jnp.asarray(logits_BxTx2, jnp.float32)
    return tuple(jnp.where(keep, x[..., i], _NEG) for i in (0, 1))


def hard_loss(logits, batch: dict, task: str):
    """The loss Hugging Face's *For* heads compute on gold labels, per task type."""
    labels = batch["labels"]
    if task == "classification":
        return losses.cross_entropy(logits, labels)
    if task == "regression":  # MSELoss(logits.squeeze(), labels)
        return losses.mse(logits[:, 0], labels)
    if task == "multilabel":  # BCEWithLogitsLoss
        return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels).mean()
    if task == "token_classification":  # CrossEntropyLoss(ignore_index=-100)
        return losses.mlm_cross_entropy(logits, labels)
    if task == "qa":  # (CE(start) + CE(end)) / 2 over all positions, as BertForQuestionAnswering
        x = jnp.asarray(logits, jnp.float32)
        ce = lambda i: losses.cross_entropy(x[..., i], labels[:, i])
        return (ce(0) + ce(1)) / 2
    raise ValueError(f"unknown task {task!r}: expected one of {list(HEADS)}")


def kd_loss(s_logits, t_logits, batch: dict, task: str, temperature: float):
    """KD on the outputs: soft KL (x T^2) on class / tag / start-end distributions, MSE on a
    regression output, sigmoid BCE against the teacher's tempered probabilities (multi-label)."""
    if task == "classification":
        return losses.soft_kl(s_logits, t_logits, None, temperature)
    if task == "regression":
        return losses.mse(s_logits, t_logits)
    if task == "multilabel":
        target = jax.nn.sigmoid(t_logits.astype(jnp.float32) / temperature)
        bce = optax.sigmoid_binary_cross_entropy(s_logits.astype(jnp.float32) / temperature, target)
        return bce.mean() * temperature**2
    if task == "token_classification":
        return losses.soft_kl(s_logits, t_logits, batch["attention_mask"], temperature)
    if task == "qa":
        mask = batch["attention_mask"]
        (s0, s1), (t0, t1) = _qa_logits(s_logits, mask), _qa_logits(t_logits, mask)
        kl = functools.partial(losses.soft_kl, mask=None, temperature=temperature)
        return (kl(s0, t0) + kl(s1, t1)) / 2
    raise ValueError(f"unknown task {task!r}: expected one of {list(HEADS)}")


def task_loss(
    student_out: dict, teacher_out: dict | None, batch: dict, *, task: str, spec: LossSpec
):
    """(total, terms): alpha_hard * hard + alpha_kd * kd + alpha_hidden * hidden. Terms whose
    weight is 0, or that need an absent teacher, are reported as 0 and not computed."""
    zero = jnp.zeros((), jnp.float32)
    terms = {
        "loss_hard": hard_loss(student_out["logits"], batch, task) if spec.alpha_hard else zero
    }
    terms["loss_kd"] = terms["loss_hidden"] = zero
    if teacher_out is not None:
        teacher_out = jax.lax.stop_gradient(teacher_out)
        if spec.alpha_kd:
            terms["loss_kd"] = kd_loss(
                student_out["logits"], teacher_out["logits"], batch, task, spec.temperature
            )
        if spec.alpha_hidden:
            s_h, t_h = student_out["hidden"], teacher_out["hidden"]
            if s_h.shape[-1] != t_h.shape[-1]:
                raise ValueError(
                    f"alpha_hidden needs equal hidden sizes: student {s_h.shape[-1]}, "
                    f"teacher {t_h.shape[-1]}"
                )
            fn = losses.cosine_hidden if spec.hidden_loss == "cos" else losses.hidden_mse
            terms["loss_hidden"] = fn(s_h, t_h, batch["attention_mask"])
    total = (
        spec.alpha_hard * terms["loss_hard"]
        + spec.alpha_kd * terms["loss_kd"]
        + spec.alpha_hidden * terms["loss_hidden"]
    )
    return total, {"loss": total, **terms}


# ---------------------------------------------------------------- the step


def _inputs(batch: dict):
    return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")


def task_step(state, teacher_params, batch: dict, rng, *, student, teacher, task, spec, tx):
    """One optimizer step; the teacher (if any) runs in eval mode under stop_gradient."""
    dropout_rng = jax.random.fold_in(rng, state.step)
    teacher_out = None
    if teacher is not None and spec.needs_teacher:
        t_logits, t_aux = teacher.apply({"params": teacher_params}, *_inputs(batch))
        teacher_out = {"logits": t_logits.astype(jnp.float32), "hidden": t_aux["last_hidden_state"]}

    def loss_fn(params):
        logits, aux = student.apply(
            {"params": params}, *_inputs(batch), train=True, rngs={"dropout": dropout_rng}
        )
        out = {"logits": logits, "hidden": aux["last_hidden_state"]}
        return task_loss(out, teacher_out, batch, task=task, spec=spec)

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics_ = {
        **terms,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "tokens": batch["attention_mask"].sum(),
    }
    return train.TrainState(state.step + 1, params, opt_state), metrics_


def jit_task_step(student, teacher, task, spec, tx, mesh, state_sharding, teacher_sharding):
    """Compile once: batch split over the mesh, state donated, teacher passed (never donated)."""
    fn = functools.partial(task_step, student=student, teacher=teacher, task=task, spec=spec, tx=tx)
    rep = sharding.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, teacher_sharding, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,),
    )


# ---------------------------------------------------------------- batches


def epoch_plan(
    lengths,
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
    group_batches: int = 50,
) -> np.ndarray:
    """[num_batches, batch_size] row indices of one epoch: a permutation seeded by (seed, epoch),
    remainder dropped (every batch full, so a data mesh splits it evenly). With group_by_length,
    chunks of ``group_batches`` batches are sorted by length and the batches shuffled: far less
    padding, almost as random."""
    rng = np.random.default_rng([seed, epoch])
    n = len(lengths) // batch_size * batch_size
    if n == 0:
        raise ValueError(f"{len(lengths)} training examples make no full batch of {batch_size}")
    order = rng.permutation(len(lengths))[:n]
    if not group_by_length:
        return order.reshape(-1, batch_size)
    chunk = batch_size * group_batches
    parts = [order[i : i + chunk] for i in range(0, n, chunk)]
    order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts])
    plan = order.reshape(-1, batch_size)
    return plan[rng.permutation(len(plan))]


def _collate(encoded, idx, pad_id, pad_multiple, rows: int | None = None) -> dict:
    batch = collate(encoded, idx, pad_id, pad_multiple)
    if rows is not None and len(idx) < rows:  # fill to a fixed row count: one compiled shape
        extra = rows - len(idx)
        fill = {"input_ids": pad_id, "labels": -100 if encoded.token_level else 0}
        batch = {
            k: np.concatenate([v, np.full((extra, *v.shape[1:]), fill.get(k, 0), v.dtype)])
            for k, v in batch.items()
        }
    return batch


# ---------------------------------------------------------------- evaluation


def predict(forward, params, encoded, batch_size: int, pad_id: int, pad_multiple: int = 16):
    """Per-example outputs in the original order, as a list of arrays (first axis per example).
    Rows are run in length order (little padding) and batches filled to a fixed row count."""
    order = np.argsort(encoded.lengths, kind="stable")
    outs = [None] * len(order)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = _collate(encoded, idx, pad_id, pad_multiple, rows=batch_size)
        logits = np.asarray(jax.device_get(forward(params, *_inputs(batch))))
        for r, j in enumerate(idx):
            outs[j] = logits[r]
    return outs


def _pad_stack(rows, value) -> np.ndarray:
    width = max(r.shape[0] for r in rows)
    pad = lambda r: np.pad(
        r, [(0, width - r.shape[0])] + [(0, 0)] * (r.ndim - 1), constant_values=value
    )
    return np.stack([pad(r) for r in rows])


def make_forward(model: Model):
    return jax.jit(lambda p, ids, mask, types: model.apply({"params": p}, ids, mask, types)[0])


def evaluate(forward, params, data: TaskData, split: str, *, batch_size: int = 64, pad_id: int = 0):
    """``metrics.compute``'s metrics for the task, plus 'loss' (the hard loss; not for QA)."""
    task, encoded = data.spec.task_type, data.splits[split]
    outs = predict(forward, params, encoded, batch_size, pad_id)
    if task == "qa":
        from flaxdistil.data.qa import postprocess_predictions

        examples, features = data.qa_eval[split]
        x = _pad_stack(outs, _NEG)
        answers = postprocess_predictions(examples, features, x[..., 0], x[..., 1])
        refs = {ex["id"]: ex["answers"]["text"] for ex in examples}
        return metrics.compute("qa", answers, refs)
    if encoded.token_level:
        logits = _pad_stack(outs, 0.0)
        offsets = encoded.offsets
        rows = [encoded.labels[offsets[i] : offsets[i + 1]] for i in range(len(encoded))]
        labels = _pad_stack(rows, -100)
    else:
        logits, labels = np.stack(outs), encoded.labels
    loss = float(hard_loss(jnp.asarray(logits), {"labels": jnp.asarray(labels)}, task))
    preds = logits[:, 0] if task == "regression" else logits
    return {"loss": loss, **metrics.compute(task, preds, labels, data.spec.label_names)}


class EarlyStopping:
    """Tracks the best eval value; ``should_stop`` once ``patience`` evals in a row failed to
    improve on it by more than ``min_delta``. mode 'auto': min for loss/mse, max otherwise."""

    def __init__(self, metric: str, mode: str = "auto", patience: int = 3, min_delta: float = 0.0):
        if mode == "auto":
            mode = "min" if metric in ("loss", "mse") else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"early-stopping mode must be 'min', 'max' or 'auto', got {mode!r}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0

    def update(self, step: int, value: float) -> bool:
        """Record one eval; True when it is a new best (the caller saves a checkpoint)."""
        if not math.isfinite(value):
            raise ValueError(f"eval {self.metric} is {value} at step {step}")
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_step, self.bad_evals = d["best"], d["best_step"], d["bad_evals"]


def loss_spec(cfg) -> LossSpec:
    k = cfg.distill
    if not cfg.teacher.path:
        return LossSpec(alpha_hard=k.alpha_hard)
    return LossSpec(k.alpha_hard, k.alpha_kd, k.temperature, k.alpha_hidden, k.hidden_loss)


# ---------------------------------------------------------------- the job


def run_finetune(cfg, workdir) -> dict:
    """Fine-tune (or, with teacher.path, distil) on a task; returns and writes results.json.

    Eval on the validation split every ``train.eval_every`` steps and at each epoch end; early
    stopping on ``train.metric``; the best params kept in ``<workdir>/best`` (orbax) and
    exported to ``<workdir>/best_hf``; test metrics of that best model. With
    ``train.resumable`` the full state is also saved at each eval and a rerun resumes from it.
    """
    t_begin = time.perf_counter()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    job = setup(cfg)
    spec = loss_spec(cfg)
    if spec.needs_teacher and job.teacher is None:
        raise ValueError("distill.alpha_kd / alpha_hidden > 0 need a teacher: set teacher.path")
    t = cfg.train
    steps_per_epoch = len(job.data.splits["train"]) // t.batch_size
    total = t.max_steps or t.epochs * steps_per_epoch
    tx = train.make_optimizer(
        learning_rate=t.learning_rate,
        total_steps=total,
        warmup_steps=int(t.warmup_ratio * total),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
    )
    mesh = sharding.make_mesh()
    state = train.create_state(job.params, tx)
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    teacher_model = t_params = t_sh = None
    if spec.needs_teacher:
        teacher_model = Model(job.teacher.config, job.head)
        t_sh = sharding.tree_shardings(job.teacher.params, mesh)
        t_params = jax.device_put(job.teacher.params, t_sh)
    student = Model(job.config, job.head, dtype=jnp.dtype(t.dtype), remat=t.remat or None)
    step_fn = jit_task_step(student, teacher_model, job.task, spec, tx, mesh, state_sh, t_sh)
    loop = _Loop(job, workdir, mesh, steps_per_epoch, total)
    state = loop.run(state, t_params, step_fn)
    results = _finish(job, workdir, loop, state)
    results["wall_time_s"] = time.perf_counter() - t_begin
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


class _Loop:
    """The training loop's state: early stopping, checkpoints, logs, the progress bar."""

    def __init__(self, job, workdir: Path, mesh, steps_per_epoch: int, total: int):
        t = job.cfg.train
        self.job, self.t, self.mesh = job, t, mesh
        self.steps_per_epoch, self.total = steps_per_epoch, total
        self.forward = make_forward(Model(job.config, job.head))
        self.pad = job.tokenizer.pad_token_id
        self.early = EarlyStopping(t.metric, t.mode, t.patience, t.min_delta)
        self.last = Checkpointer(workdir / "checkpoints", every=0, keep=1) if t.resumable else None
        if self.last is None or self.last.latest_step() is None:
            # A fresh run: leftovers of an earlier one would pass for this run's best and logs.
            for stale in ("best", "tb", "progress.csv", "train.csv"):
                path = workdir / stale
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        self.best = Checkpointer(workdir / "best", every=0, keep=1)
        self.progress_log = MetricsLogger(workdir, "progress")
        self.train_log = MetricsLogger(workdir, "train")
        self.window: list[float] = []  # train losses since the last eval
        self.elapsed0, self.train_time, self.step = 0.0, 0.0, 0

    def run(self, state, t_params, step_fn):
        t, spe = self.t, self.steps_per_epoch
        state, start = self._maybe_resume(state)
        self.step = start
        self.t0 = time.perf_counter() - self.elapsed0
        self.bar = Progress(self.total, start, t.desc or ("distil" if t_params else "finetune"))
        encoded, rng, pending = self.job.data.splits["train"], jax.random.key(t.seed), None
        try:
            if self.early.should_stop:  # resumed a run that had already stopped early
                return state
            for epoch in range(start // spe, t.epochs if not t.max_steps else 1 << 30):
                plan = epoch_plan(encoded.lengths, t.batch_size, t.seed, epoch, t.group_by_length)
                for b, idx in enumerate(plan):
                    if epoch * spe + b < start:
                        continue  # resumed: these batches were already seen
                    batch = _collate(encoded, idx, self.pad, t.pad_multiple)
                    state, metrics_ = step_fn(
                        state, t_params, sharding.shard_batch(batch, self.mesh), rng
                    )
                    self.step += 1
                    self._flush(pending)  # the metrics of the previous step, fetched late
                    pending = (self.step, metrics_)
                    if (
                        self.step % t.eval_every == 0
                        or b == len(plan) - 1
                        or self.step == self.total
                    ):
                        self._flush(pending)
                        pending = None
                        self._eval(state)
                    if self.early.should_stop or self.step >= self.total:
                        return state
            return state
        finally:
            self._flush(pending)
            self.bar.close()
            self.train_time = time.perf_counter() - self.t0
            for log in (self.progress_log, self.train_log):
                log.close()

    def _maybe_resume(self, state):
        """(state, step): the last saved state and its step, or the given state and 0."""
        if self.last is None or self.last.latest_step() is None:
            return state, 0
        state, pos = self.last.restore(state)
        step = int(state.step)
        self.early.load_state_dict(pos["early"])
        self.elapsed0 = pos["elapsed"]
        for log in (self.progress_log, self.train_log):
            log.truncate_after(step)
        print(f"resumed from step {step}", flush=True)
        return state, step

    def _flush(self, item) -> None:
        if item is None:
            return
        step, m = item
        host = {k: float(v) for k, v in jax.device_get(m).items()}
        check_finite(step, host)
        self.window.append(host["loss"])
        if step % self.t.log_every == 0:
            self.train_log.write(step, host)
        shown = {k: v for k, v in host.items() if k == "loss" or (k.startswith("loss_") and v)}
        self.bar.update(1, int(host["tokens"]), shown)

    def _eval(self, state) -> None:
        t, step = self.t, self.step
        m = evaluate(
            self.forward,
            state.params,
            self.job.data,
            "validation",
            batch_size=t.eval_batch_size,
            pad_id=self.pad,
        )
        if t.metric not in m:
            raise ValueError(f"train.metric {t.metric!r} is not an eval metric: {sorted(m)}")
        improved = self.early.update(step, m[t.metric])
        elapsed = time.perf_counter() - self.t0
        row = {
            "epoch": step / self.steps_per_epoch,
            "train_loss": float(np.mean(self.window)) if self.window else float("nan"),
            **{f"eval_{k}": v for k, v in m.items()},
            "elapsed_s": elapsed,
        }
        self.progress_log.write(step, row)
        self.window = []
        if improved:
            self.best.save(step, state.params, {"step": step, "validation": m}, force=True)
        if self.last is not None:
            pos = {"early": self.early.state_dict(), "elapsed": elapsed}
            self.last.save(step, state, pos, force=True)
        mark = " *" if improved else ""
        self.bar.bar.write(
            f"step {step} (epoch {row['epoch']:.2f}): eval {t.metric} {m[t.metric]:.4f}{mark} "
            f"| best {self.early.best:.4f} at step {self.early.best_step}"
        )


def _finish(job, workdir: Path, loop: _Loop, state) -> dict:
    t = job.cfg.train
    params, best = loop.best.restore(state.params)
    params = jax.device_get(params)
    test = evaluate(
        loop.forward, params, job.data, "test", batch_size=t.eval_batch_size, pad_id=loop.pad
    )
    early, spe = loop.early, loop.steps_per_epoch
    n = students.count_params(params)
    results = {
        "task": job.task,
        "dataset": job.cfg.data.train_file or job.cfg.data.dataset,
        "model": job.cfg.model.path,
        "layers": job.config.num_hidden_layers,
        "teacher": job.cfg.teacher.path or None,
        "params": n,
        "size_mb": n * 4 / 2**20,
        "metric": early.metric,
        "best_value": early.best,
        "best_step": early.best_step,
        "steps_to_best": early.best_step,
        "best_epoch": early.best_step / spe,
        "steps_run": loop.step,
        "epochs_run": loop.step / spe,
        "stopped_early": early.should_stop,
        "validation": best["validation"],
        "test": test,
        "train_time_s": loop.train_time,
    }
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), flush=True)
    if job.cfg.export.hf:
        results.update(_export(job, workdir, params, loop.pad))
    loop.best.close()
    return results


def _export(job, workdir: Path, params, pad_id: int) -> dict:
    out = hf.save_pretrained(
        workdir / "best_hf", params, job.config, job.head, tokenizer_from=job.tokenizer
    )
    res = {"exported_to": str(out)}
    print(f"best model exported to {out}", flush=True)
    if not job.cfg.export.check:
        return res
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: skipped the transformers check of the export", flush=True)
        return res
    from flaxdistil.parity import compare_with_transformers

    encoded = job.data.splits["validation"]
    batch = _collate(encoded, np.arange(min(8, len(encoded))), pad_id, 16)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    diffs = compare_with_transformers(out, params, job.config, job.head, batch)
    res["transformers_max_abs_diff"] = diffs
    res["transformers_check_ok"] = bool(max(diffs.values()) < 1e-3)
    print(f"transformers check of the export: max |diff| {diffs}", flush=True)
    return res
