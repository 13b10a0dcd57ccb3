"""Pure JAX distillation losses: Hinton KD, DistilBERT's loss terms, TextBrewer's and MiniLM's.

Every loss returns a float32 scalar computed in float32 (bf16 inputs are upcast first). Masks are
boolean or 0/1 arrays over the leading (non-feature) axes; means run over the selected positions
only, and when nothing is selected the loss is 0 with zero gradients.

Unselected inputs are replaced by zeros *before* any arithmetic. A single `where` on the output is
not enough: its zero cotangent times an inf/NaN intermediate (log_softmax of a row of -inf, say)
is still NaN in the backward pass.

Two registries with TextBrewer's names (textbrewer.presets) and values:
  MATCH_LOSS_MAP[name](feature_S, feature_T, mask=None): intermediate features, mask [B,T];
  KD_LOSS_MAP[name](logits_S, logits_T, temperature=1.0, mask=None): logits [..., V], the
    temperature a float or one per row (logits.shape[:-1]), the mask selecting rows.
Attention losses take pre-softmax scores [B,H,T,T] (masked keys at a large negative value, as
the encoder's output_attentions='scores'). A new loss is one dict entry, e.g.:

    def l1(feature_S, feature_T, mask=None):
        return jnp.mean(jnp.abs(feature_S - feature_T))
    losses.MATCH_LOSS_MAP["l1"] = l1
"""

import functools
import math

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
_TORCH_COS_EPS = 1e-12  # ATen's cosine_embedding_loss adds this to each squared norm.
_F32_MIN = float(jnp.finfo(jnp.float32).min)  # what the encoder puts on masked keys
_TB_NEG = -1e-3  # TextBrewer's maskless rule: scores <= -1e-3 are treated as masked (set to 0)
_SCORE_FLOOR = -1e30  # below any real score (exp gives 0), yet H of them sum to a finite float32


def _sel(mask, shape):
    """Boolean selection of shape `shape`; None selects everything."""
    if mask is None:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(jnp.asarray(mask) != 0, shape)


def _zero_unselected(x, sel):
    """x in float32 with unselected positions zeroed; sel covers x's leading axes."""
    sel = sel.reshape(sel.shape + (1,) * (x.ndim - sel.ndim))
    return jnp.where(sel, jnp.asarray(x, jnp.float32), 0.0)


def _masked_mean(values, sel):
    """Mean of `values` over selected leading positions and all trailing axes; 0 if none."""
    sel_full = sel.reshape(sel.shape + (1,) * (values.ndim - sel.ndim))
    count = jnp.sum(sel, dtype=jnp.float32) * (values.size // max(sel.size, 1))
    total = jnp.sum(jnp.where(sel_full, values, 0.0))
    return total / jnp.maximum(count, 1.0)


def _pair_sel(mask, shape):
    """[B,(H),T,T] selection of (query, key) pairs where both tokens are selected."""
    if mask is None:
        return jnp.ones(shape, bool)
    m_BxT = jnp.asarray(mask) != 0
    pair_BxTxT = m_BxT[:, :, None] & m_BxT[:, None, :]
    if len(shape) == 4:
        pair_BxTxT = pair_BxTxT[:, None]
    return jnp.broadcast_to(pair_BxTxT, shape)


def _query_sel(mask, shape):
    """[B,(H),T] selection of valid queries."""
    if mask is None:
        return jnp.ones(shape, bool)
    m_BxT = jnp.asarray(mask) != 0
    return jnp.broadcast_to(m_BxT[:, None] if len(shape) == 3 else m_BxT, shape)


# --------------------------------------------------------------------------- logits losses


def _row_temperature(temperature, sel):
    """[..., 1] float32 temperature per row; unselected rows get 1 so junk there cannot divide."""
    t = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), sel.shape)
    return jnp.where(sel, t, 1.0)[..., None]


def soft_kl(student_logits, teacher_logits, mask=None, temperature=1.0):
    """Hinton KD: mean over selected rows of T^2 * KL(softmax(t/T) || softmax(s/T)).

    Matches DistilBERT's `KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T**2`
    on the selected rows. Logits are [..., V] (e.g. [B,T,V] with mask [B,T], or [B,C] with mask
    [B]); mask=None selects all rows. The temperature is a scalar or one per row (each row is then
    scaled by its own T^2). Terms with teacher probability 0 contribute 0 (torch xlogy).
    """
    sel = _sel(mask, student_logits.shape[:-1])
    temp = _row_temperature(temperature, sel)
    log_q = jax.nn.log_softmax(_zero_unselected(student_logits, sel) / temp, axis=-1)
    log_p = jax.nn.log_softmax(_zero_unselected(teacher_logits, sel) / temp, axis=-1)
    p = jnp.exp(log_p)
    # Both logs are gated so that p == 0 with log = -inf gives 0, also in the gradient.
    pos = p > 0
    kl = jnp.sum(p * (jnp.where(pos, log_p, 0.0) - jnp.where(pos, log_q, 0.0)), axis=-1)
    return _masked_mean(kl * temp[..., 0] ** 2, sel)


def kd_kl_loss(logits_S, logits_T, temperature=1.0, mask=None):
    """KD_LOSS_MAP['kl_t2']: soft_kl in the registry's argument order."""
    return soft_kl(logits_S, logits_T, mask, temperature)


def kd_ce_loss(logits_S, logits_T, temperature=1.0, mask=None):
    """TextBrewer kd_ce_loss: mean over selected rows of -sum softmax(t/T) log_softmax(s/T)."""
    sel = _sel(mask, logits_S.shape[:-1])
    temp = _row_temperature(temperature, sel)
    p_T = jax.nn.softmax(_zero_unselected(logits_T, sel) / temp, axis=-1)
    log_q = jax.nn.log_softmax(_zero_unselected(logits_S, sel) / temp, axis=-1)
    ce = -jnp.sum(p_T * jnp.where(p_T > 0, log_q, 0.0), axis=-1)  # a -inf logit with p_T=0: 0
    return _masked_mean(ce, sel)


def kd_mse_loss(logits_S, logits_T, temperature=1.0, mask=None):
    """TextBrewer kd_mse_loss: mean over selected rows and classes of (s/T - t/T)^2."""
    sel = _sel(mask, logits_S.shape[:-1])
    temp = _row_temperature(temperature, sel)
    diff = (_zero_unselected(logits_S, sel) - _zero_unselected(logits_T, sel)) / temp
    return _masked_mean(diff**2, sel)


def kd_bce_loss(logits_S, logits_T, temperature=1.0, mask=None):
    """Multi-label KD: sigmoid BCE of s/T against the teacher's sigmoid(t/T), x T^2, averaged
    over selected rows and labels (each label is its own two-class distribution)."""
    sel = _sel(mask, logits_S.shape[:-1])
    temp = _row_temperature(temperature, sel)
    target = jax.nn.sigmoid(_zero_unselected(logits_T, sel) / temp)
    z = _zero_unselected(logits_S, sel) / temp
    bce = jnp.maximum(z, 0) - z * target + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return _masked_mean(bce * temp**2, sel)


def cross_entropy(logits, labels, mask=None):
    """Mean over selected positions of -log softmax(logits)[label] (torch CrossEntropyLoss)."""
    sel = _sel(mask, labels.shape)
    log_p = jax.nn.log_softmax(_zero_unselected(logits, sel), axis=-1)
    safe_labels = jnp.where(sel, labels, 0).astype(jnp.int32)  # -100 would index out of range
    nll = -jnp.take_along_axis(log_p, safe_labels[..., None], axis=-1)[..., 0]
    return _masked_mean(nll, sel)


def mlm_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX):
    """Mean CE over positions with label != ignore_index, as CrossEntropyLoss(ignore_index=-100)."""
    return cross_entropy(logits, labels, labels != ignore_index)


def mse(pred, target, mask=None):
    """Mean squared error over selected leading positions and all trailing axes (F.mse_loss)."""
    lead = pred.shape if mask is None else jnp.shape(mask)
    sel = _sel(mask, lead)
    diff = _zero_unselected(pred, sel) - _zero_unselected(target, sel)
    return _masked_mean(diff**2, sel)


# --------------------------------------------------------------------------- hidden-state losses


def cosine_hidden(student_h, teacher_h, mask=None):
    """Mean over selected tokens of 1 - cos(s, t): DistilBERT's alpha_cos / TextBrewer cos_loss.

    Uses ATen's cosine_embedding_loss formula (torch.nn.CosineEmbeddingLoss, target=+1):
    cos = s.t / sqrt((|s|^2 + 1e-12) * (|t|^2 + 1e-12)).
    """
    sel = _sel(mask, student_h.shape[:-1])
    s, t = _zero_unselected(student_h, sel), _zero_unselected(teacher_h, sel)
    dot = jnp.sum(s * t, axis=-1)
    mag = (jnp.sum(s * s, axis=-1) + _TORCH_COS_EPS) * (jnp.sum(t * t, axis=-1) + _TORCH_COS_EPS)
    return _masked_mean(1.0 - dot / jnp.sqrt(mag), sel)


def hidden_mse(student_h, teacher_h, mask=None):
    """TextBrewer hid_mse_loss: sum(mask * (s - t)^2) / (n_selected_tokens * hidden)."""
    return mse(student_h, teacher_h, mask)


def pkd_loss(student_h, teacher_h, mask=None):
    """TextBrewer pkd_loss (BERT-PKD): mean over examples of |s/|s| - t/|t||^2 at token 0.

    Accepts [B,T,D] (uses token 0, [CLS]) or [B,D].
    """
    del mask  # TextBrewer ignores the mask: every example counts (token 0 is never padding).

    def cls_normed(h):
        cls_BxD = jnp.asarray(h[:, 0] if h.ndim == 3 else h, jnp.float32)
        sq_Bx1 = jnp.sum(cls_BxD * cls_BxD, axis=-1, keepdims=True)
        # Differs from TextBrewer only for an exactly-zero vector: 0 here, 0/0 = NaN there.
        return cls_BxD * jax.lax.rsqrt(jnp.where(sq_Bx1 > 0, sq_Bx1, 1.0))

    return jnp.mean(jnp.sum((cls_normed(student_h) - cls_normed(teacher_h)) ** 2, axis=-1))


def _pair(feature, name):
    """The two [B,T,D] arrays of a two-layer feature, as TextBrewer's fsp/mmd take them."""
    if isinstance(feature, tuple | list) and len(feature) == 2:
        return feature
    raise ValueError(f"{name} takes a pair (a, b) of [B,T,D] arrays per model; got {feature!r:.80}")


def fsp_loss(feature_S, feature_T, mask=None):
    """TextBrewer fsp_loss ('fsp', 'gram'): MSE between [B,D,D] matrices a^T b / length.

    Student and teacher D must agree (project first). Examples without any selected token are
    left out of the mean (TextBrewer divides 0 by a zero length there: NaN).
    """

    def gram_BxDxD(feature):
        a, b = _pair(feature, "fsp")
        sel = _sel(mask, a.shape[:-1])
        a, b = _zero_unselected(a, sel), _zero_unselected(b, sel)
        length_B = jnp.sum(sel, axis=1, dtype=jnp.float32)
        return jnp.einsum("btd,bte->bde", a, b) / jnp.maximum(length_B, 1.0)[:, None, None]

    gram_S, gram_T = gram_BxDxD(feature_S), gram_BxDxD(feature_T)
    if gram_S.shape != gram_T.shape:
        raise ValueError(
            f"fsp needs equal hidden sizes: student {gram_S.shape[-1]}, teacher "
            f"{gram_T.shape[-1]}; project the student first"
        )
    has_tokens_B = _sel(mask, feature_S[0].shape[:-1]).any(axis=1)
    return _masked_mean((gram_S - gram_T) ** 2, has_tokens_B)


def mmd_loss(feature_S, feature_T, mask=None):
    """TextBrewer mmd_loss ('mmd', 'nst'): MSE between [B,T,T] token similarities a b^T / scale.

    Hidden sizes of student and teacher may differ. Averaged over valid (query, key) pairs.
    """

    def gram_BxTxT(feature):
        a, b = _pair(feature, "mmd")
        sel = _sel(mask, a.shape[:-1])
        a, b = _zero_unselected(a, sel), _zero_unselected(b, sel)
        # TextBrewer divides by the hidden size without a mask but by the padded length with one.
        scale = a.shape[-1] if mask is None else a.shape[1]
        return jnp.einsum("btd,bsd->bts", a, b) / scale

    gram_S, gram_T = gram_BxTxT(feature_S), gram_BxTxT(feature_T)
    return _masked_mean((gram_S - gram_T) ** 2, _pair_sel(mask, gram_S.shape))


# --------------------------------------------------------------------------- attention losses


def _reduce_heads(scores, reduce):
    """Sum/mean of [B,H,T,T] over heads ([B,T,T] passes). The floor keeps H masked keys at the
    float32 minimum from overflowing to -inf (a row of -inf would make log_softmax NaN)."""
    if reduce is None or scores.ndim != 4:
        return scores
    return reduce(jnp.maximum(scores, _SCORE_FLOOR), axis=1)


def _att_mse(att_S, att_T, mask, reduce):
    """TextBrewer att_mse_loss (reduce=None) / att_mse_sum_loss (reduce=jnp.sum)."""
    if mask is None:
        s, t = (_reduce_heads(jnp.asarray(x, jnp.float32), reduce) for x in (att_S, att_T))
        s, t = (jnp.where(x <= _TB_NEG, 0.0, x) for x in (s, t))
        return jnp.mean((s - t) ** 2)
    pair = _pair_sel(mask, att_S.shape)
    s, t = (_reduce_heads(_zero_unselected(x, pair), reduce) for x in (att_S, att_T))
    return _masked_mean((s - t) ** 2, _pair_sel(mask, s.shape))  # / (H *) sum_b len_b^2


def _att_ce(att_S, att_T, mask, reduce):
    """TextBrewer att_ce_loss (reduce=None) / att_ce_mean_loss (reduce=jnp.mean).

    With a mask, masked keys are excluded from both softmaxes; TextBrewer keeps them, which is
    the same on its inputs (masked keys at -1e4 or below have probability exactly 0 in float32)."""
    if mask is None:
        s, t = (_reduce_heads(jnp.asarray(x, jnp.float32), reduce) for x in (att_S, att_T))
        keep = t > _TB_NEG  # TextBrewer zeroes p_T where the teacher's score is <= -1e-3
        p_T = jnp.where(keep, jax.nn.softmax(t, axis=-1), 0.0)
        log_q = jnp.where(keep, jax.nn.log_softmax(s, axis=-1), 0.0)
        return -jnp.mean(jnp.sum(p_T * log_q, axis=-1))
    pair = _pair_sel(mask, att_S.shape)
    s, t = (_reduce_heads(_zero_unselected(x, pair), reduce) for x in (att_S, att_T))
    pair = _pair_sel(mask, s.shape)
    s, t = (jnp.where(pair, x, _F32_MIN) for x in (s, t))
    p_T, log_q = jax.nn.softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.sum(jnp.where(pair, p_T * log_q, 0.0), axis=-1)
    return _masked_mean(ce, _query_sel(mask, ce.shape))  # / (H *) sum_b len_b


def att_mse_loss(scores_S, scores_T, mask=None):
    """TextBrewer att_mse_loss on scores [B,H,T,T]: mean over heads and valid (query, key) pairs
    of (s - t)^2; without a mask, mean over all entries after setting scores <= -1e-3 to 0."""
    return _att_mse(scores_S, scores_T, mask, None)


def att_mse_sum_loss(scores_S, scores_T, mask=None):
    """TextBrewer att_mse_sum_loss: att_mse_loss of the scores summed over heads ([B,T,T])."""
    return _att_mse(scores_S, scores_T, mask, jnp.sum)


def att_ce_loss(scores_S, scores_T, mask=None):
    """TextBrewer att_ce_loss on scores [B,H,T,T]: -sum_k softmax(t) log_softmax(s) over keys,
    averaged over heads and valid queries; without a mask over all queries, with p_T set to 0
    where t <= -1e-3."""
    return _att_ce(scores_S, scores_T, mask, None)


def att_ce_mean_loss(scores_S, scores_T, mask=None):
    """TextBrewer att_ce_mean_loss: att_ce_loss of the scores averaged over heads ([B,T,T])."""
    return _att_ce(scores_S, scores_T, mask, jnp.mean)


# --------------------------------------------------------------------------- MiniLM


def _attention_kl(scores_S, scores_T, mask):
    """Mean over heads and valid queries of KL(softmax(t) || softmax(s)) over valid keys."""
    pair = _pair_sel(mask, scores_S.shape)
    s, t = (jnp.where(pair, jnp.asarray(x, jnp.float32), _F32_MIN) for x in (scores_S, scores_T))
    log_p, log_q = jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1)
    p = jnp.exp(log_p)
    pos = pair & (p > 0)  # gate both logs: a p = 0 key adds exactly 0, also in the gradient
    kl = jnp.sum(p * (jnp.where(pos, log_p, 0.0) - jnp.where(pos, log_q, 0.0)), axis=-1)
    return _masked_mean(kl, _query_sel(mask, kl.shape))


def minilm_attention(scores_S, scores_T, mask=None):
    """MiniLM (Wang et al. 2020) attention transfer on last-layer scores [B,H,T,T]: KL(teacher ||
    student) of the attention distributions, averaged over heads and valid queries."""
    if scores_S.shape[1] != scores_T.shape[1]:
        raise ValueError(
            f"minilm_attention needs equal head counts: student {scores_S.shape[1]}, "
            f"teacher {scores_T.shape[1]} (use minilm_relation)"
        )
    return _attention_kl(scores_S, scores_T, mask)


def _relation_scores(x_BxTxD, mask, num_heads, who):
    """[B,R,T,T] scaled dot products x_r x_r^T / sqrt(D/R) of R relation heads."""
    b, t, d = x_BxTxD.shape
    if d % num_heads:
        raise ValueError(
            f"minilm_relation: {who} size {d} is not divisible by num_relation_heads={num_heads}"
        )
    x_BxTxRxK = _zero_unselected(x_BxTxD, _sel(mask, (b, t))).reshape(b, t, num_heads, -1)
    return jnp.einsum("btrk,bsrk->brts", x_BxTxRxK, x_BxTxRxK) / math.sqrt(d // num_heads)


def minilm_relation(qkv_S, qkv_T, mask=None, num_relation_heads=12):
    """MiniLMv2 self-attention relation transfer for one of a layer's projected queries, keys or
    values ([B,T,D] each; D_S and D_T may differ but both divide into num_relation_heads):
    KL(rel_T || rel_S) of the relations softmax(x_r x_r^T / sqrt(D/R)) over valid keys, averaged
    over relation heads and valid queries."""
    rel_S = _relation_scores(qkv_S, mask, num_relation_heads, "student")
    rel_T = _relation_scores(qkv_T, mask, num_relation_heads, "teacher")
    return _attention_kl(rel_S, rel_T, mask)


def minilm_relation_loss(num_relation_heads):
    """minilm_relation with R fixed: a registry-shaped fn(feature_S, feature_T, mask=None)."""
    return functools.partial(minilm_relation, num_relation_heads=num_relation_heads)


# --------------------------------------------------------------------------- registries

MATCH_LOSS_MAP = {
    "attention_mse": att_mse_loss,
    "attention_mse_sum": att_mse_sum_loss,
    "attention_ce": att_ce_loss,
    "attention_ce_mean": att_ce_mean_loss,
    "hidden_mse": hidden_mse,
    "cos": cosine_hidden,
    "pkd": pkd_loss,
    "fsp": fsp_loss,
    "gram": fsp_loss,
    "mmd": mmd_loss,
    "nst": mmd_loss,
    "minilm_attention": minilm_attention,
    "minilm_relation": minilm_relation,  # 12 relation heads unless num_relation_heads= is given
}

KD_LOSS_MAP = {
    "ce": kd_ce_loss,
    "mse": kd_mse_loss,
    "kl_t2": kd_kl_loss,  # DistilBERT / Hinton: KL(p_T || p_S) * T^2, batchmean over rows
    "bce": kd_bce_loss,  # multi-label outputs: per-label sigmoid KD
}
