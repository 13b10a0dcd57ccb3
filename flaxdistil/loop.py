"""The one training loop every job runs.

Dispatch-ahead metrics: the host dispatches up to ``AHEAD`` steps ahead of the device, each
step's metrics stay on the device, and those of the finished steps are fetched together about
once a second (all of them before each eval and save), so the host never makes the device wait
between steps; every step's metrics are still checked (a stop with one clear line on a
non-finite loss that never saves the bad state) and logged at ``train.log_every``. The batches
are collated and placed on the devices ahead in a background thread (``train.prefetch``,
flaxdistil/prefetch.py). A CSV of every loss term and TensorBoard (``train.csv``), a progress
bar, evaluation every ``eval.every`` steps, at each epoch end (``eval.at_epoch_end``) and at the
last step (``eval.csv``), early stopping with patience, the best params kept
(``<workdir>/best``), orbax checkpoints of the state + data position + early-stopping state
every ``train.checkpoint_every`` steps and at the end (``<workdir>/checkpoints``), written in
the background while training goes on (``train.async_checkpoint``; the run waits for them
before it returns), and exact resume from them.

Multi-host: every process runs the loop in lockstep on its share of each global batch; process 0
alone writes the CSVs, TensorBoard and the progress bar, all processes take part in the orbax
saves (orbax writes each replicated array once). The checkpointed data position is global, so a
run resumes with the same or a different number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import jax

from flaxdistil import sharding
from flaxdistil.checkpoint import Checkpointer
from flaxdistil.logger import MetricsLogger, Progress, check_finite
from flaxdistil.prefetch import DeviceBatches

STALE = ("best", "tb", "train.csv", "eval.csv", "results.json")
FETCH_EVERY_S = 1.0  # finished steps' metrics fetched about this often (the bar's refresh)
AHEAD = 8  # steps dispatched ahead of the last finished one: the device never waits for the host


def _finished(pending: list) -> int:
    """How many of the oldest pending steps have finished (steps finish in order)."""
    n = 0
    while n < len(pending) and all(x.is_ready() for x in jax.tree.leaves(pending[n][1])):
        n += 1
    return n


class EarlyStopping:
    """Tracks the best eval value; ``should_stop`` once ``patience`` evals in a row failed to
    improve on it by more than ``min_delta``. mode 'auto': min for loss-like metrics."""

    def __init__(self, metric: str, mode: str = "auto", patience: int = 3, min_delta: float = 0.0):
        if mode == "auto":
            mode = "min" if metric in ("loss", "mse") or metric.endswith("loss") else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"eval.mode must be 'min', 'max' or 'auto', got {mode!r}")
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


@dataclasses.dataclass
class Outcome:
    state: object
    early: EarlyStopping
    best: Checkpointer
    steps_run: int
    steps_per_epoch: int
    train_time_s: float  # with the training time of the processes before a resume
    checkpoint_s: float = 0.0  # of train_time_s, spent blocked in checkpoint saves and waits
    resumed_at_step: int = 0  # 0: this process started the run
    carried_s: float = 0.0  # of train_time_s, spent by earlier processes (from the checkpoint)

    def wall_time_s(self, t_begin: float) -> float:
        """Seconds since ``t_begin`` (this process's start, time.perf_counter) plus the training
        time carried over a resume, so a resumed run's wall time is not just its last part (the
        setup time of the processes before it is not known, so not counted)."""
        return time.perf_counter() - t_begin + self.carried_s

    def best_params(self, template):
        """NumPy params of the best eval (the last state's when nothing was evaluated), the same
        on every process."""
        if self.best.latest_step() is None:
            return sharding.to_host(self.state.params)
        params, _ = self.best.restore(template)
        return sharding.to_host(params)


class Loop:
    """``Loop(cfg, workdir, total_steps, evaluate).run(engine, batches)``.

    ``evaluate(params) -> {metric: value}`` scores the validation data; ``engine.step_fn(state,
    teacher_params, batch, rng, hparams, token_weights)`` is the jitted train step."""

    def __init__(self, cfg, workdir, total_steps: int, evaluate=None, desc: str = "train"):
        self.t, self.e = cfg.train, cfg.eval
        self.workdir, self.total, self.evaluate, self.desc = (
            Path(workdir),
            total_steps,
            evaluate,
            desc,
        )
        async_save = bool(self.t.async_checkpoint)
        self.last = Checkpointer(self.workdir / "checkpoints", 0, keep=2, async_save=async_save)
        self.primary = sharding.is_primary()
        if self.last.latest_step() is None and self.primary:  # old outputs would pass for ours
            for stale in STALE:
                path = self.workdir / stale
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        sharding.barrier("loop: stale outputs removed")  # before another process opens best/
        self.best = Checkpointer(self.workdir / "best", 0, keep=1, async_save=async_save)
        self.early = EarlyStopping(self.e.metric, self.e.mode, self.e.patience, self.e.min_delta)
        self.train_log = MetricsLogger(self.workdir, "train", active=self.primary)
        self.eval_log = MetricsLogger(self.workdir, "eval", active=self.primary)
        self.elapsed0, self.evals = 0.0, 0

    def run(self, engine, batches, token_weights=None) -> Outcome:
        """Train ``engine`` (jobs.common.Engine: state, compiled step, teacher params, hparams,
        mesh) on ``batches`` to the total step count, from the last checkpoint if there is one."""
        batches.select_rows(*sharding.process_rows(engine.mesh, batches.batch_size))
        state, start = self._maybe_resume(engine.state, batches)
        self.t0 = time.perf_counter() - self.elapsed0
        self.bar = Progress(self.total, start, self.desc, disable=not self.primary)
        feed = DeviceBatches(batches, engine.mesh, int(self.t.prefetch))
        try:
            state, step = self._steps(engine, feed, state, start, token_weights)
        finally:
            feed.close()
            self.bar.close()
            for log in (self.train_log, self.eval_log):
                log.close()
            for ckpt in (self.last, self.best):  # a save in flight reaches the disk before the
                ckpt.wait()  # job reads the best params or exports, and when the run failed
        train_time = time.perf_counter() - self.t0
        saves = self.last.blocked_s + self.best.blocked_s
        return Outcome(
            state, self.early, self.best, step, len(batches), train_time, saves,
            resumed_at_step=start, carried_s=self.elapsed0,
        )  # fmt: skip

    def _steps(self, engine, feed, state, step: int, token_weights):
        step_fn = sharding.compile_together(engine.step_fn)
        t_params, hparams, rng = engine.teacher_params, engine.hparams, jax.random.key(self.t.seed)
        pending: list = []  # (step, metrics still on the device), oldest first
        self.fetched_at = time.perf_counter()
        while step < self.total and not self.early.should_stop:
            batch = next(feed)
            state, metrics = step_fn(state, t_params, batch, rng, hparams, token_weights)
            step += 1
            pending.append((step, metrics))
            if len(pending) > AHEAD:  # the host's lead over the device stays AHEAD steps
                jax.block_until_ready(pending[-AHEAD - 1][1])
            if time.perf_counter() - self.fetched_at >= FETCH_EVERY_S:
                done = _finished(pending)  # fetched without waiting: the device keeps going
                self._flush(pending[:done])
                del pending[:done]
            eval_due = self._eval_due(step, feed)
            save_due = step == self.total or (
                self.t.checkpoint_every and step % self.t.checkpoint_every == 0
            )
            if eval_due or save_due:
                self._flush(pending)  # never evaluate or save a state whose loss is NaN
                pending.clear()
            if eval_due:
                self._eval(step, state, feed)
            if save_due:
                self._save(step, state, feed)
        if pending:  # stopped early
            self._flush(pending)
            self._save(step, state, feed)
        return state, step

    def _eval_due(self, step: int, batches) -> bool:
        if self.evaluate is None:
            return False
        every = self.e.every and step % self.e.every == 0
        return bool(every or (self.e.at_epoch_end and batches.epoch_done) or step == self.total)

    def _maybe_resume(self, state, batches):
        if self.last.latest_step() is None:
            return state, 0
        state, pos = self.last.restore(state)
        step = int(state.step)
        batches.load_state_dict(pos["data"])
        self.early.load_state_dict(pos["early"])
        self.elapsed0, self.evals = pos["elapsed"], pos["evals"]
        for log in (self.train_log, self.eval_log):
            log.truncate_after(step)
        if self.primary:
            print(f"resumed from step {step} in {self.workdir}", flush=True)
        return state, step

    def _save(self, step: int, state, batches) -> None:
        pos = {
            "data": batches.state_dict(),
            "early": self.early.state_dict(),
            "elapsed": time.perf_counter() - self.t0,
            "evals": self.evals,
        }
        self.last.save(step, state, pos, force=True)

    def _flush(self, items: list) -> None:
        """Fetch the metrics of ``items`` ((step, metrics) in step order) in one transfer, check
        each step's (a non-finite one stops the run there), log and show them."""
        if not items:
            return
        fetched = jax.device_get([m for _, m in items])
        self.fetched_at = time.perf_counter()
        tokens, shown = 0, {}
        for (step, _), m in zip(items, fetched):
            host = {k: float(v) for k, v in m.items()}
            check_finite(step, host)
            if step % self.t.log_every == 0 or step == self.total:
                self.train_log.write(step, host)
            tokens += int(host["tokens"])
            shown = {  # a multi-task run's '<task>/loss' too
                k: v
                for k, v in host.items()
                if k == "loss" or k.endswith("/loss") or (k.startswith("loss_") and v)
            }
        self.bar.update(len(items), tokens, shown)

    def _eval(self, step: int, state, batches) -> None:
        m = self.evaluate(state.params)
        if self.e.metric not in m:
            raise ValueError(f"eval.metric {self.e.metric!r} is not an eval metric: {sorted(m)}")
        improved = self.early.update(step, m[self.e.metric])
        self.evals += 1
        epoch = batches.epoch + batches.index / max(len(batches), 1)
        row = {"epoch": epoch, **{f"eval_{k}": v for k, v in m.items()}}
        row["elapsed_s"] = time.perf_counter() - self.t0
        self.eval_log.write(step, row)
        if improved:
            self.best.save(step, state.params, {"step": step, "validation": m}, force=True)
        if not self.primary:
            return
        mark = " *" if improved else ""
        shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        self.bar.bar.write(
            f"step {step} (epoch {epoch:.2f}): {shown}{mark} | best {self.e.metric} "
            f"{self.early.best:.4f} at step {self.early.best_step}"
        )
