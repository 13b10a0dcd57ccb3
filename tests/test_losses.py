"""flaxdistil.losses against TextBrewer 0.2.1, PyTorch, NumPy loops and hand computations, plus
edge cases (padding junk, empty masks, float32-minimum masked scores, bf16, jit)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import losses

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-5, 1e-6
B, T, V, D, H = 3, 5, 7, 6, 2
F32_MIN = np.finfo(np.float32).min
TB_LENGTHS = [T, 3, 1]  # full, padded, all-but-one padded (TextBrewer NaNs on an empty row)
EDGE_LENGTHS = [T, 2, 0]  # with an all-padding row


def _rng(seed=0):
    return np.random.default_rng(seed)


def _mask(lengths):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def _mask_BxT(seed=0):
    """Padding mask with one all-padding row and one full row, rows shuffled."""
    return _mask(np.asarray(EDGE_LENGTHS)[_rng(seed).permutation(B)])


def _scores(seed, mask_BxT, neg=-1e4, heads=H):
    """Pre-softmax scores [B,H,T,T] with masked keys at `neg` (HF BERT adds -1e4)."""
    scores = _rng(seed).normal(size=(B, heads, T, T)).astype(np.float32) * 2
    return np.where(mask_BxT[:, None, None, :], scores, np.float32(neg))


def _tb_presets():
    pytest.importorskip("textbrewer")  # a fallback only: `make setup` installs it
    from textbrewer import presets

    return presets


def _torch(x):
    return [torch.tensor(a) for a in x] if isinstance(x, tuple) else torch.tensor(x)


# --------------------------------------------------------------------------- registries


def test_registries_have_textbrewers_names():
    tb_names = {"attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean"}
    tb_names |= {"hidden_mse", "cos", "pkd", "fsp", "gram", "mmd", "nst"}
    # Subsets: code imported earlier in the session may have registered its own losses.
    assert tb_names | {"minilm_attention", "minilm_relation"} <= set(losses.MATCH_LOSS_MAP)
    assert {"ce", "mse", "kl_t2"} <= set(losses.KD_LOSS_MAP)
    assert losses.MATCH_LOSS_MAP["cos"] is losses.cosine_hidden
    assert type(losses.MATCH_LOSS_MAP) is dict and type(losses.KD_LOSS_MAP) is dict


def _match_features(name, seed, mask_BxT):
    """(student, teacher) in the form TextBrewer's loss `name` takes."""
    rng = _rng(seed)
    if name.startswith("attention"):
        return _scores(seed, mask_BxT), _scores(seed + 100, mask_BxT)
    h = lambda dim: rng.normal(size=(B, T, dim)).astype(np.float32)
    if name in ("fsp", "gram"):
        return (h(D), h(D)), (h(D), h(D))
    if name in ("mmd", "nst"):
        return (h(D), h(D)), (h(2 * D), h(2 * D))  # the teacher may be wider
    return h(D), h(D)


TB_MATCH = ["attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean"]
TB_MATCH += ["hidden_mse", "cos", "pkd", "fsp", "gram", "mmd", "nst"]
MATCH_NAMES = [*TB_MATCH, "minilm_attention", "minilm_relation"]
KD_NAMES = ["ce", "mse", "kl_t2"]  # fixed lists: other code may register entries of its own


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", TB_MATCH)
def test_match_loss_vs_textbrewer(name, masked):
    presets = _tb_presets()
    mask = _mask(TB_LENGTHS)
    s, t = _match_features(name, TB_MATCH.index(name), mask)
    tb_mask = torch.tensor(mask.astype(np.int64)) if masked else None
    ref = presets.MATCH_LOSS_MAP[name](_torch(s), _torch(t), tb_mask).item()
    ours = losses.MATCH_LOSS_MAP[name]
    got = ours(s, t, mask.astype(np.int32) if masked else None)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    assert got.dtype == jnp.float32 and got.shape == ()
    if name.startswith("attention") and masked:
        # The encoder's masked keys (float32 minimum) give TextBrewer's value on its -1e4 inputs.
        s_min, t_min = (np.where(mask[:, None, None, :], x, F32_MIN) for x in (s, t))
        np.testing.assert_allclose(ours(s_min, t_min, mask), ref, rtol=RTOL, atol=ATOL)


def test_kd_registry_names_map_to_textbrewer():
    presets = _tb_presets()
    assert set(presets.KD_LOSS_MAP) == {"ce", "mse"}


def _kd_reference(name, s, t, temp, presets):
    """TextBrewer's kd loss on the selected rows (DistilBERT's KL per row * T_row^2 for kl_t2)."""
    if name != "kl_t2":
        return presets.KD_LOSS_MAP[name](s, t, temp).item()
    temp_col = temp.unsqueeze(-1) if isinstance(temp, torch.Tensor) and temp.dim() else temp
    kl = F.kl_div(F.log_softmax(s / temp_col, -1), F.softmax(t / temp_col, -1), reduction="none")
    return (kl.sum(-1) * torch.as_tensor(temp) ** 2).mean().item()


@pytest.mark.parametrize("rows", [(B, T), (B,)], ids=["BxT", "B"])
@pytest.mark.parametrize("temp_kind", ["float", "array0d", "per_row"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", KD_NAMES)
def test_kd_loss_vs_textbrewer(name, masked, temp_kind, rows):
    presets = _tb_presets()
    rng = _rng(sum(map(ord, f"{name}{temp_kind}{rows}")))  # fixed seed per case
    s, t = rng.normal(size=(2, *rows, V)).astype(np.float32) * 3
    temp = {
        "float": 2.5,
        "array0d": np.float32(3.0),
        "per_row": rng.uniform(0.5, 4.0, rows).astype(np.float32),
    }[temp_kind]
    mask = _mask([T, 0, 2]) if len(rows) == 2 else np.array([True, False, True])
    sel = mask if masked else np.ones(rows, bool)
    tb_temp = torch.tensor(temp[sel]) if temp_kind == "per_row" else torch.tensor(temp)
    tb_temp = 2.5 if temp_kind == "float" else tb_temp
    ref = _kd_reference(name, torch.tensor(s[sel]), torch.tensor(t[sel]), tb_temp, presets)
    got = losses.KD_LOSS_MAP[name](s, t, temp, mask if masked else None)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_kd_kl_t2_scalar_temperature_is_distilbert_batchmean():
    rng = _rng(20)
    s, t = rng.normal(size=(2, B * T, V)).astype(np.float32)
    ref = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(torch.tensor(s) / 2, -1), F.softmax(torch.tensor(t) / 2, -1)
    )
    np.testing.assert_allclose(losses.KD_LOSS_MAP["kl_t2"](s, t, 2.0), 4 * ref.item(), rtol=RTOL)


def test_kd_temperature_junk_on_unselected_rows_is_ignored():
    rng = _rng(21)
    s, t = rng.normal(size=(2, B, T, V)).astype(np.float32)
    mask = _mask([T, 0, 2])
    temp = rng.uniform(1, 3, (B, T)).astype(np.float32)
    for name in KD_NAMES:
        fn = losses.KD_LOSS_MAP[name]
        clean = fn(s, t, temp, mask)
        for junk in (0.0, np.nan, np.inf):
            temp_junk = np.where(mask, temp, np.float32(junk))
            got, grads = jax.value_and_grad(fn, argnums=(0, 2))(s, t, temp_junk, mask)
            np.testing.assert_allclose(got, clean, rtol=RTOL, err_msg=f"{name} {junk}")
            assert _finite(grads), f"{name} {junk}"  # also d/d temperature, e.g. a learned one


# --------------------------------------------------------------------------- MiniLM vs NumPy loops


def _np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _np_attention_kl(scores_S, scores_T, mask):
    """Loops over examples, heads and valid queries; softmax over valid keys only; float64."""
    total, count = 0.0, 0
    for b in range(scores_S.shape[0]):
        valid = np.arange(T) if mask is None else np.flatnonzero(mask[b])
        for h in range(scores_S.shape[1]):
            for q in valid:
                p = _np_softmax(scores_T[b, h, q, valid].astype(np.float64))
                r = _np_softmax(scores_S[b, h, q, valid].astype(np.float64))
                total += np.sum(p * (np.log(p) - np.log(r)))
                count += 1
    return total / max(count, 1)


def _np_relations(x_BxTxD, num_heads):
    """[B,R,T,T] relation scores x_r x_r^T / sqrt(D/R), head by head."""
    d_r = x_BxTxD.shape[-1] // num_heads
    out = np.zeros((x_BxTxD.shape[0], num_heads, T, T))
    for b in range(x_BxTxD.shape[0]):
        for r in range(num_heads):
            x_r = x_BxTxD[b, :, r * d_r : (r + 1) * d_r].astype(np.float64)
            out[b, r] = x_r @ x_r.T / math.sqrt(d_r)
    return out


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_minilm_attention_vs_numpy(masked):
    mask = _mask(TB_LENGTHS)
    # Padded keys hold random junk: the loss must exclude them itself, not rely on -1e4.
    s, t = _rng(30).normal(size=(2, B, H, T, T)).astype(np.float32) * 2
    want = _np_attention_kl(s, t, mask if masked else None)
    got = losses.MATCH_LOSS_MAP["minilm_attention"](s, t, mask if masked else None)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert got > 0


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_minilm_relation_vs_numpy(masked):
    mask = _mask(TB_LENGTHS) if masked else None
    rng = _rng(31)
    q_S, q_T = rng.normal(size=(B, T, D)), rng.normal(size=(B, T, 2 * D))  # D_S != D_T
    want = _np_attention_kl(_np_relations(q_S, 3), _np_relations(q_T, 3), mask)
    got = losses.minilm_relation(q_S.astype(np.float32), q_T.astype(np.float32), mask, 3)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    built = losses.minilm_relation_loss(3)
    np.testing.assert_allclose(built(q_S, q_T, mask), got, rtol=RTOL)


def test_minilm_relation_registry_default_is_12_heads():
    rng = _rng(32)
    q_S, q_T = rng.normal(size=(2, B, T, 24))
    want = _np_attention_kl(_np_relations(q_S, 12), _np_relations(q_T, 12), None)
    got = losses.MATCH_LOSS_MAP["minilm_relation"](q_S, q_T)
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_minilm_errors_name_the_sizes():
    mask = _mask(TB_LENGTHS)
    with pytest.raises(ValueError, match="student 2, teacher 4"):
        losses.minilm_attention(_scores(0, mask), _scores(1, mask, heads=4), mask)
    with pytest.raises(
        ValueError, match="teacher size 10 is not divisible by num_relation_heads=4"
    ):
        losses.minilm_relation(np.ones((B, T, 8)), np.ones((B, T, 10)), None, 4)


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


def test_pkd_hand_and_zero_vector():
    s = jnp.array([[[3.0, 4.0], [9.0, 9.0]]])  # [CLS] normalised: [0.6, 0.8]
    t = jnp.array([[[2.0, 0.0], [1.0, 1.0]]])  # [CLS] normalised: [1, 0]
    np.testing.assert_allclose(losses.pkd_loss(s, t), 0.4**2 + 0.8**2, rtol=RTOL)
    # TextBrewer: 0/0 = NaN for a zero [CLS]; here the zero vector stays 0: |0 - [1, 0]|^2 = 1.
    value, grads = jax.value_and_grad(losses.pkd_loss)(jnp.zeros_like(s), t)
    np.testing.assert_allclose(value, 1.0, rtol=RTOL)
    assert np.all(np.isfinite(grads))


def test_attention_no_mask_rule_hand():
    # TextBrewer without a mask zeroes every score <= -1e-3 (not only masked keys).
    s = jnp.array([[[[2.0, -5.0]]]])  # -> [2, 0]
    t = jnp.array([[[[1.0, -1e-3]]]])  # -> [1, 0]
    np.testing.assert_allclose(losses.att_mse_loss(s, t), (1.0**2 + 0.0) / 2, rtol=RTOL)
    # ce: p_T = softmax([1, -1e-3]) with the second entry zeroed.
    p0 = 1 / (1 + math.exp(-1.001))
    s = jnp.array([[[[1.0, 2.0]]]])
    want = -p0 * (1.0 - math.log(math.exp(1.0) + math.exp(2.0)))
    np.testing.assert_allclose(losses.att_ce_loss(s, t), want, rtol=RTOL)


# --------------------------------------------------------------------------- PyTorch / NumPy


def test_soft_kl_vs_torch_kldiv_batchmean():
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


def test_ce_and_mse_vs_torch():
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
    ref = F.mse_loss(torch.tensor(a[mask]), torch.tensor(b[mask]))
    np.testing.assert_allclose(losses.hidden_mse(a, b, mask), ref.item(), rtol=RTOL)
    ref = F.mse_loss(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(losses.mse(a, b), ref.item(), rtol=RTOL)


def test_cosine_vs_torch_cosine_embedding_loss():
    rng, mask = _rng(3), _mask_BxT(3)
    s, t = rng.normal(size=(2, B, T, D)).astype(np.float32)
    s[0, 0] = 1e-7  # near-zero vectors exercise ATen's 1e-12 epsilon
    t[0, 0] = 1e-7
    mask[0, 0] = True
    ts, tt = torch.tensor(s[mask]), torch.tensor(t[mask])
    ref = torch.nn.CosineEmbeddingLoss(reduction="mean")(ts, tt, torch.ones(len(ts)))
    np.testing.assert_allclose(losses.cosine_hidden(s, t, mask), ref.item(), rtol=RTOL)


def test_pkd_vs_numpy_ignores_mask():
    rng = _rng(6)
    s, t = rng.normal(size=(2, B, T, D))
    ns = s[:, 0] / np.linalg.norm(s[:, 0], axis=1, keepdims=True)
    nt = t[:, 0] / np.linalg.norm(t[:, 0], axis=1, keepdims=True)
    want = ((ns - nt) ** 2).sum(-1).mean()
    np.testing.assert_allclose(losses.pkd_loss(s, t), want, rtol=RTOL)
    np.testing.assert_allclose(losses.pkd_loss(s[:, 0], t[:, 0]), want, rtol=RTOL)
    np.testing.assert_allclose(losses.pkd_loss(s, t, _mask_BxT(6)), want, rtol=RTOL)


def test_fsp_mmd_need_pairs_and_fsp_equal_sizes():
    h = np.ones((B, T, D), np.float32)
    with pytest.raises(ValueError, match="pair"):
        losses.MATCH_LOSS_MAP["mmd"](h, h)
    with pytest.raises(ValueError, match="student 6, teacher 12"):
        losses.fsp_loss((h, h), (np.ones((B, T, 2 * D)),) * 2)


# --------------------------------------------------------------------------- edge cases


def _cases():
    """(name, fn(student, teacher, mask) -> loss, student, teacher) on [B,T,...] inputs."""
    rng = _rng(8)
    logits_s, logits_t = rng.normal(size=(2, B, T, V)).astype(np.float32)
    h_s, h_t = rng.normal(size=(2, B, T, 2 * D)).astype(np.float32)
    mask = _mask_BxT(8)
    att_s, att_t = _scores(8, mask, F32_MIN), _scores(9, mask, F32_MIN)  # the encoder's masking
    labels = rng.integers(0, V, (B, T))
    temp_BxT = rng.uniform(1, 3, (B, T)).astype(np.float32)
    pair = lambda x: (x, 2 * x[..., ::-1] + 1)
    mlm = lambda s, t, m: losses.mlm_cross_entropy(s, jnp.where(m, labels, -100))
    cases = [
        ("soft_kl_T100", lambda s, t, m: losses.soft_kl(s, t, m, 100.0), logits_s, logits_t),
        ("cross_entropy", lambda s, t, m: losses.cross_entropy(s, labels, m), logits_s, logits_t),
        ("mlm", mlm, logits_s, logits_t),
        ("mse", losses.mse, h_s, h_t),
    ]
    for name in KD_NAMES:
        fn = losses.KD_LOSS_MAP[name]
        kd = lambda s, t, m, fn=fn: fn(s, t, temp_BxT, m)
        cases.append((f"kd_{name}", kd, logits_s, logits_t))
    for name in MATCH_NAMES:
        fn = losses.MATCH_LOSS_MAP[name]
        if name == "pkd":
            continue  # ignores the mask, as TextBrewer: junk at its [CLS] would count
        if name in ("fsp", "gram", "mmd", "nst"):
            fn = lambda s, t, m, fn=fn: fn(pair(s), pair(t), m)
        if name == "minilm_relation":
            fn = losses.minilm_relation_loss(3)
        inputs = (att_s, att_t) if "attention" in name else (h_s, h_t)
        cases.append((name, fn, *inputs))
    return cases


CASES = _cases()
IDS = [c[0] for c in CASES]
_JITTED = {}


def _value_and_grad(name, fn):
    """One jitted value_and_grad per case, shared by tests so each shape/dtype compiles once."""
    if name not in _JITTED:
        _JITTED[name] = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    return _JITTED[name]


def _poison(x, mask, value):
    """Puts `value` (-inf, 1e30, nan) at padded tokens (query or key for attention)."""
    m = np.asarray(mask, bool)
    if x.ndim == 4 and x.shape[1] == H:  # attention [B,H,T,T]
        return np.where(m[:, None, :, None] & m[:, None, None, :], x, np.float32(value))
    return np.where(m.reshape(m.shape + (1,) * (x.ndim - 2)), x, np.float32(value))


def _finite(*trees):
    return all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(trees))


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_padding_junk_and_empty_masks_give_finite_values_and_grads(name, fn, s, t):
    value_and_grad = _value_and_grad(name, fn)
    mask = _mask_BxT(8)  # contains an all-padding row; attention scores carry float32 min
    clean, grads = value_and_grad(s, t, mask)
    assert np.isfinite(clean) and _finite(grads)
    for junk in (-np.inf, 1e30, np.nan):
        value, grads = value_and_grad(_poison(s, mask, junk), _poison(t, mask, junk), mask)
        assert np.isfinite(value) and _finite(grads), junk
        np.testing.assert_allclose(value, clean, rtol=RTOL)  # junk changes nothing
    # Nothing selected (e.g. a batch with no masked token): exactly 0, zero gradients.
    value, (g_s, g_t) = value_and_grad(s, t, np.zeros((B, T), bool))
    assert value == 0.0
    assert not np.any(g_s) and not np.any(g_t)


@pytest.mark.parametrize("name", [n for n in MATCH_NAMES if n != "pkd"])
def test_an_all_padding_example_changes_nothing(name):
    """TextBrewer's masked means count tokens, so an empty example adds nothing (where TextBrewer
    divides by its zero length, as fsp does, we leave it out)."""
    mask = _mask(TB_LENGTHS)
    s, t = _match_features(name, 40, mask)
    fn = (
        losses.minilm_relation_loss(3) if name == "minilm_relation" else losses.MATCH_LOSS_MAP[name]
    )
    if name.startswith("minilm"):
        s, t = _match_features("attention" if "attention" in name else "hidden", 40, mask)
    pad = lambda x: np.concatenate([x, np.full_like(x[:1], 7.0)])  # junk in the empty example
    padded = lambda x: tuple(map(pad, x)) if isinstance(x, tuple) else pad(x)
    mask_pad = np.concatenate([mask, np.zeros((1, T), bool)])
    np.testing.assert_allclose(fn(padded(s), padded(t), mask_pad), fn(s, t, mask), rtol=RTOL)


ATT_NAMES = [n for n in MATCH_NAMES if "attention" in n]


@pytest.mark.parametrize("name", ATT_NAMES)
def test_attention_losses_without_mask_on_float32_min_scores_are_finite(name):
    mask = _mask_BxT(9)  # the all-padding row: every score of its rows is the float32 minimum
    s, t = _scores(10, mask, F32_MIN), _scores(11, mask, F32_MIN)
    value, grads = jax.value_and_grad(losses.MATCH_LOSS_MAP[name], argnums=(0, 1))(s, t)
    assert np.isfinite(value) and _finite(grads)


def test_pkd_all_padding_row_gives_finite_grads():
    rng, mask = _rng(12), _mask_BxT(12)
    s, t = (np.where(mask[..., None], x, 0.0) for x in rng.normal(size=(2, B, T, D)))
    value, grads = jax.value_and_grad(losses.pkd_loss, argnums=(0, 1))(s, t, mask)
    assert np.isfinite(value) and _finite(grads)


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_bf16_inputs_give_float32_close_to_f32(name, fn, s, t):
    mask = _mask_BxT(8)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    value, (g_s, _) = _value_and_grad(name, fn)(s16, t16, mask)
    assert value.dtype == jnp.float32 and g_s.dtype == jnp.bfloat16
    assert _finite(g_s)
    s32, t32 = np.asarray(s16, np.float32), np.asarray(t16, np.float32)
    ref, _ = _value_and_grad(name, fn)(s32, t32, mask)
    np.testing.assert_allclose(value, ref, rtol=RTOL)  # upcast before any arithmetic


@pytest.mark.parametrize("name,fn,s,t", CASES, ids=IDS)
def test_jit_matches_eager(name, fn, s, t):
    mask = _mask_BxT(13)
    np.testing.assert_allclose(jax.jit(fn)(s, t, mask), fn(s, t, mask), rtol=RTOL)
