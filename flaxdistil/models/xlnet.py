"""XLNet's relative attention (Transformer-XL positions, segment terms), content stream only.

Without perm_mask, target_mapping and mems (fine-tuning and feature extraction, what distillation
needs) an XLNet layer is a post-LN block like BERT's whose attention scores add a relative-position
term and a same/different-segment term; the embeddings are the words alone. Transcribed from
transformers' XLNetRelativeAttention.rel_attn_core (bi attention, no bi_data, no clamp_len).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil.models.config import ModelConfig


def relative_positions(cfg: ModelConfig, T: int) -> np.ndarray:
    """[2T, D] sinusoids of the distances T, T-1, ..., -T+1 ([sin, cos], not interleaved), in
    float32 throughout as XLNetModel.relative_positional_encoding computes them."""
    D = cfg.hidden_size
    inv_freq = np.float32(1) / np.power(np.float32(10000), np.arange(0, D, 2, dtype=np.float32) / D)
    sinusoid_PxF = np.arange(T, -T, -1, dtype=np.float32)[:, None] * inv_freq[None]
    return np.concatenate([np.sin(sinusoid_PxF), np.cos(sinusoid_PxF)], -1).astype(np.float32)


def rel_shift(x_BxHxTxP: jax.Array, klen: int) -> jax.Array:
    """XLNet's rel_shift_bnij: row i of [.., T, 2T] shifted so column j holds distance i - j."""
    B, H, T, P = x_BxHxTxP.shape
    x = x_BxHxTxP.reshape(B, H, P, T)[:, :, 1:]
    return x.reshape(B, H, T, P - 1)[..., :klen]


class RelativeSelfAttention(nn.Module):
    """Returns (output projection, probabilities or scores, q/k/v) as SelfAttention does; the
    output projection and q/k/v have no biases in XLNet."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_scores: bool = False  # pre-softmax scores instead of probabilities
    output_qkv: bool = False

    @nn.compact
    def __call__(self, x_BxTxD, mask_BxT, pos_PxD, segments_BxT):
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        H, K = cfg.num_attention_heads, cfg.head_dim
        init = nn.initializers.normal(cfg.initializer_range)
        proj = lambda name: nn.Dense(H * K, False, self.dtype, kernel_init=init, name=name)
        param = lambda name, shape=(H, K): self.param(name, init, shape).astype(self.dtype)
        q_BxTxHxK = proj("query")(x_BxTxD).reshape(B, T, H, K)
        k_BxTxHxK = proj("key")(x_BxTxD).reshape(B, T, H, K)
        v_BxTxHxK = proj("value")(x_BxTxD).reshape(B, T, H, K)
        kr_PxHxK = proj("pos")(pos_PxD.astype(self.dtype)).reshape(-1, H, K)
        r_w, r_r, r_s, seg_embed_2xHxK = (
            param("r_w_bias"),
            param("r_r_bias"),
            param("r_s_bias"),
            param("seg_embed", (2, H, K)),
        )
        scores = jnp.einsum("bihk,bjhk->bhij", q_BxTxHxK + r_w, k_BxTxHxK)
        pos = jnp.einsum("bihk,phk->bhip", q_BxTxHxK + r_r, kr_PxHxK)
        scores = scores + rel_shift(pos, T)
        if segments_BxT is not None:  # as HF: without token_type_ids, no segment term
            seg_BxHxTx2 = jnp.einsum("bihk,shk->bhis", q_BxTxHxK + r_s, seg_embed_2xHxK)
            other_Bx1xTxT = (segments_BxT[:, :, None] != segments_BxT[:, None, :])[:, None]
            scores = scores + jnp.where(other_Bx1xTxT, seg_BxHxTx2[..., 1:], seg_BxHxTx2[..., :1])
        scores = (scores * K**-0.5).astype(jnp.float32)
        # A padded key is hidden from every query but itself (XLNet's non_tgt_mask).
        keep_Bx1xTxT = mask_BxT[:, None, None, :].astype(bool) | jnp.eye(T, dtype=bool)
        scores = jnp.where(keep_Bx1xTxT, scores, jnp.finfo(jnp.float32).min)
        probs_BxHxTxT = jax.nn.softmax(scores, axis=-1)
        dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(
            probs_BxHxTxT, deterministic=self.deterministic
        )
        ctx_BxTxHxK = jnp.einsum("bhij,bjhk->bihk", dropped.astype(self.dtype), v_BxTxHxK)
        out = nn.Dense(cfg.hidden_size, False, self.dtype, kernel_init=init, name="out")
        qkv = None
        if self.output_qkv:
            qkv = jnp.stack([y.reshape(B, T, -1) for y in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)])
        return (
            out(ctx_BxTxHxK.reshape(B, T, -1)),
            scores if self.output_scores else probs_BxHxTxT,
            qkv,
        )
