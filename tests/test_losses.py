"""flaxdistil.losses against hand computations, PyTorch / NumPy references, and edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import losses

RTOL = 1e-5
B, T, V, D, H, L = 3, 5, 7, 6, 2, 3


def _rng(seed=0):
    return np.random.default_rng(seed)


def _mask_BxT(seed=0):
    """Random padding mask with one all-padding row and one full row."""
    lengths = np.array([T, 2, 0])
    return np.arange(T)[None, :] < lengths[_rng(seed).permutation(B)][:, None]


def _probs(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _attn_BxHxTxT(seed, mask_BxT):
    scores = _rng(seed).normal(size=(B, H, T, T)).astype(np.float32)
    return scores + np.where(mask_BxT[:, None, None, :], 0.0, -1e4).astype(np.float32)


# --------------------------------------------------------------------------- hand computations


def test_soft_kl_hand_2_classes():
    temp = 2.0
    p0 = 1 / (1 + math.e)  # teacher softmax([0, 2] / 2)
    q0 = math.exp(0.5) / (math.exp(0.5) + 1)  # student softmax([1, 0] / 2)
    p, q = [p0, 1 - p0], [q0, 1 - q0]
    want = temp**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = losses.soft_kl(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]]), None, temp)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    # [B=1,T=2,C=2]: the unselected second position (junk logits) does not count.
    s = jnp.array([[[1.0, 0.0], [5.0, -jnp.inf]]])
    t = jnp.array([[[0.0, 2.0], [jnp.inf, 0.0]]])
    np.testing.assert_allclose(losses.soft_kl(s, t, jnp.array([[1, 0]]), temp), want, rtol=RTOL)


def test_cross_entropy_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]; labels 1 then 0; position 2 ignored.
    logits = jnp.array([[[0.0, math.log(3.0)], [0.0, math.log(3.0)], [9.0, -9.0]]])
    labels = jnp.array([[1, 0, -100]])
    want = (-math.log(0.75) - math.log(0.25)) / 2
    np.testing.assert_allclose(losses.mlm_cross_entropy(logits, labels), want, rtol=RTOL)
    mask = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(
        losses.cross_entropy(logits, jnp.array([[1, 0, 0]]), mask), want, rtol=RTOL
    )


def test_mse_and_hidden_mse_hand():
    pred = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])
    target = jnp.array([[[0.0, 0.0], [100.0, 100.0]]])
    mask = jnp.array([[1, 0]])
    np.testing.assert_allclose(losses.hidden_mse(pred, target, mask), (1 + 4) / 2, rtol=RTOL)
    np.testing.assert_allclose(losses.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])), 5.0)
    np.testing.assert_allclose(
        losses.mse(jnp.array([1.0, 3.0]), jnp.zeros(2), jnp.array([0, 1])), 9
    )


def test_cosine_hidden_hand():
    s = jnp.array([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    t = jnp.array([[[1.0, 1.0], [-1.0, -1.0], [0.0, 1.0]]])
    want = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    np.testing.assert_allclose(losses.cosine_hidden(s, t, jnp.array([[1, 1, 0]])), want, rtol=RTOL)


def test_pkd_hand():
    s = jnp.array([[[3.0, 4.0], [9.0, 9.0]]])  # [CLS] normalised: [0.6, 0.8]
    t = jnp.array([[[2.0, 0.0], [1.0, 1.0]]])  # [CLS] normalised: [1, 0]
    np.testing.assert_allclose(losses.pkd_loss(s, t), 0.4**2 + 0.8**2, rtol=RTOL)


def test_mmd_hand():
    s = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # gram = I / 2
    t = jnp.array([[[1.0, 1.0], [0.0, 0.0]]])  # gram = [[1, 0], [0, 0]]
    np.testing.assert_allclose(losses.mmd_loss(s, t), (0.25 + 0.25) / 4, rtol=RTOL)
    # Keeping only token 0: gram entries 1/2 vs 1.
    np.testing.assert_allclose(losses.mmd_loss(s, t, jnp.array([[1, 0]])), 0.25, rtol=RTOL)


def test_attention_hand():
    # H=1, T=2, token 1 is padding: only pair (0, 0) is valid.
    att_s = jnp.array([[[[0.5, 0.5], [0.3, 0.7]]]])
    att_t = jnp.array([[[[0.9, 0.1], [0.0, 1.0]]]])
    mask = jnp.array([[1, 0]])
    np.testing.assert_allclose(losses.attention_mse(att_s, att_t, mask), 0.4**2, rtol=RTOL)
    np.testing.assert_allclose(
        losses.attention_ce(att_s, att_t, mask), -0.9 * math.log(0.5), rtol=RTOL
    )
    full = -(0.9 * math.log(0.5) + 0.1 * math.log(0.5) + 1.0 * math.log(0.7)) / 2
    np.testing.assert_allclose(losses.attention_ce(att_s, att_t), full, rtol=RTOL)


# --------------------------------------------------------------------------- PyTorch references


def test_soft_kl_vs_torch_kldiv_batchmean():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng, mask = _rng(1), _mask_BxT(1)
    s, t = rng.normal(size=(2, B, T, V)).astype(np.float32) * 3
    for temp in (1.0, 2.0, 100.0):
        ts, tt, tm = torch.tensor(s), torch.tensor(t), torch.tensor(mask)
        ref = (
            torch.nn.KLDivLoss(reduction="batchmean")(
                F.log_softmax(ts[tm] / temp, -1), F.softmax(tt[tm] / temp, -1)
            )
            * temp**2
        )
        got = losses.soft_kl(s, t, mask, temp)
        np.testing.assert_allclose(got, ref.item(), rtol=1e-4 if temp == 100 else RTOL)
    ref = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(torch.tensor(s[0]) / 2, -1), F.softmax(torch.tensor(t[0]) / 2, -1)
    )
    np.testing.assert_allclose(losses.soft_kl(s[0], t[0], None, 2.0), 4 * ref.item(), rtol=RTOL)


def test_ce_and_mse_vs_torch():
    torch = pytest.importorskip("torch")
    rng, mask = _rng(2), _mask_BxT(2)
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    labels = np.where(rng.random((B, T)) < 0.5, rng.integers(0, V, (B, T)), -100)
    ref = torch.nn.CrossEntropyLoss(ignore_index=-100)(
        torch.tensor(logits).view(-1, V), torch.tensor(labels).view(-1)
    )
    np.testing.assert_allclose(losses.mlm_cross_entropy(logits, labels), ref.item(), rtol=RTOL)
    labels = rng.integers(0, V, (B, T))
    ref = torch.nn.CrossEntropyLoss()(torch.tensor(logits[mask]), torch.tensor(labels[mask]))
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, mask), ref.item(), rtol=RTOL)
    a, b = rng.normal(size=(2, B, T, D)).astype(np.float32)
    ref = torch.nn.functional.mse_loss(torch.tensor(a[mask]), torch.tensor(b[mask]))
    np.testing.assert_allclose(losses.hidden_mse(a, b, mask), ref.item(), rtol=RTOL)
    ref = torch.nn.functional.mse_loss(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(losses.mse(a, b), ref.item(), rtol=RTOL)


def test_cosine_vs_torch_cosine_embedding_loss():
    torch = pytest.importorskip("torch")
    rng, mask = _rng(3), _mask_BxT(3)
    s, t = rng.normal(size=(2, B, T, D)).astype(np.float32)
    s[0, 0] = 1e-7  # near-zero vectors exercise ATen's 1e-12 epsilon
    t[0, 0] = 1e-7
    mask[0, 0] = True
    ts, tt = torch.tensor(s[mask]), torch.tensor(t[mask])
    ref = torch.nn.CosineEmbeddingLoss(reduction="mean")(ts, tt, torch.ones(len(ts)))
    np.testing.assert_allclose(losses.cosine_hidden(s, t, mask), ref.item(), rtol=RTOL)


def _torch_att_ce(scores_s, scores_t, mask):
    """TextBrewer att_ce_loss (masked path) on pre-softmax scores."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s, t, m = torch.tensor(scores_s), torch.tensor(scores_t), torch.tensor(mask).float()
    m = m.unsqueeze(1).expand(-1, s.size(1), -1)
    ce = (F.softmax(t, -1) * F.log_softmax(s, -1) * m.unsqueeze(2)).sum(-1)
    return -(ce * m).sum() / m.sum()


def test_attention_vs_textbrewer_formulas_in_torch():
    torch = pytest.importorskip("torch")
    mask = _mask_BxT(4)
    mask[mask.sum(1) == 0, 0] = True  # TextBrewer divides by the valid count: keep it nonzero
    sc_s, sc_t = _attn_BxHxTxT(4, mask), _attn_BxHxTxT(5, mask)
    p_s, p_t = _probs(sc_s), _probs(sc_t)
    ref = _torch_att_ce(sc_s, sc_t, mask)
    np.testing.assert_allclose(losses.attention_ce(p_s, p_t, mask), ref.item(), rtol=RTOL)
    m = torch.tensor(mask).float().unsqueeze(1).expand(-1, H, -1)
    sq = torch.nn.functional.mse_loss(torch.tensor(p_s), torch.tensor(p_t), reduction="none")
    ref = (sq * m.unsqueeze(-1) * m.unsqueeze(2)).sum() / m.sum(2).pow(2).sum()
    np.testing.assert_allclose(losses.attention_mse(p_s, p_t, mask), ref.item(), rtol=RTOL)


# --------------------------------------------------------------------------- NumPy references


def test_pkd_vs_numpy():
    rng = _rng(6)
    s, t = rng.normal(size=(2, B, T, D))
    ns = s[:, 0] / np.linalg.norm(s[:, 0], axis=1, keepdims=True)
    nt = t[:, 0] / np.linalg.norm(t[:, 0], axis=1, keepdims=True)
    want = ((ns - nt) ** 2).sum(-1).mean()
    np.testing.assert_allclose(losses.pkd_loss(s, t), want, rtol=RTOL)
    np.testing.assert_allclose(losses.pkd_loss(s[:, 0], t[:, 0]), want, rtol=RTOL)
    np.testing.assert_allclose(losses.pkd_loss(s, t, np.ones((B, T))), want, rtol=RTOL)


def test_mmd_vs_numpy():
    rng, mask = _rng(7), _mask_BxT(7)
    s0, s1 = rng.normal(size=(2, B, T, D))
    t0, t1 = rng.normal(size=(2, B, T, 2 * D))  # teacher may be wider
    gs = np.einsum("btd,bsd->bts", s0, s1) / D
    gt = np.einsum("btd,bsd->bts", t0, t1) / (2 * D)
    np.testing.assert_allclose(
        losses.mmd_loss((s0, s1), (t0, t1)), ((gs - gt) ** 2).mean(), rtol=RTOL
    )
    pair = mask[:, :, None] & mask[:, None, :]
    want = ((gs - gt) ** 2 * pair).sum() / pair.sum()
    got = losses.mmd_loss((s0, s1), (t0, t1), mask)
    np.testing.assert_allclose(got, want, rtol=RTOL)


# --------------------------------------------------------------------------- edge cases


def _cases():
    """(name, fn(student, teacher, mask) -> loss, student, teacher) on [B,T,...] inputs."""
    rng = _rng(8)
    logits_s, logits_t = rng.normal(size=(2, B, T, V)).astype(np.float32)
    h_s, h_t = rng.normal(size=(2, B, T, D)).astype(np.float32)
    att_s = _probs(_attn_BxHxTxT(8, _mask_BxT(8))).astype(np.float32)
    att_t = _probs(_attn_BxHxTxT(9, _mask_BxT(8))).astype(np.float32)
    labels = rng.integers(0, V, (B, T))
    return [
        ("soft_kl", lambda s, t, m: losses.soft_kl(s, t, m, 2.0), logits_s, logits_t),
        ("soft_kl_T100", lambda s, t, m: losses.soft_kl(s, t, m, 100.0), logits_s, logits_t),
        ("cross_entropy", lambda s, t, m: losses.cross_entropy(s, labels, m), logits_s, logits_t),
        (
            "mlm",
            lambda s, t, m: losses.mlm_cross_entropy(s, jnp.where(m, labels, -100)),
            logits_s,
            logits_t,
        ),
        ("mse", losses.mse, h_s, h_t),
        ("cosine_hidden", losses.cosine_hidden, h_s, h_t),
        ("hidden_mse", losses.hidden_mse, h_s, h_t),
        ("pkd", losses.pkd_loss, h_s, h_t),
        ("mmd", losses.mmd_loss, h_s, h_t),
        ("attention_mse", losses.attention_mse, att_s, att_t),
        ("attention_ce", losses.attention_ce, att_s, att_t),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]
_JITTED = {}


def _value_and_grad(name, fn):
    """One jitted value_and_grad per case, shared by tests so each shape/dtype compiles once."""
    if name not in _JITTED:
        _JITTED[name] = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    return _JITTED[name]


def _poison(x, mask, value):
    """Puts `value` (-inf, 1e30, nan) at padded tokens (query and key axes for attention)."""
    m = np.asarray(mask, bool)
    if x.ndim == 4 and x.shape[1] == H:  # attention [B,H,T,T]
        return np.where(m[:, None, :, None] & m[:, None, None, :], x, np.float32(value))
    return np.where(m.reshape(m.shape + (1,) * (x.ndim - 2)), x, np.float32(value))


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_padding_junk_and_empty_masks_give_finite_values_and_grads(name, fn, s, t):
    value_and_grad = _value_and_grad(name, fn)
    mask = _mask_BxT(10)  # contains an all-padding row
    clean, _ = value_and_grad(s, t, mask)
    for junk in (-np.inf, 1e30, np.nan):
        value, (g_s, g_t) = value_and_grad(_poison(s, mask, junk), _poison(t, mask, junk), mask)
        assert np.isfinite(value), junk
        assert np.all(np.isfinite(g_s)) and np.all(np.isfinite(g_t)), junk
        np.testing.assert_allclose(value, clean, rtol=RTOL)  # junk changes nothing
    # Nothing selected (e.g. a batch with no masked token): exactly 0, zero gradients.
    value, (g_s, g_t) = value_and_grad(s, t, np.zeros((B, T), bool))
    assert value == 0.0
    assert not np.any(g_s) and not np.any(g_t)


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_bf16_inputs_give_float32_close_to_f32(name, fn, s, t):
    mask = _mask_BxT(10)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    value, (g_s, _) = _value_and_grad(name, fn)(s16, t16, mask)
    assert value.dtype == jnp.float32 and g_s.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(g_s, np.float32)))
    s32, t32 = np.asarray(s16, np.float32), np.asarray(t16, np.float32)
    ref, _ = _value_and_grad(name, fn)(s32, t32, mask)
    np.testing.assert_allclose(value, ref, rtol=RTOL)  # upcast before any arithmetic


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_jit_matches_eager(name, fn, s, t):
    mask = _mask_BxT(12)
    np.testing.assert_allclose(jax.jit(fn)(s, t, mask), fn(s, t, mask), rtol=RTOL)


# --------------------------------------------------------------------------- distil_loss


def _distil_inputs(seed=13):
    rng, mask = _rng(seed), _mask_BxT(seed)
    labels = np.where(mask & (rng.random((B, T)) < 0.5), rng.integers(0, V, (B, T)), -100)
    labels[mask.all(1).argmax(), 0] = 1  # at least one masked token
    student = {"logits": rng.normal(size=(B, T, V)), "hidden": rng.normal(size=(B, T, D))}
    teacher = {"logits": rng.normal(size=(B, T, V)), "hidden": rng.normal(size=(B, T, D))}
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}
    return f32(student), f32(teacher), {"attention_mask": mask.astype(np.int32), "labels": labels}


@pytest.mark.parametrize("restrict", [False, True])
def test_distil_loss_vs_torch_distiller(restrict):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    student, teacher, batch = _distil_inputs()
    kw = dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.5)
    total, terms = losses.distil_loss(student, teacher, batch, restrict_ce_to_mask=restrict, **kw)
    # distiller.py, step by step
    s, t = torch.tensor(student["logits"]), torch.tensor(teacher["logits"])
    labels = torch.tensor(batch["labels"])
    sel = labels > -1 if restrict else torch.tensor(batch["attention_mask"]).bool()
    ss, tt = s[sel], t[sel]
    ce = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(ss / 2, -1), F.softmax(tt / 2, -1))
    mlm = torch.nn.CrossEntropyLoss(ignore_index=-100)(s.view(-1, V), labels.view(-1))
    pad = torch.tensor(batch["attention_mask"]).bool()
    hs, ht = torch.tensor(student["hidden"])[pad], torch.tensor(teacher["hidden"])[pad]
    cos = torch.nn.CosineEmbeddingLoss()(hs, ht, torch.ones(len(hs)))
    mse = torch.nn.MSELoss(reduction="sum")(ss, tt) / ss.size(0)
    want = {
        "loss_ce": ce.item() * 4,
        "loss_mlm": mlm.item(),
        "loss_cos": cos.item(),
        "loss_mse": mse.item(),
    }
    for k, v in want.items():
        np.testing.assert_allclose(terms[k], v, rtol=RTOL, err_msg=k)
    weighted = (
        5 * terms["loss_ce"] + 2 * terms["loss_mlm"] + terms["loss_cos"] + 0.5 * terms["loss_mse"]
    )
    np.testing.assert_allclose(total, weighted, rtol=RTOL)
    assert terms["loss"] == total


def test_distil_loss_zero_alpha_is_skipped_and_reported_zero():
    student, teacher, batch = _distil_inputs()
    student = {**student, "hidden": None}  # would crash if the cosine term were computed
    kw = dict(temperature=2.0, alpha_ce=1.0, alpha_mlm=0.0, alpha_cos=0.0)
    total, terms = jax.jit(lambda s, t, b: losses.distil_loss(s, t, b, **kw))(
        student, teacher, batch
    )
    assert terms["loss_mlm"] == 0 and terms["loss_cos"] == 0 and terms["loss_mse"] == 0
    np.testing.assert_allclose(total, terms["loss_ce"], rtol=RTOL)
    assert terms["loss_ce"] > 0


def test_distil_loss_grads_finite_and_teacher_stopped():
    student, teacher, batch = _distil_inputs()
    batch = {**batch, "labels": np.full((B, T), -100)}  # no masked token at all
    kw = dict(temperature=100.0, alpha_ce=1.0, alpha_mlm=1.0, alpha_cos=1.0, alpha_mse=1.0)
    fn = lambda s, t: losses.distil_loss(s, t, batch, restrict_ce_to_mask=True, **kw)
    (total, terms), (g_s, g_t) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(
        student, teacher
    )
    assert terms["loss_mlm"] == 0 and terms["loss_ce"] == 0 and terms["loss_mse"] == 0
    assert np.isfinite(total) and terms["loss_cos"] > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_s))
    assert not any(np.any(g) for g in jax.tree.leaves(g_t))


# --------------------------------------------------------------------------- intermediate_loss


def _aux(seed, dim):
    rng = _rng(seed)
    att = _probs(rng.normal(size=(L, B, H, T, T))).astype(np.float32)
    return {
        "hidden_states": rng.normal(size=(L + 1, B, T, dim)).astype(np.float32),
        "attentions": att,
    }


def test_intermediate_loss_matches_direct_calls():
    s_aux, t_aux, mask = _aux(14, D), _aux(15, 2 * D), _mask_BxT(14)
    kernel = _rng(16).normal(size=(D, 2 * D)).astype(np.float32)
    matches = [
        (1, 2, "hidden_mse", 0.5),
        ("attention_ce", 0, 1, 2.0),  # name-first form is accepted too
        (2, 3, "hidden_cos", 1.0, ("linear", D, 2 * D)),
        (0, 0, "attention_mse", 1.0),
        (3, 3, "pkd", 1.0),
        ((1, 2), (2, 3), "mmd", 3.0),  # no projection needed: Gram matrices are [T,T]
    ]
    projections = {0: kernel, 2: {"kernel": kernel, "bias": np.ones(2 * D, np.float32)}, 4: kernel}
    total, terms = losses.intermediate_loss(s_aux, t_aux, matches, mask, projections)
    hs, ht, as_, at = (
        s_aux["hidden_states"],
        t_aux["hidden_states"],
        s_aux["attentions"],
        t_aux["attentions"],
    )
    want = [
        losses.hidden_mse(hs[1] @ kernel, ht[2], mask),
        losses.attention_ce(as_[0], at[1], mask),
        losses.cosine_hidden(hs[2] @ kernel + 1.0, ht[3], mask),
        losses.attention_mse(as_[0], at[0], mask),
        losses.pkd_loss(hs[3] @ kernel, ht[3], mask),
        losses.mmd_loss((hs[1], hs[2]), (ht[2], ht[3]), mask),
    ]
    assert list(terms) == [
        "0_hidden_mse_s1_t2", "1_attention_ce_s0_t1", "2_hidden_cos_s2_t3",
        "3_attention_mse_s0_t0", "4_pkd_s3_t3", "5_mmd_s1-2_t2-3",
    ]  # fmt: skip
    np.testing.assert_allclose(list(terms.values()), want, rtol=RTOL)
    weighted = sum(m[3] * w for m, w in zip(matches, want))
    np.testing.assert_allclose(total, weighted, rtol=RTOL)
    jitted = jax.jit(lambda a, b: losses.intermediate_loss(a, b, matches, mask, projections)[0])
    np.testing.assert_allclose(jitted(s_aux, t_aux), total, rtol=RTOL)


def test_intermediate_loss_errors_are_readable():
    s_aux, t_aux = _aux(17, D), _aux(18, 2 * D)
    with pytest.raises(ValueError, match="student hidden size 6 != teacher 12"):
        losses.intermediate_loss(s_aux, t_aux, [(1, 1, "hidden_mse", 1.0)])
    with pytest.raises(ValueError, match="unknown intermediate loss 'kl'"):
        losses.intermediate_loss(s_aux, t_aux, [(1, 1, "kl", 1.0)])
    with pytest.raises(ValueError, match="must be"):
        losses.intermediate_loss(s_aux, t_aux, [(1, 1, 1.0)])
