"""Pure JAX distillation losses: Hinton KD, DistilBERT's triple loss, TextBrewer layer losses.

Every loss returns a float32 scalar computed in float32 (bf16 inputs are upcast first). Masks are
boolean or 0/1 arrays over the leading (non-feature) axes; means run over the selected positions
only, and when nothing is selected the loss is 0 with zero gradients.

Unselected inputs are replaced by zeros *before* any arithmetic. A single `where` on the output is
not enough: its zero cotangent times an inf/NaN intermediate (log_softmax of a row of -inf, say)
is still NaN in the backward pass.
"""

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
_TORCH_COS_EPS = 1e-12  # ATen's cosine_embedding_loss adds this to each squared norm.
_LOG_EPS = 1e-12  # keeps log(p) finite for attention probabilities that underflowed to 0.
_NORM_EPS = 1e-12  # F.normalize's eps: a zero vector stays zero instead of 0/0.


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


# --------------------------------------------------------------------------- logits losses


def soft_kl(student_logits, teacher_logits, mask=None, temperature=1.0):
    """Hinton KD: T^2 * mean over selected rows of KL(softmax(t/T) || softmax(s/T)).

    Matches DistilBERT's `KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T**2`
    on the selected rows. Logits are [..., V] (e.g. [B,T,V] with mask [B,T], or [B,C] with mask
    [B]); mask=None selects all rows. Terms with teacher probability 0 contribute 0 (torch xlogy).
    """
    sel = _sel(mask, student_logits.shape[:-1])
    log_q = jax.nn.log_softmax(_zero_unselected(student_logits, sel) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(_zero_unselected(teacher_logits, sel) / temperature, axis=-1)
    p = jnp.exp(log_p)
    # Both logs are gated so that p == 0 with log = -inf gives 0, also in the gradient.
    pos = p > 0
    kl = jnp.sum(p * (jnp.where(pos, log_p, 0.0) - jnp.where(pos, log_q, 0.0)), axis=-1)
    return _masked_mean(kl, sel) * temperature**2


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
    """BERT-PKD / TextBrewer pkd_loss: mean over examples of |s/|s| - t/|t||^2 at position 0.

    Accepts [B,T,D] (uses token 0, [CLS]) or [B,D]. TextBrewer ignores the mask; here a [B,T]
    mask only drops examples whose first token is padding (all-padding rows), which is the same
    on real data. Normalisation uses F.normalize's eps so a zero vector gives no NaN.
    """
    row_mask = None if mask is None else jnp.asarray(mask)
    if row_mask is not None and row_mask.ndim == 2:
        row_mask = row_mask[:, 0]
    sel = _sel(row_mask, student_h.shape[:1])

    def cls_normed(h):
        cls_BxD = _zero_unselected(h[:, 0] if h.ndim == 3 else h, sel)
        sq = jnp.sum(cls_BxD * cls_BxD, axis=-1, keepdims=True)
        return cls_BxD * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS**2))

    dist_B = jnp.sum((cls_normed(student_h) - cls_normed(teacher_h)) ** 2, axis=-1)
    return _masked_mean(dist_B, sel)


def _pair_sel(mask, shape_BxHxTxT):
    """[B,(H),T,T] selection of (query, key) pairs where both tokens are selected."""
    if mask is None:
        return jnp.ones(shape_BxHxTxT, bool)
    m_BxT = jnp.asarray(mask) != 0
    pair_BxTxT = m_BxT[:, :, None] & m_BxT[:, None, :]
    if len(shape_BxHxTxT) == 4:
        pair_BxTxT = pair_BxTxT[:, None]
    return jnp.broadcast_to(pair_BxTxT, shape_BxHxTxT)


def mmd_loss(student_h, teacher_h, mask=None):
    """TextBrewer mmd_loss (NST variant): MSE between token-similarity (Gram) matrices.

    gram = h0 @ h1^T / hidden over [B,T,T], averaged over valid (query, key) pairs. Each of
    student_h / teacher_h is one [B,T,D] array (self-similarity, h0 = h1) or a pair (h0, h1) as in
    TextBrewer's two-layer form. Student and teacher hidden sizes may differ. We divide by the
    hidden size in both paths: TextBrewer's masked path divides by the padded length instead,
    which makes the loss depend on padding.
    """

    def gram(h):
        h0, h1 = h if isinstance(h, tuple | list) else (h, h)
        sel = _sel(mask, h0.shape[:-1])
        h0, h1 = _zero_unselected(h0, sel), _zero_unselected(h1, sel)
        return jnp.einsum("btd,bsd->bts", h0, h1) / h1.shape[-1]

    gram_S, gram_T = gram(student_h), gram(teacher_h)
    return _masked_mean((gram_S - gram_T) ** 2, _pair_sel(mask, gram_S.shape))


# --------------------------------------------------------------------------- attention losses


def attention_mse(att_S, att_T, mask=None):
    """TextBrewer att_mse_loss on attention *probabilities* [B,H,T,T]: mean over heads and valid
    (query, key) pairs of (p_S - p_T)^2, i.e. sum / (H * sum_b len_b^2) as TextBrewer.

    TextBrewer receives pre-softmax scores masked with large negatives and, without a mask, zeroes
    entries <= -1e-3; probabilities are never negative, so that step has no counterpart here.
    """
    sel = _pair_sel(mask, att_S.shape)
    diff = _zero_unselected(att_S, sel) - _zero_unselected(att_T, sel)
    return _masked_mean(diff**2, sel)


def attention_ce(att_S, att_T, mask=None):
    """TextBrewer att_ce_loss on probabilities [B,H,T,T]: -sum_k p_T log(p_S + 1e-12) over valid
    keys, averaged over heads and valid queries (TextBrewer applies softmax/log_softmax to scores;
    on probabilities log_softmax(scores) = log p_S, the eps only guards underflow).
    """
    pair = _pair_sel(mask, att_S.shape)
    p_S, p_T = _zero_unselected(att_S, pair), _zero_unselected(att_T, pair)
    ce_BxHxT = -jnp.sum(p_T * jnp.log(p_S + _LOG_EPS), axis=-1)
    query_sel = _sel(None if mask is None else jnp.asarray(mask)[:, None, :], ce_BxHxT.shape)
    return _masked_mean(ce_BxHxT, query_sel)


# --------------------------------------------------------------------------- combined losses


def _active(alpha):
    """False only for a static zero weight, so that term is never computed (traced: always)."""
    return not (isinstance(alpha, int | float) and alpha == 0.0)


def distil_loss(
    student,
    teacher,
    batch,
    *,
    temperature,
    alpha_ce,
    alpha_mlm,
    alpha_cos,
    alpha_mse=0.0,
    restrict_ce_to_mask=False,
):
    """DistilBERT's loss (HF research_projects/distillation/distiller.py), returns (total, terms).

    student/teacher: dicts with 'logits' [B,T,V] and 'hidden' [B,T,D] (last hidden state).
    batch: 'attention_mask' [B,T] and 'labels' [B,T] (-100 = not masked).
      loss_ce:  soft_kl over non-pad tokens, or over masked tokens if restrict_ce_to_mask;
      loss_mlm: mlm_cross_entropy of the student on labels;
      loss_cos: cosine_hidden over non-pad tokens;
      loss_mse: distiller.py's alpha_mse term on *logits*: MSELoss(reduction='sum') over the KL
                rows divided by their number (for hidden-state MSE see hidden_mse).
    Terms are unweighted; total = sum alpha_i * term_i. A term whose alpha is a Python 0.0 is not
    computed and reported as 0. The teacher is wrapped in stop_gradient.
    """
    teacher = jax.lax.stop_gradient(teacher)
    labels, pad_BxT = batch["labels"], batch["attention_mask"]
    kl_BxT = labels != IGNORE_INDEX if restrict_ce_to_mask else pad_BxT
    s_logits, t_logits = student["logits"], teacher["logits"]
    zero = jnp.zeros((), jnp.float32)

    def logit_mse():
        sel = _sel(kl_BxT, s_logits.shape[:-1])
        sq = (_zero_unselected(s_logits, sel) - _zero_unselected(t_logits, sel)) ** 2
        return _masked_mean(jnp.sum(sq, axis=-1), sel)

    s_hid, t_hid = student.get("hidden"), teacher.get("hidden")
    spec = {  # name: (alpha, thunk); thunks let a static zero alpha skip the computation
        "loss_ce": (alpha_ce, lambda: soft_kl(s_logits, t_logits, kl_BxT, temperature)),
        "loss_mlm": (alpha_mlm, lambda: mlm_cross_entropy(s_logits, labels)),
        "loss_cos": (alpha_cos, lambda: cosine_hidden(s_hid, t_hid, pad_BxT)),
        "loss_mse": (alpha_mse, logit_mse),
    }
    terms = {name: fn() if _active(alpha) else zero for name, (alpha, fn) in spec.items()}
    total = sum((alpha * terms[name] for name, (alpha, _) in spec.items() if _active(alpha)), zero)
    return total, {"loss": total, **terms}


INTERMEDIATE_LOSSES = {
    "hidden_mse": hidden_mse,
    "hidden_cos": cosine_hidden,
    "attention_mse": attention_mse,
    "attention_ce": attention_ce,
    "pkd": pkd_loss,
    "mmd": mmd_loss,
}


def _parse_match(match):
    """(s_layer, t_layer, name, weight[, proj]), or (name, s_layer, t_layer, weight[, proj])."""
    if len(match) in (4, 5) and isinstance(match[2], str):
        s_layer, t_layer, name, weight = match[:4]
    elif len(match) in (4, 5) and isinstance(match[0], str):
        name, s_layer, t_layer, weight = match[:4]
    else:
        raise ValueError(
            f"intermediate match must be (student_layer, teacher_layer, loss_name, weight[, proj]);"
            f" got {match!r}"
        )
    if name not in INTERMEDIATE_LOSSES:
        raise ValueError(
            f"unknown intermediate loss {name!r}; expected one of {list(INTERMEDIATE_LOSSES)}"
        )
    return s_layer, t_layer, name, weight


def _project(h_BxTxDs, proj):
    """Applies a student-side Linear: an array [Ds,Dt] or Dense params {'kernel', 'bias'?}."""
    if isinstance(proj, dict):
        out = h_BxTxDs @ proj["kernel"]
        return out + proj["bias"] if proj.get("bias") is not None else out
    return h_BxTxDs @ proj


def intermediate_loss(student_aux, teacher_aux, matches, mask=None, projections=None):
    """TextBrewer-style intermediate_matches; returns (sum_i weight_i * loss_i, {key: loss_i}).

    aux dicts hold 'hidden_states' [L+1,B,T,D] (index 0 = embedding output) and 'attentions'
    [L,B,H,T,T] (index l = layer l). Layer indices are Python ints (a pair of ints for 'mmd'
    uses TextBrewer's two-layer Gram form). Attention losses index 'attentions', the others
    'hidden_states'. If hidden sizes differ, `projections[i]` (TextBrewer's 'proj': a trainable
    Linear owned by the student, [Ds,Dt] or {'kernel','bias'}) maps student states of match i to
    the teacher size; a 5th match element (e.g. ('linear', Ds, Dt)) is a hint for whoever builds
    those params and is ignored here. Per-match losses are reported unweighted.
    """
    projections = projections or {}
    total, terms = jnp.zeros((), jnp.float32), {}
    for i, match in enumerate(matches):
        s_layer, t_layer, name, weight = _parse_match(match)
        feature = "attentions" if name.startswith("attention") else "hidden_states"

        s = _take(student_aux[feature], s_layer)
        t = _take(teacher_aux[feature], t_layer)
        if i in projections and feature == "hidden_states":
            proj = projections[i]
            s = tuple(_project(x, proj) for x in s) if isinstance(s, tuple) else _project(s, proj)
        s_dim, t_dim = jax.tree.leaves(s)[0].shape[-1], jax.tree.leaves(t)[0].shape[-1]
        if feature == "hidden_states" and name != "mmd" and s_dim != t_dim:
            raise ValueError(
                f"match {i} {match!r}: student hidden size {s_dim} != teacher {t_dim}; "
                f"pass projections={{{i}: kernel_{s_dim}x{t_dim}}}"
            )
        value = INTERMEDIATE_LOSSES[name](s, t, mask)
        key = f"{i}_{name}_s{_layer_str(s_layer)}_t{_layer_str(t_layer)}"
        terms[key] = value
        total = total + weight * value
    return total, terms


def _take(stack, layer):
    """Layer `layer` of a stacked [L,...] array, or a tuple of layers for a pair of indices."""
    return tuple(stack[j] for j in layer) if isinstance(layer, tuple | list) else stack[layer]


def _layer_str(layer):
    return "-".join(map(str, layer)) if isinstance(layer, tuple | list) else str(layer)
