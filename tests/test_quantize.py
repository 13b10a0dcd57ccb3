"""Weight quantisation (flaxdistil/quantize.py, flaxdistil/quantized_forward.py) against a NumPy
reference written from the definitions, hand-derived error bounds, and the float model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import flaxdistil
from flaxdistil import init_student, quantize, sharding, train
from flaxdistil import quantized_forward as qf
from flaxdistil.models import Model, ModelConfig
from flaxdistil.objective import Objective, hparams

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    num_labels=3,
)
ALL_BITS = (2, 3, 4, 5, 6, 7, 8)


def np_quantize(w_RxC, bits, group, symmetric):
    """The reference, row by row and group by group: (codes, scales, zeros) of [R, C] with rows =
    output channels; float32 arithmetic as the implementation's."""
    R, C = w_RxC.shape
    g = group or C
    codes = np.zeros((R, C), np.int64)
    scales = np.zeros((R, C // g), np.float32)
    zeros = np.zeros((R, C // g), np.int64)
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    for r in range(R):
        for j in range(C // g):
            x = w_RxC[r, j * g : (j + 1) * g].astype(np.float32)
            if symmetric:
                s = np.float32(np.abs(x).max()) / np.float32(qmax)
                s = s if s > 0 else np.float32(1)
                c, z = np.clip(np.round(x / s), -qmax, qmax), 0
            else:
                lo, hi = min(x.min(), 0), max(x.max(), 0)
                s = np.float32(hi - lo) / np.float32(2**bits - 1)
                s = s if s > 0 else np.float32(1)
                z = np.clip(np.round(qmin - lo / s), qmin, qmax)
                c = np.clip(np.round(x / s) + z, qmin, qmax)
            codes[r, j * g : (j + 1) * g], scales[r, j], zeros[r, j] = c, s, z
    return codes, scales, zeros


def np_dequantize(codes, scales, zeros, group):
    g = group or codes.shape[1]
    return (codes - np.repeat(zeros, g, 1)) * np.repeat(scales, g, 1)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("group", [None, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_matches_numpy_reference(bits, group, symmetric):
    rng = np.random.default_rng(bits)
    kernel = rng.standard_normal((2, 24, 5)).astype(np.float32)  # [layers, in, out]
    kernel[0, :, 1] = 0.0  # an all-zero channel: scale 1, codes 0
    kernel[1, :, 2] = np.abs(kernel[1, :, 2]) + 1.0  # all positive: the range still holds 0
    qt = quantize.quantize_tensor(
        kernel, bits=bits, group_size=group, symmetric=symmetric, transposed=True
    )
    assert qt.q.dtype == jnp.int8 and qt.q.shape == (2, 5, 24) and qt.shape == kernel.shape
    for layer in range(2):
        codes, scales, zeros = np_quantize(kernel[layer].T, bits, group, symmetric)
        np.testing.assert_array_equal(np.asarray(qt.q[layer]), codes)
        # XLA divides by qmax as a multiply by its reciprocal: within 2 ulp of NumPy's division
        np.testing.assert_allclose(np.asarray(qt.scale[layer]), scales, rtol=3e-7)
        if not symmetric:
            np.testing.assert_array_equal(np.asarray(qt.zero[layer]), zeros)
        deq = np.asarray(qt.dequantize()[layer])
        np.testing.assert_allclose(deq, np_dequantize(codes, scales, zeros, group).T, atol=1e-6)
        # In range, and every weight within half a step of its code (the hand bound).
        lo = -(2 ** (bits - 1)) + (1 if symmetric else 0)
        assert codes.min() >= lo and codes.max() <= 2 ** (bits - 1) - 1
        step = np.repeat(scales, group or 24, 1).T
        assert np.all(np.abs(deq - kernel[layer]) <= step / 2 * (1 + 1e-5) + 1e-7)
    assert np.all(np.asarray(qt.dequantize()[0, :, 1]) == 0)


def test_quantize_params_tree_and_round_trip():
    params = init_student(CFG, "mlm", jax.random.key(0))
    qp = quantize.quantize_params(params, bits=4, embeddings=8)
    kernels = [p for p, x in _leaves(qp) if quantize.is_qtensor(x) and x.transposed]
    assert "encoder/layer/fc1/kernel" in kernels and "mlm/transform/kernel" in kernels
    word = qp["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert quantize.is_qtensor(word) and word.bits == 8 and not word.transposed
    assert not quantize.is_qtensor(qp["encoder"]["layer"]["fc1"]["bias"])  # float leaves kept
    back = quantize.dequantize_params(qp)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for (path, x), (_, y) in zip(_leaves(params), _leaves(back)):
        assert x.shape == y.shape and y.dtype == np.float32, path
    # Without embeddings, the tables stay the float arrays they were.
    qp = quantize.quantize_params(params, bits=8)
    emb = qp["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert emb is params["encoder"]["embeddings"]["word_embeddings"]["embedding"]


def _leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=quantize.is_qtensor)[0]
    return [("/".join(str(k.key) for k in p), x) for p, x in flat]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_round_trip(bits):
    rng = np.random.default_rng(bits)
    lo = -(2 ** (bits - 1))
    q = rng.integers(lo, -lo, (3, 7, 5)).astype(np.int8)  # 105 values: odd, not byte-aligned
    packed = quantize.pack(q, bits)
    assert packed.nbytes == -(-q.size * bits // 8)
    np.testing.assert_array_equal(quantize.unpack(packed, bits, q.shape), q)


def test_int4_packs_two_per_byte_high_nibble_first():
    # offset codes q + 8: (-8, 7) -> (0, 15) -> 0x0F; (-7, 0) -> (1, 8) -> 0x18
    packed = quantize.pack(np.array([-8, 7, -7, 0], np.int8), 4)
    assert packed.tolist() == [0x0F, 0x18]
    assert quantize.pack(np.array([-128, 127], np.int8), 8).dtype == np.int8  # int8 as int8


def test_int8_matmul_error_within_hand_bound():
    """x = sx * xq + e with |e| <= sx / 2 per row, so |int8 - x @ W| <= sx / 2 * sum_k |W_kj|
    (W the dequantised kernel; the int32 accumulation is exact)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40)).astype(np.float32) * np.float32([[1], [3], [0.1]] * 2)
    x[5] = 0.0  # an all-zero row
    qt = quantize.quantize_tensor(rng.standard_normal((40, 9)), bits=8, transposed=True)
    w = np.asarray(qt.dequantize(), np.float64)
    got = np.asarray(qf.int8_matmul(jnp.asarray(x), qt), np.float64)
    sx = np.abs(x).max(1, keepdims=True) / 127
    bound = sx / 2 * np.abs(w).sum(0)[None] + 1e-5 * np.abs(x @ w)
    err = np.abs(got - x.astype(np.float64) @ w)
    assert np.all(err <= bound + 1e-6) and np.all(got[5] == 0)
    assert err.max() > 0  # the activations really are quantised


@pytest.fixture(scope="module")
def tiny():
    params = init_student(CFG, "mlm", jax.random.key(1))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 64, (3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [9], [5]]), jnp.int32)
    return params, ids, mask


def test_forward_on_quantised_params(tiny):
    """dequant matmul == the float model on the dequantised params (the same products);
    the int8 path within 2% of the logits' range: per-token 8-bit activations err by at most
    1/254 of each row's max per element, through 2 layers and the MLM head."""
    params, ids, mask = tiny
    qp = quantize.quantize_params(params, bits=8, embeddings=8)
    fn, p = flaxdistil.inference_fn(CFG, "mlm", quantize.dequantize_params(qp))
    want = np.asarray(fn(p, ids, mask))
    for matmul, tol in (("dequant", 1e-5), ("int8", 0.02)):
        fq, pq = quantize.inference_fn(qp, CFG, "mlm", matmul=matmul)
        got = np.asarray(fq(pq, ids, mask))
        err = np.abs(got - want).max() / (want.max() - want.min())
        assert err <= tol, (matmul, err)
    # The scanned layout gives the same forward as the unrolled one.
    fs, ps = quantize.inference_fn(qp, CFG, "mlm", matmul="int8", unroll_layers=False)
    np.testing.assert_allclose(np.asarray(fs(ps, ids, mask)), got, atol=1e-5)


def test_grouped_asymmetric_forward_dequantises(tiny):
    params, ids, mask = tiny
    qp = quantize.quantize_params(params, bits=3, group_size=16, symmetric=False, embeddings=4)
    fn, p = flaxdistil.inference_fn(CFG, "mlm", quantize.dequantize_params(qp))
    fq, pq = quantize.inference_fn(qp, CFG, "mlm", matmul="int8")  # these weights fall back
    np.testing.assert_allclose(np.asarray(fq(pq, ids, mask)), fn(p, ids, mask), atol=1e-5)


@pytest.mark.parametrize("head", ["mlm", "seq_cls"])
def test_compact_checkpoint_round_trip(tiny, tmp_path, head):
    params = init_student(CFG, head, jax.random.key(2))
    qp = quantize.quantize_params(params, bits=4, group_size=8, symmetric=False, embeddings=6)
    out = quantize.save_compact(qp, CFG, tmp_path / "q", head=head)
    loaded = flaxdistil.load_pretrained(out, head=head)
    assert loaded.report.weights_file == quantize.COMPACT_FILE and not loaded.report.new_init
    want = quantize.dequantize_params(qp)
    assert jax.tree.structure(loaded.params) == jax.tree.structure(want)
    for (path, x), (_, y) in zip(_leaves(want), _leaves(loaded.params)):
        np.testing.assert_array_equal(x, y, err_msg=path)
    back, cfg, saved_head = quantize.load_compact(out)
    assert cfg.to_hf() == CFG.to_hf() and saved_head == head  # id2label: names filled in
    for (path, x), (_, y) in zip(_leaves(qp), _leaves(back)):
        if quantize.is_qtensor(x):
            assert (x.bits, x.group_size, x.transposed) == (y.bits, y.group_size, y.transposed)
            for a, b in ((x.q, y.q), (x.scale, y.scale), (x.zero, y.zero)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    # 4-bit codes on disk: half a byte per weight.
    from safetensors.numpy import load_file

    raw = load_file(out / quantize.COMPACT_FILE)
    fc1 = params["encoder"]["layer"]["fc1"]["kernel"]
    assert raw["encoder/layer/fc1/kernel:q"].nbytes == fc1.size // 2


def test_ste_gradient_is_identity():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    f = lambda w: jnp.sum(c * quantize.fake_quantize(w, bits=2, transposed=True))
    np.testing.assert_array_equal(jax.grad(f)(w), c)  # d/dw sum(c * fq(w)) = c, by hand
    fq = quantize.fake_quantize(w, bits=2, transposed=True)
    want = quantize.quantize_tensor(w, bits=2, transposed=True).dequantize()
    np.testing.assert_allclose(fq, want, atol=1e-7)
    assert len(np.unique(np.asarray(fq[:, 0]))) <= 3  # 2 bits symmetric: -s, 0, s


@pytest.mark.parametrize("bits, group, symmetric", [(4, 16, True), (3, None, False)])
def test_qat_step_is_a_float_step_on_fake_quantised_weights(bits, group, symmetric):
    """At step 0 a QAT step's loss is the plain step's on the fake-quantised params, and with the
    straight-through gradient (no weight decay) both apply the same update; params stay float.
    The scheme comes from the train.qat_* fields, as the jobs build it."""
    params = init_student(CFG, "seq_cls", jax.random.key(3))
    obj = Objective(task="classification")
    hp = hparams({"temperature": 1.0, "hard_label_weight": 1.0, "kd_loss_weight": 0.0}, obj)
    tx = train.make_optimizer(learning_rate=1e-2, total_steps=4, weight_decay=0.0)
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    scheme = quantize.qat_scheme(
        ml_collections.ConfigDict(
            dict(qat_bits=bits, qat_group_size=group or 0, qat_symmetric=symmetric)
        )
    )
    assert (scheme.bits, scheme.group_size, scheme.symmetric) == (bits, group, symmetric)
    fq = quantize.fake_quantize_params(params, scheme)["encoder"]["layer"]["fc1"]["kernel"]
    codes, scales, zeros = np_quantize(np.asarray(params["encoder"]["layer"]["fc1"]["kernel"][0]).T,
                                       bits, group, symmetric)  # fmt: skip
    np.testing.assert_allclose(fq[0].T, np_dequantize(codes, scales, zeros, group), atol=1e-6)
    batch = {
        "input_ids": np.random.default_rng(0).integers(5, 64, (4, 10)).astype(np.int32),
        "attention_mask": np.ones((4, 10), np.int32),
        "labels": np.array([0, 1, 2, 1], np.int32),
    }
    out = {}
    for name, start, qat in (
        ("qat", params, scheme),
        ("plain", quantize.fake_quantize_params(params, scheme), None),
    ):
        start = jax.tree.map(np.array, start)  # host copies: the step donates its state
        step = train.jit_train_step(obj, Model(CFG, "seq_cls"), None, tx, mesh, rep, None, qat=qat)
        state = train.create_state(jax.tree.map(jnp.array, start), tx)
        out[name] = (start, *step(state, None, batch, jax.random.key(0), hp, None))
    (p0, s_q, m_q), (f0, s_p, m_p) = out["qat"], out["plain"]
    np.testing.assert_allclose(m_q["loss"], m_p["loss"], rtol=1e-6)
    assert np.isfinite(m_q["loss"])
    for x, x0, y, y0 in zip(*map(jax.tree.leaves, (s_q.params, p0, s_p.params, f0))):
        assert x.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(x) - x0, np.asarray(y) - y0, atol=1e-6)
    kernel = s_q.params["encoder"]["layer"]["fc1"]["kernel"]
    assert len(np.unique(np.asarray(kernel[0, :16, 0]))) > 15  # not snapped to 4-bit codes


def test_bad_requests_one_clear_line():
    params = init_student(CFG, "mlm", jax.random.key(0))
    for bits in (1, 9, 4.5, True):
        with pytest.raises(ValueError, match=r"^bits must be an integer from 2 to 8, got") as e:
            quantize.quantize_params(params, bits=bits)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="group_size 5 does not divide the input dimension"):
        quantize.quantize_params(params, bits=4, group_size=5)
    with pytest.raises(ValueError, match="embeddings bits must be an integer from 2 to 8"):
        quantize.quantize_params(params, bits=4, embeddings=12)
    with pytest.raises(ValueError, match=r"^train.qat_\*: bits must be .* got 9$"):
        quantize.qat_scheme(ml_collections.ConfigDict(dict(qat_bits=9, qat_group_size=0)))
    assert quantize.qat_scheme(ml_collections.ConfigDict(dict(qat_bits=0))) is None
    with pytest.raises(ValueError, match=r"^train.qat_\*: symmetric must be True or False, got 0$"):
        quantize.qat_scheme(ml_collections.ConfigDict(dict(qat_bits=4, qat_symmetric=0)))
    with pytest.raises(ValueError, match="matmul must be one of"):
        quantize.inference_fn(quantize.quantize_params(params, bits=8), CFG, matmul="int4")
