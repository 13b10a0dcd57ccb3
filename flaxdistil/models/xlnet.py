"""XLNet's relative attention (Transformer-XL positions, segment terms) and its two streams.

Without perm_mask, target_mapping and mems (fine-tuning and feature extraction, what distillation
needs) an XLNet layer is a post-LN block like BERT's whose attention scores add a relative-position
term and a same/different-segment term; the embeddings are the words alone. XLNetLMHeadModel's
pretraining adds a query stream g (mask_emb at the target_mapping positions) that attends to the
content stream h under perm_mask without seeing its own token, and mems: each layer's input of the
previous segments, keys and values in front of the current ones. Transcribed from transformers'
XLNetModel.forward and XLNetRelativeAttention (bi attention, no bi_data, no clamp_len).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil.models.config import ModelConfig


def relative_positions(cfg: ModelConfig, T: int, mlen: int = 0) -> np.ndarray:
    """[2T + mlen, D] sinusoids of the distances T + mlen, ..., -T+1 ([sin, cos], not
    interleaved), in float32 throughout as XLNetModel.relative_positional_encoding computes them."""
    D = cfg.hidden_size
    inv_freq = np.float32(1) / np.power(np.float32(10000), np.arange(0, D, 2, dtype=np.float32) / D)
    sinusoid_PxF = np.arange(T + mlen, -T, -1, dtype=np.float32)[:, None] * inv_freq[None]
    return np.concatenate([np.sin(sinusoid_PxF), np.cos(sinusoid_PxF)], -1).astype(np.float32)


def rel_shift(x_BxHxTxP: jax.Array, klen: int) -> jax.Array:
    """XLNet's rel_shift_bnij: row i of [.., T, P] shifted so column j holds distance i - j
    (over the klen = mlen + T keys)."""
    B, H, T, P = x_BxHxTxP.shape
    x = x_BxHxTxP.reshape(B, H, P, T)[:, :, 1:]
    return x.reshape(B, H, T, P - 1)[..., :klen]


def layer_inputs(cfg, T, segments_BxT, perm_BxTxT, target_BxMxT, mems_LxBxSxD, drop, dtype):
    """What each layer takes besides its streams and the attention mask: (relative positions,
    segments, perm_mask, target_mapping), the same for every layer, and (mems,), one per layer
    (or ())."""
    mlen = 0 if mems_LxBxSxD is None else mems_LxBxSxD.shape[2]
    pos_PxD = drop(relative_positions(cfg, T, mlen))
    target = None if target_BxMxT is None else jnp.asarray(target_BxMxT, dtype)
    mems = () if mems_LxBxSxD is None else (jnp.asarray(mems_LxBxSxD, dtype),)
    return (pos_PxD, segments_BxT, perm_BxTxT, target), mems


class RelativeSelfAttention(nn.Module):
    """Returns (content output projection, probabilities or scores, q/k/v, query-stream output
    projection or None) as SelfAttention does plus the last; the output projection and q/k/v have
    no biases in XLNet. Both streams share every weight."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_scores: bool = False  # pre-softmax scores instead of probabilities
    output_qkv: bool = False

    @nn.compact
    def __call__(self, x_BxTxD, mask_BxT, pos_PxD, segments_BxT, perm_BxTxT=None, g_BxMxD=None,
                 target_BxMxT=None, mem_BxSxD=None):  # fmt: skip
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        H, K = cfg.num_attention_heads, cfg.head_dim
        init = nn.initializers.normal(cfg.initializer_range)
        dense = lambda name: nn.Dense(H * K, False, self.dtype, kernel_init=init, name=name)
        q, k, v, r = (dense(n) for n in ("query", "key", "value", "pos"))
        heads = lambda proj, x: proj(x).reshape(*x.shape[:2], H, K)
        # Memories come first among the keys: S = mlen + T of them.
        cat_BxSxD = x_BxTxD if mem_BxSxD is None else jnp.concatenate([mem_BxSxD, x_BxTxD], 1)
        mlen = cat_BxSxD.shape[1] - T
        k_BxSxHxK, v_BxSxHxK = heads(k, cat_BxSxD), heads(v, cat_BxSxD)
        kr_PxHxK = heads(r, pos_PxD[None].astype(self.dtype))[0]
        param = lambda name, shape=(H, K): self.param(name, init, shape).astype(self.dtype)
        r_w, r_r, r_s = param("r_w_bias"), param("r_r_bias"), param("r_s_bias")
        seg_embed_2xHxK = param("seg_embed", (2, H, K))
        other_Bx1xTxS = None
        if segments_BxT is not None:  # as HF: without token_type_ids, no segment term
            cat_ids = jnp.pad(segments_BxT, ((0, 0), (mlen, 0)))  # memories: segment 0
            other_Bx1xTxS = (segments_BxT[:, :, None] != cat_ids[:, None, :])[:, None]
        # What a query may see (XLNet's attn_mask): real keys, not hidden by perm_mask, every
        # memory. The content stream also sees its own token (non_tgt_mask), the query stream not.
        keep_Bx1xTxT = mask_BxT[:, None, None, :].astype(bool)
        if perm_BxTxT is not None:
            keep_Bx1xTxT = keep_Bx1xTxT & (perm_BxTxT <= 0)[:, None]
        keep_g = jnp.pad(keep_Bx1xTxT, ((0, 0), (0, 0), (0, 0), (mlen, 0)), constant_values=True)
        keep_h = keep_g | jnp.eye(T, T + mlen, mlen, dtype=bool)

        def core(q_BxTxHxK, keep_Bx1xTxS):
            scores = jnp.einsum("bihk,bjhk->bhij", q_BxTxHxK + r_w, k_BxSxHxK)
            pos = jnp.einsum("bihk,phk->bhip", q_BxTxHxK + r_r, kr_PxHxK)
            scores = scores + rel_shift(pos, T + mlen)
            if other_Bx1xTxS is not None:
                seg_BxHxTx2 = jnp.einsum("bihk,shk->bhis", q_BxTxHxK + r_s, seg_embed_2xHxK)
                scores += jnp.where(other_Bx1xTxS, seg_BxHxTx2[..., 1:], seg_BxHxTx2[..., :1])
            scores = (scores * K**-0.5).astype(jnp.float32)
            scores = jnp.where(keep_Bx1xTxS, scores, jnp.finfo(jnp.float32).min)
            probs_BxHxTxS = jax.nn.softmax(scores, axis=-1)
            dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(
                probs_BxHxTxS, deterministic=self.deterministic
            )
            ctx = jnp.einsum("bhij,bjhk->bihk", dropped.astype(self.dtype), v_BxSxHxK)
            return ctx.reshape(*ctx.shape[:2], -1), scores if self.output_scores else probs_BxHxTxS

        out = nn.Dense(cfg.hidden_size, False, self.dtype, kernel_init=init, name="out")
        q_BxTxHxK = heads(q, x_BxTxD)
        ctx_BxTxD, probs = core(q_BxTxHxK, keep_h)
        out_g = None
        if g_BxMxD is not None:
            # The M queries are scattered to their target positions (each sees that position's
            # relative distances and mask row), attended, and gathered back.
            qg_BxTxHxK = jnp.einsum("bmhk,bml->blhk", heads(q, g_BxMxD), target_BxMxT)
            ctx_g_BxTxD, _ = core(qg_BxTxHxK, keep_g)
            out_g = out(jnp.einsum("bld,bml->bmd", ctx_g_BxTxD, target_BxMxT))
        qkv = None
        if self.output_qkv:
            parts = (q_BxTxHxK, k_BxSxHxK[:, mlen:], v_BxSxHxK[:, mlen:])
            qkv = jnp.stack([y.reshape(B, T, -1) for y in parts])
        return out(ctx_BxTxD), probs, qkv, out_g


def new_mems(hidden_LxBxTxD, mems_LxBxMxD=None, mem_len: int | None = 512, reuse_len=None):
    """XLNetModel.cache_mem for every layer: the memories the next segment's forward takes, from
    aux['hidden_states'][:-1] (each layer's input). mem_len None or 0 keeps all; transformers'
    default (512) is XLNetConfig's."""
    cur = hidden_LxBxTxD if not reuse_len else hidden_LxBxTxD[:, :, :reuse_len]
    cat = cur if mems_LxBxMxD is None else jnp.concatenate([mems_LxBxMxD, cur], axis=2)
    return jax.lax.stop_gradient(cat[:, :, -mem_len:] if mem_len else cat)
