"""Speed options of the step and the models give the results of the plain paths: the gathered
MLM heads (Objective.gather_masked) == the restricted full step, unrolled layers
(scan_layers=False) == scanned, the decoder's custom gradient == AD's. See scripts/bench.py for
what each buys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import objective, train
from flaxdistil.bench import cases
from flaxdistil.models import Model, ModelConfig, init_params, unstack_layers
from flaxdistil.models import heads as heads_lib

TINY = ModelConfig(
    vocab_size=160,  # above BERT's special ids (<= 103), as cases.random_batch needs
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)


def test_gathered_heads_equal_the_restricted_step():
    """gather_masked=True changes the work, not the result, of restrict_ce_to_mask=True."""
    t_params, s_params, s_cfg = cases.teacher_student(TINY, 1, "mlm")
    batch = cases.random_batch(4, 16, TINY.vocab_size)
    batch["attention_mask"][1, 10:] = 0
    tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
    out = {}
    cos = objective.Match(layer_T=2, layer_S=1, feature="hidden", loss="cos")
    for gather in (False, True):
        spec = objective.Objective(
            use_kd=True,
            matches=(cos,),
            restrict_ce_to_mask=True,
            gather_masked=gather,
            vocab_size=160,
        )
        hp = objective.hparams(
            {"temperature": 2.0, "hard_label_weight": 2.0, "kd_loss_weight": 5.0}, spec
        )
        step = functools.partial(
            train.train_step, student=Model(s_cfg), teacher=Model(TINY), obj=spec, tx=tx
        )
        out[gather] = jax.jit(step)(
            train.create_state(s_params, tx), t_params, batch, jax.random.key(3), hp, None
        )
    (s0, m0), (s1, m1) = out[False], out[True]
    assert float(m1["masked_dropped"]) == 0 and float(m0["masked_tokens"]) > 0
    for k in m0:
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s0.params, s1.params)
    with pytest.raises(ValueError, match="restrict_ce_to_mask=True"):
        objective.Objective(gather_masked=True)


def test_unrolled_layers_equal_scanned():
    params = init_params(TINY, "seq_cls", jax.random.key(0))
    ids = np.arange(2 * 9).reshape(2, 9) % 150 + 5
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    kw = dict(output_hidden_states=True, output_attentions=True)
    scanned = jax.jit(lambda p: Model(TINY, "seq_cls").apply({"params": p}, ids, mask, **kw))(
        params
    )
    flat = unstack_layers(params)
    fresh = Model(TINY, "seq_cls", scan_layers=False).init(jax.random.key(0), ids)["params"]
    assert jax.tree.structure(fresh) == jax.tree.structure(flat)
    unrolled_model = Model(TINY, "seq_cls", scan_layers=False)
    unrolled = jax.jit(lambda p: unrolled_model.apply({"params": p}, ids, mask, **kw))(flat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), scanned, unrolled)
    with pytest.raises(ValueError, match="expects scanned params.*layer_0"):
        unstack_layers(flat)  # already unstacked: a user's mistake, named


def test_vocab_logits_gradient_equals_autodiff():
    y, w, b = (
        jax.random.normal(jax.random.key(i), s) for i, s in enumerate([(2, 3, 8), (11, 8), (11,)])
    )
    cot = jax.random.normal(jax.random.key(9), (2, 3, 11))
    loss = lambda f: lambda *a: jnp.sum(f(*a) * cot)
    want = jax.grad(loss(heads_lib._vocab_logits), argnums=(0, 1, 2))(y, w, b)
    got = jax.jit(jax.grad(loss(heads_lib.vocab_logits), argnums=(0, 1, 2)))(y, w, b)
    np.testing.assert_allclose(heads_lib.vocab_logits(y, w, b), heads_lib._vocab_logits(y, w, b))
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_inference_compiles_cpu_dots_with_eigen():
    """inference_fn's forward is compiled without YNNPACK dots on CPU (jaxlib >= 0.10) and gives a
    plain jit's logits; older jaxlibs and GPUs get no option."""
    from flaxdistil import xla_cpu
    from flaxdistil.models import inference_fn

    assert xla_cpu.inference_options("gpu", (0, 10)) is None
    assert xla_cpu.inference_options("cpu", (0, 9)) is None
    assert xla_cpu.inference_options("cpu", (0, 10)) == xla_cpu.EIGEN_DOTS
    params = init_params(TINY, "seq_cls", jax.random.key(0))
    ids = np.arange(2 * 9).reshape(2, 9) % 150 + 5
    fn, p = inference_fn(TINY, "seq_cls", params)
    hlo = fn.lower(p, ids).compile().as_text()
    plain = jax.jit(lambda p, ids: Model(TINY, "seq_cls").apply({"params": p}, ids)[0])
    assert "ynn" not in hlo  # (a plain jit's HLO holds ynn fusions on the CPUs seen here)
    np.testing.assert_allclose(fn(p, ids), plain(params, ids), atol=1e-5)
