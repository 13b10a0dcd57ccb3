"""flaxdistil.models against transformers (PyTorch) and against its own invariants.

Parity: tiny random models of every family x head, then the two real checkpoints (marked ``real``);
the measured maximum differences go to reports/parity.json. Invariants: scan == per-layer loop,
jit == eager, bf16 ~ fp32, remat and the fused attention change nothing, masked_positions ==
gathering, dropout only in training.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil.hf import load_pretrained
from flaxdistil.models import (
    FAMILY_HEADS,
    Layer,
    Model,
    ModelConfig,
    inference_fn,
    init_params,
)

TINY_TOL = 1e-5
FAMILIES = ("bert", "roberta", "distilbert")  # the other families: test_families.py
HEADS = FAMILY_HEADS["bert"]
REAL_TOL = 1e-4


# ---------------------------------------------------------------- parity with transformers


def _batch(family: str, B: int = 3, T: int = 11, vocab: int = 99):
    """Ids avoiding special tokens, rows padded to lengths T, 7, 4 with the family's pad id."""
    rng = np.random.RandomState(0)
    ids = rng.randint(3, vocab, (B, T))
    mask = (np.arange(T)[None] < np.array([T, 7, 4])[:, None]).astype(np.int64)
    ids = np.where(mask, ids, 1 if family == "roberta" else 0)  # RoBERTa positions skip pads
    types = (rng.rand(B, T) < 0.5).astype(np.int64) * mask if family == "bert" else None
    return ids, mask, types


def _torch_forward(model, ids, mask, types):
    import torch

    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if types is not None:
        kw["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return model(**kw, output_hidden_states=True, output_attentions=True)


def _torch_logits(out, head):
    if head is None:
        return None
    if head == "qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return out.logits.numpy()


def _max_diffs(ours, aux, theirs, head, mask) -> dict:
    """Max abs differences: logits everywhere, hidden states on real tokens, all attentions."""
    keep = mask.astype(bool)
    d = {
        "hidden_states": max(
            float(np.abs(np.asarray(h) - t.numpy())[keep].max())
            for h, t in zip(aux["hidden_states"], theirs.hidden_states, strict=True)
        ),
        "attentions": max(
            float(np.abs(np.asarray(a) - t.numpy()).max())
            for a, t in zip(aux["attentions"], theirs.attentions, strict=True)
        ),
    }
    if head is not None:
        d["logits"] = float(np.abs(np.asarray(ours) - _torch_logits(theirs, head)).max())
    if "pooled" in aux and getattr(theirs, "pooler_output", None) is not None:
        d["pooled"] = float(np.abs(np.asarray(aux["pooled"]) - theirs.pooler_output.numpy()).max())
    return d


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_vs_transformers(family, head, make_hf_model, tmp_path, parity_report):
    hf = make_hf_model(family, head)
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head=head)
    assert pre.report.new_init == [] and pre.report.unused == []
    ids, mask, types = _batch(family)
    logits, aux = pre.model.apply(
        {"params": pre.params},
        ids,
        mask,
        types,
        output_hidden_states=True,
        output_attentions=True,
    )
    theirs = _torch_forward(hf, ids, mask, types)
    assert aux["hidden_states"].shape == (4, 3, 11, 32)
    assert aux["attentions"].shape == (3, 3, 4, 11, 11)
    if head is not None:
        assert logits.shape == _torch_logits(theirs, head).shape
    diffs = _max_diffs(logits, aux, theirs, head, mask)
    print(f"\n{family}/{head}: {diffs}")
    parity_report[f"tiny/{family}/{head}"] = diffs
    assert max(diffs.values()) <= TINY_TOL, diffs


@pytest.mark.parametrize(("family", "head"), [("bert", "seq_cls"), ("roberta", None)])
@pytest.mark.parametrize("unroll", [True, False])
def test_inference_fn_vs_transformers(family, head, unroll, make_hf_model, tmp_path):
    """models.inference_fn (unrolled per-layer params by default) gives transformers' outputs."""
    hf = make_hf_model(family, head)
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head=head)
    fn, params = inference_fn(pre.config, head, pre.params, unroll_layers=unroll)
    assert ("layer_0" in params["encoder"]) == unroll
    ids, mask, types = _batch(family)
    ours = np.asarray(fn(params, ids, mask, types))
    theirs = _torch_forward(hf, ids, mask, types)
    if head is None:
        keep = mask.astype(bool)
        np.testing.assert_allclose(
            ours[keep], theirs.last_hidden_state.numpy()[keep], atol=TINY_TOL
        )
    else:
        np.testing.assert_allclose(ours, _torch_logits(theirs, head), atol=TINY_TOL)
    # attention_mask and token_type_ids default to all-ones / all-zeros, as in transformers
    full = np.asarray(fn(params, ids[:1]))
    ones = np.ones_like(ids[:1])
    np.testing.assert_allclose(full, np.asarray(fn(params, ids[:1], ones)), atol=1e-6)


def test_parity_detects_a_wrong_weight(make_hf_model, tmp_path):
    """The noise on HF's init makes parity fail when a single bias is off."""
    hf = make_hf_model("bert", "mlm")
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head="mlm")
    ln = pre.params["encoder"]["layer"]["mlp_norm"]
    ln["bias"] = ln["bias"] + 0.01 * (np.arange(ln["bias"].shape[-1]) == 1)
    ids, mask, types = _batch("bert")
    logits, aux = pre.model.apply({"params": pre.params}, ids, mask, types)
    theirs = _torch_forward(hf, ids, mask, types)
    assert np.abs(np.asarray(logits) - theirs.logits.numpy()).max() > 10 * TINY_TOL


def _asset(name):
    from flaxdistil import assets

    try:
        return getattr(assets, name)()
    except RuntimeError as e:  # offline without a cached copy
        pytest.skip(f"{name} unavailable: {e}")


@pytest.mark.real
def test_minilm_vs_transformers(parity_report):
    transformers = pytest.importorskip("transformers")
    path = _asset("minilm_dir")
    pre = load_pretrained(path, head=None)
    assert pre.report.new_init == [] and pre.report.unused == []
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Knowledge distillation trains a small student to imitate a large teacher.",
        "A short one.",
        "Rain is expected in the north of the country by Tuesday evening.",
    ]
    tok = pre.tokenizer()(sentences, padding=True, return_tensors="np")
    ids, mask, types = tok["input_ids"], tok["attention_mask"], tok["token_type_ids"]
    _, aux = pre.model.apply(
        {"params": pre.params}, ids, mask, types, output_hidden_states=True, output_attentions=True
    )
    hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    theirs = _torch_forward(hf, ids, mask, types)
    diffs = _max_diffs(None, aux, theirs, None, mask)
    print(f"\nall-MiniLM-L6-v2: {diffs}")
    parity_report["real/all-MiniLM-L6-v2/None"] = diffs
    assert max(diffs.values()) <= REAL_TOL, diffs


ANTIBODIES = [
    "E V Q L V E S G G G L V Q P G G S L R L S C A A S G F T F S S Y A M S W V R Q A P G K G",
    "Q V Q L Q E S G P G L V K P S E T L S L T C T V S G G S I S S Y Y W S W I R Q P P G K G",
    "D I Q M T Q S P S S L S A S V G D R V T I T C R A S Q S I S S Y L N W Y Q Q K P G K A P",
]


@pytest.mark.real
def test_antiberty_mlm_vs_transformers(parity_report):
    transformers = pytest.importorskip("transformers")
    path = _asset("antiberty_dir")
    pre = load_pretrained(path, head="mlm")
    for name in ("cls.species", "cls.chain", "cls.graft"):
        assert any(k.startswith(name + ".") for k in pre.report.unused), pre.report.unused
    tokenizer = pre.tokenizer()
    tok = tokenizer(ANTIBODIES, padding=True, return_tensors="np")
    ids, mask, types = tok["input_ids"].copy(), tok["attention_mask"], tok["token_type_ids"]
    rng = np.random.RandomState(0)
    real = (ids > 4) & mask.astype(bool)  # amino acids only
    masked = real & (rng.rand(*ids.shape) < 0.15)
    truth = ids[masked]
    ids[masked] = tokenizer.mask_token_id
    logits, aux = pre.model.apply({"params": pre.params}, ids, mask, types)
    hf = transformers.BertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
    theirs = _torch_forward(hf, ids, mask, types)
    ours_pred = np.asarray(logits).argmax(-1)[masked]
    np.testing.assert_array_equal(ours_pred, theirs.logits.numpy().argmax(-1)[masked])
    diffs = {
        "logits": float(np.abs(np.asarray(logits) - theirs.logits.numpy()).max()),
        "hidden_state_last": float(
            np.abs(np.asarray(aux["last_hidden_state"]) - theirs.hidden_states[-1].numpy())[
                mask.astype(bool)
            ].max()
        ),
        "masked_positions": int(masked.sum()),
        "masked_accuracy": float((ours_pred == truth).mean()),
    }
    print(f"\nAntiBERTy: {diffs}")
    parity_report["real/AntiBERTy/mlm"] = diffs
    assert max(diffs["logits"], diffs["hidden_state_last"]) <= REAL_TOL, diffs


# ---------------------------------------------------------------- invariants (JAX only)

CFG = ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def _params(cfg, head, seed=0):
    """Initialised params plus noise, so LayerNorms and biases are not trivially 1 and 0."""
    p = init_params(cfg, head, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


def _inputs(B=3, T=11):
    ids, mask, types = _batch("bert", B, T)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.mark.parametrize("family", FAMILIES)
def test_scan_equals_layer_loop(family):
    cfg = CFG.replace(model_type=family)
    if family == "distilbert":
        cfg = cfg.replace(type_vocab_size=0, add_pooler=False)
    p = _params(cfg, None)
    ids, mask, _ = _inputs()
    apply = jax.jit(Model(cfg, None).apply, static_argnames="output_hidden_states")
    _, aux = apply({"params": p}, ids, mask, output_hidden_states=True)
    h = aux["hidden_states"][0]
    layer = jax.jit(Layer(cfg).apply)
    for i in range(cfg.num_hidden_layers):
        layer_i = jax.tree.map(lambda x, i=i: x[i], p["encoder"]["layer"])
        h, (h_out, probs, qkv) = layer({"params": layer_i}, h, mask)
        assert h_out is None and probs is None and qkv is None
        np.testing.assert_allclose(h, aux["hidden_states"][i + 1], atol=1e-6)
    np.testing.assert_allclose(h, aux["last_hidden_state"], atol=1e-6)


def test_jit_equals_eager():
    head = "seq_cls"
    p = _params(CFG, head)
    ids, mask, types = _inputs()
    model = Model(CFG, head)
    eager, _ = model.apply({"params": p}, ids, mask, types)
    jitted, _ = jax.jit(model.apply)({"params": p}, ids, mask, types)
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)


def _apply(model, params, *args, **kw):
    """Jitted apply; eager flax (op by op, scan re-traced) is several times slower on CPU."""
    return jax.jit(lambda v, *a: model.apply(v, *a, **kw))({"params": params}, *args)


@pytest.fixture(scope="module")
def mlm_case():
    """Params, inputs and fp32 einsum logits of a tiny BERT MLM, shared by the invariant tests."""
    p = _params(CFG, "mlm")
    ids, mask, types = _inputs()
    logits, _ = _apply(Model(CFG, "mlm"), p, ids, mask, types)
    return p, (ids, mask, types), logits


def test_bf16_close_to_fp32(mlm_case):
    p, inputs, f32 = mlm_case
    b16, aux = _apply(Model(CFG, "mlm", dtype=jnp.bfloat16), p, *inputs)
    assert b16.dtype == jnp.bfloat16 and aux["last_hidden_state"].dtype == jnp.bfloat16
    rel = jnp.linalg.norm(b16.astype(jnp.float32) - f32) / jnp.linalg.norm(f32)
    assert float(rel) < 2e-2, float(rel)


def test_remat_changes_nothing():
    p = _params(CFG, "seq_cls")
    ids, mask, types = _inputs()
    labels = jnp.array([0, 2, 1])

    def loss(params, remat):
        logits, _ = Model(CFG, "seq_cls", remat=remat).apply({"params": params}, ids, mask, types)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

    base = jax.jit(jax.value_and_grad(lambda q: loss(q, None)))(p)
    remat = jax.jit(jax.value_and_grad(lambda q: loss(q, "dots")))(p)
    np.testing.assert_allclose(remat[0], base[0], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), *remat[1:], *base[1:]
    )


def test_fused_attention_equals_einsum(mlm_case):
    """Right-padded rows (lengths 11, 7, 4, and 0: all padding) give the einsum path's logits and
    gradients; on CPU the fused path is XLA's implementation fed the same key lengths as cuDNN."""
    p, (ids, mask, types), einsum = mlm_case
    fused, _ = _apply(Model(CFG, "mlm", attention_impl="fused"), p, ids, mask, types)
    np.testing.assert_allclose(fused, einsum, atol=1e-5)
    mask = mask.at[2].set(0)

    def loss(params, impl):
        logits, _ = Model(CFG, "mlm", attention_impl=impl).apply(
            {"params": params}, ids, mask, types
        )
        return jnp.sum(jnp.tanh(logits) * mask[..., None])

    grads = {
        impl: jax.jit(jax.grad(loss), static_argnums=1)(p, impl) for impl in ("einsum", "fused")
    }
    for a, b in zip(jax.tree.leaves(grads["einsum"]), jax.tree.leaves(grads["fused"]), strict=True):
        assert np.isfinite(np.asarray(b)).all()
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_fused_attention_falls_back_where_cudnn_refuses(mlm_case, monkeypatch):
    """On a 'GPU' without cuDNN (jax raises while tracing), bf16 fused attention takes XLA's
    implementation with the same key lengths: bf16 logits close to the fp32 einsum ones."""
    from flaxdistil.models import encoder

    p, inputs, f32 = mlm_case
    monkeypatch.setattr(encoder.jax, "default_backend", lambda: "gpu")
    with pytest.warns(UserWarning, match="cuDNN refused"):
        b16, _ = _apply(Model(CFG, "mlm", dtype=jnp.bfloat16, attention_impl="fused"), p, *inputs)
    rel = jnp.linalg.norm(b16.astype(jnp.float32) - f32) / jnp.linalg.norm(f32)
    assert float(rel) < 2e-2, float(rel)


def test_masked_positions_equal_gathered_logits(mlm_case):
    p, inputs, full = mlm_case
    positions = jnp.array([[0, 3, 10], [1, 2, 6], [0, 3, 3]])
    part, _ = _apply(Model(CFG, "mlm"), p, *inputs, masked_positions=positions)
    assert part.shape == (3, 3, CFG.vocab_size)
    gathered = jnp.take_along_axis(full, positions[..., None], axis=1)
    np.testing.assert_allclose(part, gathered, atol=1e-6)


def test_dropout_only_in_training():
    p = _params(CFG, "seq_cls")
    ids, mask, types = _inputs()
    model = Model(CFG, "seq_cls")

    @functools.partial(jax.jit, static_argnames="train")
    def run(key, train):
        return model.apply({"params": p}, ids, mask, types, train=train, rngs={"dropout": key})[0]

    k0, k1 = jax.random.key(0), jax.random.key(1)
    np.testing.assert_array_equal(run(k0, False), run(k1, False))
    no_rngs = _apply(model, p, ids, mask, types)[0]  # another compilation: equal up to rounding
    np.testing.assert_allclose(run(k0, False), no_rngs, atol=1e-6)
    assert not np.allclose(run(k0, True), run(k1, True))
    np.testing.assert_array_equal(run(k0, True), run(k0, True))
    with pytest.raises(Exception, match="dropout"):  # train=True needs a dropout rng
        model.apply({"params": p}, ids, mask, types, train=True)


def test_config_errors_are_readable():
    with pytest.raises(ValueError, match="not a multiple"):
        CFG.replace(num_attention_heads=5)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        CFG.replace(hidden=3)
    with pytest.raises(ValueError, match="unknown head 'foo'"):
        Model(CFG, "foo").init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
