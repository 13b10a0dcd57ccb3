"""DeBERTa-v2/v3: disentangled attention over log-bucketed relative positions.

A DeBERTa layer is a post-LN block like BERT's (encoder.Layer) whose attention scores add two
position terms to content-to-content: content-to-position (c2p, query i against the embedding of
the distance i - j) and position-to-content (p2c, key j against the embedding of j - i), each
gathered from a table of 2 x span relative embeddings shared by all layers (optionally
LayerNorm'ed, and projected by each layer's own pos_key/pos_query, or with share_att_key by its
query/key projections). Distances beyond position_buckets / 2 fall into log-spaced buckets. The
v3 embeddings have no absolute positions (position_biased_input False); a narrower embedding is
projected to hidden_size before the LayerNorm. Transcribed from transformers'
DisentangledSelfAttention, DebertaV2Embeddings and DebertaV2Encoder (5.24).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil.models.config import ModelConfig


def max_relative(cfg: ModelConfig) -> int:
    pos = cfg.max_relative_positions
    return pos if pos > 0 else cfg.max_position_embeddings


def span(cfg: ModelConfig) -> int:
    """Distances embedded on each side (DisentangledSelfAttention.pos_ebd_size)."""
    return cfg.position_buckets if cfg.position_buckets > 0 else max_relative(cfg)


def log_bucket(rel: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """make_log_bucket_position, in float32 as torch computes it: |distances| < bucket_size / 2
    stay, longer ones share log-spaced buckets up to max_position."""
    mid = bucket_size // 2
    sign = np.sign(rel).astype(np.float32)
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid))
    log_pos = np.ceil(ratio / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1))
    return np.where(abs_pos <= mid, rel.astype(np.float32), (log_pos + mid) * sign)


def relative_positions(cfg: ModelConfig, T: int) -> np.ndarray:
    """[T, T] (bucketed) distances i - j of query i to key j (build_relative_position)."""
    ids = np.arange(T)
    rel = ids[:, None] - ids[None, :]
    if cfg.position_buckets > 0:
        rel = log_bucket(rel, cfg.position_buckets, max_relative(cfg))
    return rel.astype(np.int32)


class Embeddings(nn.Module):
    """Words (+ absolute positions) (+ token types) -> embed_proj (no bias; embedding_size !=
    hidden_size only) -> LayerNorm -> zeroed at padding -> dropout."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT, mask_BxT, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        embed = lambda n, name: nn.Embed(n, cfg.embed_dim, embedding_init=init, name=name)
        word = embed(cfg.vocab_size, "word_embeddings")
        x_BxTxE = word(input_ids_BxT)
        if cfg.position_biased_input:
            T = input_ids_BxT.shape[1]
            x_BxTxE += embed(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(T))
        if cfg.type_vocab_size:
            if token_type_ids_BxT is None:
                token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)
            x_BxTxE += embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids_BxT)
        if cfg.projects_embeddings:
            x_BxTxE = nn.Dense(
                cfg.hidden_size, use_bias=False, dtype=self.dtype, kernel_init=init, name="project"
            )(x_BxTxE)
        x_BxTxD = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(
            x_BxTxE
        )
        x_BxTxD = x_BxTxD * mask_BxT[..., None].astype(x_BxTxD.dtype)
        x_BxTxD = nn.Dropout(cfg.hidden_dropout_prob)(x_BxTxD, deterministic=deterministic)
        return x_BxTxD.astype(self.dtype), word


class RelativeEmbeddings(nn.Module):
    """The [2 x span, D] relative-position table every layer reads (DebertaV2Encoder's
    rel_embeddings, LayerNorm'ed with norm_rel_ebd='layer_norm')."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        table_PxD = self.param("rel_embeddings", init, (2 * span(cfg), cfg.hidden_size))
        if "layer_norm" in [k.strip() for k in cfg.norm_rel_ebd.lower().split("|")]:
            norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")
            table_PxD = norm(table_PxD)
        return table_PxD.astype(self.dtype)


class DisentangledSelfAttention(nn.Module):
    """Returns (output projection, probabilities or scores, q/k/v) as encoder.SelfAttention does.

    Einsum only, whatever attention_impl says: the c2p/p2c terms are a [B, H, T, T] bias gathered
    per (query, key) pair; handing it to jax.nn.dot_product_attention as its bias would
    materialise the very T x T tensor a fused kernel exists to avoid.
    """

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_scores: bool = False  # pre-softmax scores instead of probabilities
    output_qkv: bool = False

    @nn.compact
    def __call__(self, x_BxTxD, mask_BxT, rel_PxD=None):
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        H, K = cfg.num_attention_heads, cfg.head_dim
        init = nn.initializers.normal(cfg.initializer_range)
        dense = lambda name: nn.Dense(
            cfg.hidden_size, dtype=self.dtype, kernel_init=init, name=name
        )
        heads = lambda y: y.reshape(*y.shape[:-1], H, K)
        query, key = dense("query"), dense("key")
        q_BxTxHxK, k_BxTxHxK = heads(query(x_BxTxD)), heads(key(x_BxTxD))
        v_BxTxHxK = heads(dense("value")(x_BxTxD))
        # Each present term divides by sqrt(K x (number of terms)).
        scale = np.float32(np.sqrt(K * (1 + len(cfg.pos_att_type))))
        scores = jnp.einsum("bihk,bjhk->bhij", q_BxTxHxK, k_BxTxHxK) / scale
        if rel_PxD is not None:
            terms = self._position_terms(q_BxTxHxK, k_BxTxHxK, rel_PxD, query, key, dense)
            scores += terms / scale
        # HF masks padded queries too (the outer product of the mask): their rows are uniform.
        keep_Bx1xTxT = (mask_BxT[:, None, :, None] * mask_BxT[:, None, None, :]).astype(bool)
        scores = jnp.where(keep_Bx1xTxT, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs_BxHxTxT = jax.nn.softmax(scores, axis=-1)
        dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(
            probs_BxHxTxT, deterministic=self.deterministic
        )
        ctx_BxTxHxK = jnp.einsum("bhij,bjhk->bihk", dropped.astype(self.dtype), v_BxTxHxK)
        out_BxTxD = dense("out")(ctx_BxTxHxK.reshape(B, T, -1))
        qkv = None
        if self.output_qkv:
            qkv = jnp.stack([y.reshape(B, T, -1) for y in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)])
        return out_BxTxD, scores if self.output_scores else probs_BxHxTxT, qkv

    def _position_terms(self, q_BxTxHxK, k_BxTxHxK, rel_PxD, query, key, dense):
        """c2p[i, j] = q_i . pos_k[delta(i, j)] + p2c[i, j] = k_j . pos_q[delta(j, i)], unscaled
        (delta: the bucketed distance, clamped to the table); run inside __call__'s scope."""
        cfg = self.config
        T, H, S = q_BxTxHxK.shape[1], cfg.num_attention_heads, span(cfg)
        # Every layer drops out its own copy of the shared table (DeBERTa's pos_dropout).
        rel_PxD = nn.Dropout(cfg.hidden_dropout_prob)(rel_PxD, deterministic=self.deterministic)
        rel_TxT = relative_positions(cfg, T)
        rows_Tx1 = np.arange(T)[:, None]
        terms = 0.0
        if "c2p" in cfg.pos_att_type:
            pos_k = (key if cfg.share_att_key else dense("pos_key"))(rel_PxD).reshape(2 * S, H, -1)
            c2p_BxHxTxP = jnp.einsum("bihk,phk->bhip", q_BxTxHxK, pos_k)
            terms += c2p_BxHxTxP[:, :, rows_Tx1, np.clip(rel_TxT + S, 0, 2 * S - 1)]
        if "p2c" in cfg.pos_att_type:
            pos_q = (query if cfg.share_att_key else dense("pos_query"))(rel_PxD)
            p2c_BxHxTxP = jnp.einsum("bjhk,phk->bhjp", k_BxTxHxK, pos_q.reshape(2 * S, H, -1))
            p2c_BxHxTxT = p2c_BxHxTxP[:, :, rows_Tx1, np.clip(S - rel_TxT, 0, 2 * S - 1)]
            terms += jnp.swapaxes(p2c_BxHxTxT, -1, -2)
        return terms
