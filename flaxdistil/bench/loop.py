"""The training loop's cost over the pure jitted step, and the checkpoint stall per save.

One distillation set-up (bench.cases: a random teacher, the student sliced from it, DistilBERT's
loss with the MLM heads at the masked tokens), full-length rows of ``seq`` tokens so every batch
is ``batch x seq``, and these cases, each ``steps`` steps from the same fresh state, timed
interleaved ``repeats`` times:

- ``step``: the compiled step called in a plain Python loop on batches already on the device,
  blocking once at the end: the ceiling;
- ``loop``: flaxdistil.loop.Loop as the jobs run it (prefetch thread, metrics fetched about once
  a second, CSV + TensorBoard + progress bar), checkpoints only at the end; ``loop inline`` the
  same with the batches collated on the main thread (train.prefetch=0);
- ``loop + saves``: checkpoints every ``save_every`` steps, synchronous and asynchronous.

Loop tokens/s counts the loop's time less the time blocked in its checkpoint saves and waits
(Outcome.checkpoint_s: the end-of-run save every run has); the stall per save is the extra
wall time of a run with saves over the same run without, divided by the number of extra saves,
so it also counts what a background write takes from the steps' CPU time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from flaxdistil import objective, sharding, train
from flaxdistil.bench import cases
from flaxdistil.data.batching import Batches
from flaxdistil.data.tasks import from_rows
from flaxdistil.jobs.common import Engine
from flaxdistil.models import Model, ModelConfig


def _setup(cfg: ModelConfig, student_layers: int, batch: int, seq: int, steps: int):
    t_params, s_params, s_cfg = cases.teacher_student(cfg, student_layers, "mlm")
    obj = cases.distilbert_objective(cfg, s_cfg, gather=True)
    tx = train.make_optimizer(
        learning_rate=5e-4, total_steps=10_000, warmup_steps=100, max_grad_norm=5.0
    )
    mesh = sharding.make_mesh()
    state = jax.device_get(train.create_state(s_params, tx, proj={}))
    state_sh = sharding.tree_shardings(state, mesh)
    t_sh = sharding.tree_shardings(t_params, mesh)
    step_fn = train.jit_train_step(
        obj, Model(s_cfg, "mlm"), Model(cfg, "mlm"), tx, mesh, state_sh, t_sh
    )
    rows = [cases.random_batch(1, seq, cfg.vocab_size, seed=i)["input_ids"][0] for i in range(8)]
    n_rows = batch * (steps + 1)
    encoded = from_rows([rows[i % len(rows)] for i in range(n_rows)], None, np.zeros(n_rows))
    return {
        "state": state,
        "state_sh": state_sh,
        "step_fn": step_fn,
        "teacher": jax.device_put(t_params, t_sh),
        "hparams": objective.hparams(cases.DISTILBERT_WEIGHTS, obj),
        "mesh": mesh,
        "encoded": encoded,
        "batch": batch,
        "seq": seq,
        "state_mb": sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20,
    }


def _batches(s) -> Batches:
    return Batches(s["encoded"], s["batch"], seed=0, pad_multiple=s["seq"])


def _fresh_state(s):
    return jax.block_until_ready(jax.device_put(s["state"], s["state_sh"]))


def _pure(s, steps: int) -> float:
    batches = _batches(s)
    placed = [sharding.shard_batch(next(batches), s["mesh"]) for _ in range(steps)]
    state, rng = _fresh_state(s), jax.random.key(0)
    t0 = time.perf_counter()
    for b in placed:
        state, metrics = s["step_fn"](state, s["teacher"], b, rng, s["hparams"], None)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0


def _loop(s, steps: int, *, prefetch: int, async_save: bool, save_every: int) -> dict:
    from configs import common  # the jobs' defaults for every field the loop reads
    from flaxdistil.loop import Loop

    cfg = common.base("general")
    cfg.train.update(
        seed=0,
        log_every=1,
        prefetch=prefetch,
        async_checkpoint=async_save,
        checkpoint_every=save_every,
    )
    engine = Engine(_fresh_state(s), s["step_fn"], s["teacher"], s["hparams"], s["mesh"])
    with tempfile.TemporaryDirectory() as tmp:
        loop = Loop(cfg, Path(tmp), steps)
        out = loop.run(engine, _batches(s))
        jax.block_until_ready(out.state)
    return {"wall_s": out.train_time_s, "checkpoint_s": out.checkpoint_s}


CASES = {
    "step": None,
    "loop": dict(prefetch=2, async_save=True, save_every=0),
    "loop inline": dict(prefetch=0, async_save=True, save_every=0),
    "loop, sync end save": dict(prefetch=2, async_save=False, save_every=0),
    "loop + sync saves": dict(prefetch=2, async_save=False, save_every=-1),
    "loop + async saves": dict(prefetch=2, async_save=True, save_every=-1),
}


def loop_section(
    cfg: ModelConfig,
    *,
    student_layers: int,
    batch: int,
    seq: int,
    steps: int,
    save_every: int,
    repeats: int,
) -> list[dict]:
    """One row per case: median seconds, tokens/s, share of the pure step's, stall per save."""
    s = _setup(cfg, student_layers, batch, seq, steps)
    _pure(s, 2)  # compile (the loop calls the same jitted function: a cache hit)
    times: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, kw in CASES.items():
            if kw is None:
                times[name].append({"wall_s": _pure(s, steps), "checkpoint_s": 0.0})
            else:
                every = save_every if kw["save_every"] < 0 else 0
                times[name].append(_loop(s, steps, **(kw | {"save_every": every})))
    saves = len(range(save_every, steps, save_every)) if save_every else 0
    return _rows(times, s, steps, saves, save_every)


def _rows(times: dict, s: dict, steps: int, saves: int, save_every: int) -> list[dict]:
    tokens = steps * s["batch"] * s["seq"]
    med = lambda name, key="wall_s": statistics.median(t[key] for t in times[name])
    pure = med("step")
    rows = []
    for name, runs in times.items():
        busy = [t["wall_s"] - t["checkpoint_s"] for t in runs]
        row = {
            "case": name,
            "batch": s["batch"],
            "seq": s["seq"],
            "steps": steps,
            "state_mb": round(s["state_mb"], 1),
            "wall_s": [round(t["wall_s"], 4) for t in runs],
            "checkpoint_s": [round(t["checkpoint_s"], 4) for t in runs],
            "step_ms": 1e3 * statistics.median(busy) / steps,
            "tokens_per_s": tokens / statistics.median(busy),
            "share_of_step": pure / statistics.median(busy),
        }
        base = {"loop + sync saves": "loop, sync end save", "loop + async saves": "loop"}
        if name in base and saves:
            row["save_every"], row["saves"] = save_every, saves
            row["stall_per_save_s"] = (med(name) - med(base[name])) / saves
            # the end-of-run save is in both; what remains is the extra saves' blocking time
            extra = med(name, "checkpoint_s") - med(base[name], "checkpoint_s")
            row["blocked_per_save_s"] = extra / saves
        rows.append(row)
    return rows
