"""Asynchronous checkpoints and the prefetching loop: a save written in the background while the
next steps donate the state's buffers restores exactly the state of its step; the loop with
prefetch + async saves logs the same numbers as the plain loop and as the step called by hand;
the prefetcher reports the position of the batches taken, not of those prepared ahead. The
SIGKILL-during-async-saves resume is in tests/test_distill_job.py (the jobs run async saves by
default)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from flaxdistil import derive_student, init_student, sharding, train
from flaxdistil.checkpoint import Checkpointer
from flaxdistil.data.batching import Batches
from flaxdistil.data.tasks import from_rows
from flaxdistil.jobs.common import Engine
from flaxdistil.loop import Loop
from flaxdistil.models import Model, ModelConfig
from flaxdistil.objective import Match, Objective, hparams
from flaxdistil.prefetch import DeviceBatches

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
MLM = dict(mlm_probability=0.3, mask_token_id=4, vocab_size=64, special_ids=(0, 1, 2, 3, 4))
COS = Match(layer_T=4, layer_S=2, feature="hidden", loss="cos", weight=1.0)
SPEC = Objective(task="mlm", use_kd=True, kd_loss_type="kl_t2", matches=(COS,), **MLM)
HP = hparams({"temperature": 2.0, "hard_label_weight": 2.0, "kd_loss_weight": 5.0}, SPEC)
STEPS = 9


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def assert_trees_equal(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- the checkpointer


def test_async_save_then_donating_steps_restores_the_saved_step(tmp_path):
    """The step donates its input: the buffers a background save reads are the ones the next
    step would overwrite. Reference: the same recurrence in NumPy."""
    n = 1 << 21  # 8 MB: the write is still running while the next steps run
    step = jax.jit(lambda s: {"w": s["w"] * 0.5 + s["b"], "b": s["b"] + 1.0}, donate_argnums=0)
    w0, b0 = np.linspace(-1, 1, n, dtype=np.float32), np.full(n, 0.25, np.float32)
    expected, w, b = {}, w0.copy(), b0.copy()
    for k in range(1, 7):
        w, b = w * np.float32(0.5) + b, b + np.float32(1.0)
        expected[k] = {"b": b.copy(), "w": w.copy()}

    ckpt = Checkpointer(tmp_path / "ck", every=0, keep=5, async_save=True)
    state = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    data = {"position": 0}
    for k in range(1, 7):
        before = state
        state = step(state)
        if k == 2:  # nothing holds the buffers: the step really donates them
            assert before["w"].is_deleted()
        if k in (3, 5):
            data["position"] = k
            ckpt.save(k, state, data, force=True)
            data["position"] = -1  # changed before the background write: not what is saved
    assert ckpt.latest_step() == 5
    for k in (3, 5):
        restored, pos = ckpt.restore(jax.tree.map(jnp.zeros_like, state), step=k)
        assert pos == {"position": k}
        assert_trees_equal(restored, expected[k])
    ckpt.close()


# ---------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def engine_parts():
    t_params = init_student(CFG, "mlm", jax.random.key(0))
    rng = np.random.RandomState(1)
    t_params = jax.tree.map(lambda x: x + 0.1 * rng.randn(*x.shape).astype(x.dtype), t_params)
    s_params, s_cfg, _ = derive_student(t_params, CFG, layers=[0, 2])
    tx = train.make_optimizer(learning_rate=3e-3, total_steps=STEPS, warmup_steps=2)
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    step = train.jit_train_step(SPEC, Model(s_cfg, "mlm"), Model(CFG, "mlm"), tx, mesh, rep, rep)
    return s_params, tx, mesh, step, jax.device_put(t_params, rep)


def make_engine(parts) -> Engine:
    s_params, tx, mesh, step, t_params = parts
    state = jax.device_put(train.create_state(s_params, tx), sharding.replicated(mesh))
    return Engine(state, step, t_params, HP, mesh)


def make_batches() -> Batches:
    rng = np.random.RandomState(0)
    rows = [[2, *rng.randint(5, 64, rng.randint(4, 20)), 3] for _ in range(40)]
    return Batches(from_rows(rows, None, np.zeros(len(rows))), 4, seed=3, pad_multiple=8)


def loop_config(**train_fields):
    c = common.base("general")
    c.train.update(seed=7, checkpoint_every=4, log_every=1, **train_fields)
    c.eval.update(every=3, patience=0, metric="mlm_loss")
    return c


def params_score(params) -> dict:
    """A stand-in eval: any deterministic function of the params serves early stopping."""
    return {"mlm_loss": float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(params)))}


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def by_hand(parts, steps: int):
    """The reference: the step called in a plain Python loop on the same batches, the state and
    metrics copied to host after every step."""
    engine, batches = make_engine(parts), make_batches()
    state, rng, states, metrics = engine.state, jax.random.key(7), {}, {}
    for k in range(1, steps + 1):
        batch = sharding.shard_batch(next(batches), engine.mesh)
        state, m = engine.step_fn(state, engine.teacher_params, batch, rng, HP, None)
        states[k], metrics[k] = host_copy(state), {n: float(v) for n, v in host_copy(m).items()}
    return states, metrics


def test_prefetching_async_loop_logs_what_the_plain_loop_and_the_step_give(engine_parts, tmp_path):
    states, metrics = by_hand(engine_parts, STEPS)
    outs = {}
    for name, fields in {
        "plain": dict(prefetch=0, async_checkpoint=False),
        "fast": dict(prefetch=3, async_checkpoint=True),
    }.items():
        loop = Loop(loop_config(**fields), tmp_path / name, STEPS, params_score)
        outs[name] = loop.run(make_engine(engine_parts), make_batches())
        rows = read_csv(tmp_path / name / "train.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
        for r in rows:  # every logged number is the step's own
            for k, v in metrics[int(r["step"])].items():
                assert float(r[k]) == pytest.approx(v, rel=1e-6, abs=1e-7), (name, r["step"], k)
        # every checkpoint (saved while the next steps ran) holds exactly the state of its step
        ckpt = Checkpointer(tmp_path / name / "checkpoints", every=0)
        assert sorted(ckpt.manager.all_steps()) == [8, 9]
        for k in (8, 9):
            restored, pos = ckpt.restore(outs[name].state, step=k)
            assert_trees_equal(restored, states[k])
            assert pos["data"]["index"] == k % len(make_batches())
        best, _ = Checkpointer(tmp_path / name / "best", every=0).restore(outs[name].state.params)
        step = outs[name].early.best_step
        assert_trees_equal(best, states[step].params)
    assert read_csv(tmp_path / "plain" / "train.csv") == read_csv(tmp_path / "fast" / "train.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]
    eval_rows = [strip(read_csv(tmp_path / n / "eval.csv")) for n in ("plain", "fast")]
    assert eval_rows[0] == eval_rows[1] and [int(r["step"]) for r in eval_rows[0]] == [3, 6, 9]
    assert_trees_equal(host_copy(outs["plain"].state), host_copy(outs["fast"].state))


def test_prefetching_loop_resumes_exactly(engine_parts, tmp_path):
    """Stopped after 5 steps (a checkpoint at 4, batches prepared beyond it), then resumed to the
    end: the state and the CSV equal the step called by hand."""
    states, metrics = by_hand(engine_parts, STEPS)
    cfg = loop_config(prefetch=3, async_checkpoint=True)
    Loop(cfg, tmp_path, 5).run(make_engine(engine_parts), make_batches())
    out = Loop(cfg, tmp_path, STEPS).run(make_engine(engine_parts), make_batches())
    assert_trees_equal(host_copy(out.state), states[STEPS])
    rows = read_csv(tmp_path / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert float(r["loss"]) == pytest.approx(metrics[int(r["step"])]["loss"], rel=1e-6)


# ---------------------------------------------------------------- the prefetcher


def test_prefetcher_reports_the_position_of_the_batches_taken():
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    ahead, plain = DeviceBatches(make_batches(), mesh, depth=4), make_batches()
    try:
        for _ in range(len(plain) + 2):  # across an epoch boundary
            got, want = next(ahead), next(plain)
            for k in want:
                np.testing.assert_array_equal(np.asarray(got[k]), want[k])
            assert ahead.state_dict() == plain.state_dict()
            assert (ahead.epoch, ahead.index, ahead.epoch_done) == (
                plain.epoch,
                plain.index,
                plain.epoch_done,
            )
    finally:
        ahead.close()


class Failing:
    """Two good batches, then the error a bad batch raises."""

    batch_size, epoch, index, epoch_done = 4, 0, 0, False

    def __len__(self):
        return 10

    def state_dict(self):
        return {"index": self.index}

    def __next__(self):
        if self.index == 2:
            raise ValueError("batch dimension 3 of 'input_ids' is not divisible by the 2 devices")
        self.index += 1
        return {"input_ids": np.zeros((4, 8), np.int32)}


@pytest.mark.parametrize("depth", [0, 3])
def test_prefetcher_raises_a_batch_error_where_the_batch_is_taken(depth):
    feed = DeviceBatches(Failing(), sharding.make_mesh(1, jax.devices()[:1]), depth)
    try:
        next(feed), next(feed)
        with pytest.raises(ValueError, match="not divisible by the 2 devices"):
            next(feed)
    finally:
        feed.close()
