"""The train step and optimizer: sharding invariance, invariants, schedules, accumulation, and a
loss that really drops. Tiny models (vocab 64, hidden 32) with a synthetic special-id set."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxdistil import derive_student, init_student, sharding, train
from flaxdistil.models import Model, ModelConfig
from flaxdistil.objective import Match, Objective, hparams

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
MLM = dict(mlm_probability=0.3, mask_token_id=4, vocab_size=64, special_ids=(0, 1, 2, 3, 4))
# DistilBERT's triple loss: KL x T^2 x 5 + MLM x 2 + cosine of the last hidden states x 1.
COS = Match(layer_T=4, layer_S=2, feature="hidden", loss="cos", weight=1.0)
SPEC = Objective(task="mlm", use_kd=True, kd_loss_type="kl_t2", matches=(COS,), **MLM)
HP = hparams({"temperature": 2.0, "hard_label_weight": 2.0, "kd_loss_weight": 5.0}, SPEC)


def make_batch(batch_size=8, length=16, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, 64, (batch_size, length)).astype(np.int32)
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    for i in range(batch_size):
        n = rng.randint(length // 2, length + 1)
        ids[i, n - 1], ids[i, n:], mask[i, n:] = 3, 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def models():
    """(teacher params, teacher Model, student params, student Model): student = teacher[0, 2]."""
    t_params = init_student(CFG, "mlm", jax.random.key(0))
    # A random teacher and its slice agree too well for the KL to have anything to learn; noise
    # on every teacher weight gives it an opinion of its own.
    rng = np.random.RandomState(1)
    t_params = jax.tree.map(lambda x: x + 0.1 * rng.randn(*x.shape).astype(x.dtype), t_params)
    s_params, s_cfg, _ = derive_student(t_params, CFG, layers=[0, 2])
    return t_params, Model(CFG, "mlm"), s_params, Model(s_cfg, "mlm")


@pytest.fixture(scope="session")
def distiller(models):
    """One compiled step shared by the tests that need a plain distillation step."""
    tx = train.make_optimizer(learning_rate=3e-3, total_steps=30, warmup_steps=3)
    step, mesh = one_device_step(models, tx)
    return step, mesh, tx, jax.device_put(models[0], sharding.replicated(mesh))


def one_device_step(models, tx, spec=SPEC, trainable=None, with_teacher=True):
    t_params, teacher, _, student = models
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    return train.jit_train_step(
        spec,
        student,
        teacher if with_teacher else None,
        tx,
        mesh,
        sharding.replicated(mesh),
        sharding.replicated(mesh) if with_teacher else None,
        trainable,
    ), mesh


def placed_state(params, tx, mesh):
    return jax.device_put(train.create_state(params, tx), sharding.replicated(mesh))


def params_tree(params):
    """The tree the optimizer updates: the student's params and the (here empty) projections."""
    return {"params": params, "proj": {}}


# ---------------------------------------------------------------- sharding


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from flaxdistil import derive_student, init_student, sharding, train
    from flaxdistil.models import Model, ModelConfig
    from flaxdistil.objective import Match, Objective, hparams

    assert jax.device_count() == 8, jax.devices()
    # vocab 512 x hidden 32 = 2**14 entries: word embeddings big enough for the fsdp rule.
    cfg = ModelConfig(vocab_size=512, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=32)
    cos = Match(layer_T=4, layer_S=2, feature="hidden", loss="cos", weight=1.0)
    spec = Objective(task="mlm", use_kd=True, matches=(cos,), mlm_probability=0.3,
                     mask_token_id=4, vocab_size=512, special_ids=(0, 1, 2, 3, 4))
    hp = hparams({"temperature": 2.0, "hard_label_weight": 2.0, "kd_loss_weight": 5.0}, spec)
    t_params = init_student(cfg, "mlm", jax.random.key(0))
    s_params, s_cfg, _ = derive_student(t_params, cfg, layers=[1, 3])
    tx = train.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_steps=1)
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(3):
        ids = rng.randint(5, 512, (8, 16)).astype(np.int32)
        mask = (np.arange(16)[None] < rng.randint(6, 17, (8, 1))).astype(np.int32)
        batches.append({"input_ids": ids * mask, "attention_mask": mask})

    def run(data, fsdp):
        mesh = sharding.make_mesh(fsdp, jax.devices()[: data * fsdp])
        state = train.create_state(s_params, tx)
        state_sh = sharding.tree_shardings(state, mesh)
        t_sh = sharding.tree_shardings(t_params, mesh)
        emb = t_sh["encoder"]["embeddings"]["word_embeddings"]["embedding"].spec
        assert (fsdp > 1) == ("fsdp" in tuple(emb)), emb
        step = train.jit_train_step(spec, Model(s_cfg, "mlm"), Model(cfg, "mlm"), tx, mesh,
                                    state_sh, t_sh)
        state = jax.device_put(state, state_sh)
        teacher = jax.device_put(t_params, t_sh)
        metrics = []
        for b in batches:
            batch = sharding.shard_batch(b, mesh)
            assert len(batch["input_ids"].sharding.device_set) == data * fsdp
            state, m = step(state, teacher, batch, jax.random.key(7), hp, None)
            metrics.append({k: float(v) for k, v in m.items()})
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
        params = {jax.tree_util.keystr(p): np.asarray(x).tolist() for p, x in leaves}
        return {"metrics": metrics, "params": params}

    out = {f"{d}x{f}": run(d, f) for d, f in ((1, 1), (8, 1), (4, 2))}
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def test_sharded_step_equals_single_device(tmp_path):
    script, out = tmp_path / "sharded.py", tmp_path / "out.json"
    script.write_text(SHARDED_SCRIPT)
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())
    ref = runs["1x1"]
    for name in ("8x1", "4x2"):
        got = runs[name]
        assert len(got["metrics"]) == 3
        for m_ref, m in zip(ref["metrics"], got["metrics"]):
            assert m.keys() == m_ref.keys()
            for k in m:
                np.testing.assert_allclose(m[k], m_ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
        assert got["params"].keys() == ref["params"].keys()
        for k in ref["params"]:
            np.testing.assert_allclose(
                got["params"][k], ref["params"][k], rtol=1e-5, atol=1e-5, err_msg=f"{name} {k}"
            )
    # three steps really moved the student (the comparison is not between untouched params)
    assert ref["metrics"][0]["loss"] != ref["metrics"][-1]["loss"]


# ---------------------------------------------------------------- step invariants


def test_step_keeps_teacher_and_donates_state(models, distiller):
    t_params, _, s_params, _ = models
    step, mesh, tx, teacher = distiller
    teacher_copy = jax.tree.map(np.array, t_params)
    state = placed_state(s_params, tx, mesh)
    old = state
    state, metrics = step(state, teacher, make_batch(), jax.random.key(0), HP, None)
    jax.block_until_ready(state)

    # the teacher is an argument, not donated: still readable and unchanged
    for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(teacher_copy)):
        assert not a.is_deleted()
        np.testing.assert_array_equal(np.asarray(a), b)
    # the state is donated: its old buffers are gone
    assert all(x.is_deleted() for x in jax.tree.leaves(old.params))
    assert int(state.step) == 1
    host = jax.device_get(metrics)
    cos = COS.key(0)
    for k in ("loss", "loss_kd", "loss_hard", cos, "grad_norm", "param_norm"):
        assert np.isfinite(host[k]), (k, host[k])
        assert host[k] > 0, k
    np.testing.assert_allclose(
        host["loss"], 5 * host["loss_kd"] + 2 * host["loss_hard"] + host[cos], rtol=1e-5
    )
    # the traced weights and temperature are logged as they were used
    assert (host["kd_loss_weight"], host["hard_label_weight"], host["temperature"]) == (5, 2, 2)
    assert host["tokens"] == make_batch()["attention_mask"].sum()


def test_step_without_teacher(models):
    """Every teacher weight at zero: plain MLM training, no teacher model nor params needed."""
    _, _, s_params, _ = models
    spec = Objective(task="mlm", **MLM)
    assert not spec.needs_teacher
    tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
    step, mesh = one_device_step(models, tx, spec=spec, with_teacher=False)
    state, metrics = step(
        placed_state(s_params, tx, mesh), None, make_batch(), jax.random.key(0), HP, None
    )
    host = jax.device_get(metrics)
    assert "loss_kd" not in host and COS.key(0) not in host
    assert np.isfinite(host["loss_hard"]) and host["loss"] == pytest.approx(2 * host["loss_hard"])
    assert int(state.step) == 1


def test_trainable_freezes_the_rest(models):
    t_params, _, s_params, _ = models
    trainable = lambda path: path.startswith("mlm")
    tx = train.make_optimizer(
        learning_rate=1e-2, total_steps=10, weight_decay=0.1, trainable=trainable
    )
    step, mesh = one_device_step(models, tx, trainable=trainable)
    teacher = jax.device_put(t_params, sharding.replicated(mesh))
    before = jax.tree.map(np.array, s_params)
    state = placed_state(s_params, tx, mesh)
    for seed in (0, 1):
        state, _ = step(state, teacher, make_batch(seed=seed), jax.random.key(0), HP, None)
    after = jax.device_get(state.params)
    np.testing.assert_equal(after["encoder"], before["encoder"])  # bit-identical
    for path, new in jax.tree_util.tree_flatten_with_path(after["mlm"])[0]:
        old = before["mlm"]
        for k in path:
            old = old[k.key]
        assert np.abs(new - old).max() > 1e-4, jax.tree_util.keystr(path)


def test_weight_decay_mask(models):
    _, _, s_params, _ = models
    mask = train.decay_mask(s_params)
    flat = {
        "/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    decayed = {k for k, v in flat.items() if v}
    assert decayed == {k for k in flat if k.endswith(("/kernel", "/embedding"))}
    for k in (
        "encoder/embeddings/word_embeddings/embedding",
        "encoder/layer/attention/query/kernel",
        "mlm/transform/kernel",
    ):
        assert flat[k], k
    for k in ("mlm/bias", "mlm/norm/scale", "encoder/layer/attention/query/bias"):
        assert not flat[k], k
    # and the optimizer applies it: zero gradients leave only the decay, -lr * wd * param
    tx = train.make_optimizer(
        learning_rate=0.1, total_steps=10, weight_decay=0.5, max_grad_norm=None
    )
    zeros = params_tree(jax.tree.map(jnp.zeros_like, s_params))
    tree = params_tree(s_params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(tree), tree)
    updates = updates["params"]
    for k, p in jax.tree_util.tree_flatten_with_path(s_params)[0]:
        name = "/".join(str(x.key) for x in k)
        u = updates
        for x in k:
            u = u[x.key]
        want = -0.1 * 0.5 * np.asarray(p) if name in decayed else np.zeros_like(p)
        np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-9, err_msg=name)


def test_warmup_then_linear_decay():
    """With a constant gradient Adam's step is lr(t) * g / (|g| + eps): read lr(t) off it."""
    lr, total, warmup, eps = 1e-3, 10, 4, 1e-6
    tx = train.make_optimizer(
        learning_rate=lr,
        total_steps=total,
        warmup_steps=warmup,
        weight_decay=0.0,
        max_grad_norm=None,
        eps=eps,
    )
    params = params_tree({"w": jnp.zeros(())})
    grads = params_tree({"w": jnp.ones(())})
    opt_state = tx.init(params)
    got = []
    for _ in range(total + 1):
        updates, opt_state = tx.update(grads, opt_state, params)
        got.append(-float(updates["params"]["w"]) * (1 + eps))
    # hand computed: t/4 * lr up to step 4, then lr * (1 - (t - 4) / 6) down to 0 at step 10
    want = [0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 0.5, 2 / 6, 1 / 6, 0.0]
    np.testing.assert_allclose(got, np.array(want) * lr, rtol=1e-5, atol=1e-12)


def test_gradient_accumulation(models):
    """accumulate=2: the first micro-step leaves params alone; the second applies one AdamW step
    to the mean of the two micro-batch gradients (checked against a hand-written AdamW)."""
    t_params, _, s_params, _ = models
    lr, wd, eps = 1e-2, 0.1, 1e-6
    tx = train.make_optimizer(
        learning_rate=lr,
        total_steps=10,
        weight_decay=wd,
        max_grad_norm=None,
        eps=eps,
        accumulate=2,
    )
    step, mesh = one_device_step(models, tx)
    teacher = jax.device_put(t_params, sharding.replicated(mesh))
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    key = jax.random.key(3)
    p0 = jax.tree.map(np.array, s_params)
    state, _ = step(placed_state(s_params, tx, mesh), teacher, b1, key, HP, None)
    np.testing.assert_equal(jax.device_get(state.params), p0)
    state, _ = step(state, teacher, b2, key, HP, None)
    p2 = jax.device_get(state.params)

    # the micro-batch gradients, by a "transformation" that stores them as its state
    grab = optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p),
        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
    )
    grad_step, _ = one_device_step(models, grab)
    grads = []
    for i, b in enumerate((b1, b2)):  # same masks: the step folds the micro-step index into rng
        s = train.TrainState(jnp.int32(i), s_params, {}, grab.init(params_tree(s_params)))
        s, _ = grad_step(s, teacher, b, key, HP, None)
        grads.append(jax.device_get(s.opt_state)["params"])
    mask = train.decay_mask(s_params)

    def adamw_first_step(p, g1, g2, decay):
        g = (g1 + g2) / 2
        # first Adam step with bias correction: m_hat = g, v_hat = g**2
        return p - lr * (g / (np.abs(g) + eps) + (wd * p if decay else 0.0))

    want = jax.tree.map(adamw_first_step, p0, grads[0], grads[1], mask)
    assert any(
        np.abs(a - b).max() > 1e-3 for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(p0))
    )
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(p2)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_distillation_loss_decreases(models, distiller):
    _, _, s_params, _ = models
    step, mesh, tx, teacher = distiller
    state = placed_state(s_params, tx, mesh)
    batch, losses = make_batch(seed=4), []
    for _ in range(30):
        state, m = step(state, teacher, batch, jax.random.key(5), HP, None)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.9 * first, losses
