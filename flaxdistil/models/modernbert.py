"""ModernBERT: rotary positions, GeGLU, pre-norm LayerNorms (without biases by default) and
global attention every few layers with sliding-window attention between.

Transcribed from transformers 5.24's ModernBertModel in its padded form (eager/sdpa attention,
which is what transformers computes on CPU; its flash-attention path unpads, with the same result
on the real tokens). A sliding layer's token i sees keys j with |i - j| <= local_attention // 2,
as create_bidirectional_sliding_window_mask makes them. transformers' layer 0 has no attn_norm
(the embedding norm precedes it), and hidden_states[-1] is the final_norm output (the last
hidden state), the others the layers' residual streams.

Each layer's kind (global or sliding) and whether its attn_norm is the identity are scanned
inputs, not shapes, so a student sliced from any teacher layers keeps every layer's own
(config.layer_types, config.identity_attn_norm_layers); config.to_hf refuses the ones
transformers cannot rebuild.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil.models.config import ModelConfig, modernbert_layer_types
from flaxdistil.models.encoder import REMAT_POLICIES, _scanned, _want, activation, fused_attention


def layer_types(cfg: ModelConfig) -> tuple[str, ...]:
    return cfg.layer_types or modernbert_layer_types(cfg.num_hidden_layers)


def rotary_tables(theta: float, T: int, K: int) -> np.ndarray:
    """[2, T, K]: cos and sin of positions 0..T-1, in float32 as ModernBertRotaryEmbedding
    computes them (frequencies repeated, not interleaved: rotate_half's layout)."""
    inv_freq = np.float32(1) / np.float32(theta) ** (np.arange(0, K, 2, dtype=np.float32) / K)
    freqs_TxK = np.arange(T, dtype=np.float32)[:, None] * inv_freq[None]
    freqs_TxK = np.concatenate([freqs_TxK, freqs_TxK], -1)
    return np.stack([np.cos(freqs_TxK), np.sin(freqs_TxK)])


def rotate(x_BxTxHxK, cos_TxK, sin_TxK):
    """apply_rotary_pos_emb, in float32 whatever the compute dtype (as transformers does)."""
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos_TxK[:, None] + rotated * sin_TxK[:, None]


def _pick(flag, a, b):
    """a where flag else b: a Python choice for an unrolled layer, jnp.where in the scan."""
    if isinstance(flag, (bool, np.bool_)):
        return a if flag else b
    return jnp.where(flag, a, b)


def _dense(cfg: ModelConfig, features: int, use_bias: bool, name: str, dtype) -> nn.Dense:
    init = nn.initializers.normal(cfg.initializer_range)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=init, name=name)


def _norm(cfg: ModelConfig, name: str, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_bias=cfg.norm_bias, dtype=dtype, name=name)


class Attention(nn.Module):
    """Returns (Wo output, probabilities or scores or None, post-rotary q/k and v or None)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_attentions: bool | str = False
    attention_impl: str = "einsum"
    output_qkv: bool = False

    @nn.compact
    def __call__(self, x_BxTxD, mask_BxT, rope_2x2xTxK, is_global):
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        H, K = cfg.num_attention_heads, cfg.head_dim
        qkv = _dense(cfg, 3 * H * K, cfg.attention_bias, "Wqkv", self.dtype)(x_BxTxD)
        qkv_Bx3xTxHxK = qkv.reshape(B, T, 3, H, K).transpose(0, 2, 1, 3, 4)
        cos_TxK, sin_TxK = _pick(is_global, rope_2x2xTxK[0], rope_2x2xTxK[1])
        q_BxTxHxK, k_BxTxHxK = (
            rotate(y, cos_TxK, sin_TxK).astype(self.dtype)
            for y in qkv_Bx3xTxHxK[:, :2].swapaxes(0, 1)
        )
        v_BxTxHxK = qkv_Bx3xTxHxK[:, 2]
        half = cfg.local_attention // 2
        p = cfg.attention_probs_dropout_prob
        dropout_on = not self.deterministic and p > 0
        probs = None
        if self.attention_impl == "fused" and not self.output_attentions and not dropout_on:
            full = lambda: fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxT)
            window = (half, half)  # (left, right): keys i - half .. i + half
            local = lambda: fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxT, window)
            if isinstance(is_global, (bool, np.bool_)):
                ctx_BxTxHxK = full() if is_global else local()
            else:
                ctx_BxTxHxK = jax.lax.cond(is_global, full, local)
        else:
            scores = jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK) * K**-0.5
            pos = np.arange(T)
            near_TxT = np.abs(pos[:, None] - pos[None]) <= half
            keep = mask_BxT[:, None, None, :].astype(bool) & (is_global | near_TxT)
            # As the BERT layers: fp32 softmax, masked keys at the float32 minimum.
            scores = jnp.where(keep, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1)
            dropped = nn.Dropout(p)(probs, deterministic=self.deterministic)
            ctx_BxTxHxK = jnp.einsum("bhqt,bthk->bqhk", dropped.astype(self.dtype), v_BxTxHxK)
            if _want(self.output_attentions, "scores"):
                probs = scores
        out = _dense(cfg, cfg.hidden_size, cfg.attention_bias, "Wo", self.dtype)(
            ctx_BxTxHxK.reshape(B, T, -1)
        )
        out = nn.Dropout(p)(out, deterministic=self.deterministic)  # ModernBertAttention.out_drop
        qkv_3xBxTxD = None
        if self.output_qkv:  # the q and k the scores are made of: after the rotation
            parts = (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
            qkv_3xBxTxD = jnp.stack([y.reshape(B, T, -1) for y in parts])
        return out, probs, qkv_3xBxTxD


class MLP(nn.Module):
    """GeGLU: Wi to twice the intermediate size, act(input) * gate, Wo."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.config
        y = _dense(cfg, 2 * cfg.intermediate_size, cfg.mlp_bias, "Wi", self.dtype)(x_BxTxD)
        inp, gate = jnp.split(y, 2, axis=-1)
        y = nn.Dropout(cfg.mlp_dropout)(
            activation(cfg.hidden_act)(inp) * gate, deterministic=self.deterministic
        )
        return _dense(cfg, cfg.hidden_size, cfg.mlp_bias, "Wo", self.dtype)(y)


class Layer(nn.Module):
    """Pre-norm block, in nn.scan's (carry, x) -> (carry, y) form."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_hidden_states: bool = False
    output_attentions: bool | str = False
    attention_impl: str = "einsum"
    output_qkv: bool = False

    @nn.compact
    def __call__(self, h_BxTxD, mask_BxT, rope_2x2x2xTxK, flags):
        """rope: [global/local, cos/sin, T, K]. flags: (is_global, has_attn_norm), this layer's
        (0-d arrays in the scan, bools unrolled)."""
        cfg = self.config
        is_global, has_attn_norm = flags
        # Every layer has attn_norm params (the stack is uniform); an identity one ignores its own.
        x = _pick(has_attn_norm, _norm(cfg, "attn_norm", self.dtype)(h_BxTxD), h_BxTxD)
        attn_out, probs, qkv = Attention(
            cfg,
            self.dtype,
            self.deterministic,
            self.output_attentions,
            self.attention_impl,
            self.output_qkv,
            name="attn",
        )(x, mask_BxT, rope_2x2x2xTxK, is_global)
        h_BxTxD = h_BxTxD + attn_out
        mlp = MLP(cfg, self.dtype, self.deterministic, name="mlp")
        h_BxTxD = (h_BxTxD + mlp(_norm(cfg, "mlp_norm", self.dtype)(h_BxTxD))).astype(self.dtype)
        ys = (
            h_BxTxD if self.output_hidden_states else None,
            probs if self.output_attentions else None,
            qkv,
        )
        return h_BxTxD, ys


class Embeddings(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids_BxT, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="tok_embeddings")
        x_BxTxD = _norm(cfg, "norm", self.dtype)(word(input_ids_BxT))
        x_BxTxD = nn.Dropout(cfg.embedding_dropout)(x_BxTxD, deterministic=deterministic)
        return x_BxTxD.astype(self.dtype), word


class Encoder(nn.Module):
    """encoder.Encoder's interface (with_pooler is ignored: ModernBERT has no pooler; so are
    token_type_ids, which it does not embed)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    with_pooler: bool = False
    remat: str | None = None
    attention_impl: str = "einsum"
    scan_layers: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids_BxT,
        attention_mask_BxT=None,
        token_type_ids_BxT=None,
        *,
        train: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool | str = False,
        output_qkv: bool = False,
        **xlnet_inputs,  # perm_mask etc., always None here (heads._check_inputs)
    ):
        cfg = self.config
        if attention_mask_BxT is None:
            attention_mask_BxT = jnp.ones_like(input_ids_BxT)
        h_BxTxD, word = Embeddings(cfg, self.dtype, name="embeddings")(input_ids_BxT, not train)
        T, K = input_ids_BxT.shape[1], cfg.head_dim
        rope = np.stack(
            [rotary_tables(t, T, K) for t in (cfg.global_rope_theta, cfg.local_rope_theta)]
        )
        is_global_L = np.array([t == "full_attention" for t in layer_types(cfg)])
        has_norm_L = ~np.isin(np.arange(cfg.num_hidden_layers), cfg.identity_attn_norm_layers)
        layer_cls = Layer
        if self.remat is not None:
            layer_cls = nn.remat(Layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        args = (cfg, self.dtype, not train, output_hidden_states, output_attentions,
                self.attention_impl, output_qkv)  # fmt: skip
        if self.scan_layers:
            stack = _scanned(layer_cls, cfg, (nn.broadcast, nn.broadcast, 0))(*args, name="layer")
            h_BxTxD_out, (hidden_LxBxTxD, att_LxBxHxTxT, qkv_Lx3xBxTxD) = stack(
                h_BxTxD, attention_mask_BxT, rope, (is_global_L, has_norm_L)
            )
        else:
            ys, h_BxTxD_out = [], h_BxTxD
            for i in range(cfg.num_hidden_layers):
                flags = (bool(is_global_L[i]), bool(has_norm_L[i]))
                layer = layer_cls(*args, name=f"layer_{i}")
                h_BxTxD_out, y = layer(h_BxTxD_out, attention_mask_BxT, rope, flags)
                ys.append(y)
            hidden_LxBxTxD, att_LxBxHxTxT, qkv_Lx3xBxTxD = (
                None if y[0] is None else jnp.stack(y) for y in zip(*ys)
            )
        last_BxTxD = _norm(cfg, "final_norm", self.dtype)(h_BxTxD_out).astype(self.dtype)
        aux = {"last_hidden_state": last_BxTxD, "word_embeddings": word.embedding}
        if output_hidden_states:  # transformers puts the final_norm output last
            aux["hidden_states"] = jnp.concatenate(
                [h_BxTxD[None], hidden_LxBxTxD[:-1], last_BxTxD[None]], axis=0
            )
        if output_attentions:
            aux["attentions"] = att_LxBxHxTxT
        if output_qkv:
            aux["qkv"] = qkv_Lx3xBxTxD
        return last_BxTxD, aux


class PredictionHead(nn.Module):
    """ModernBertPredictionHead: dense -> classifier_activation -> norm."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD):
        cfg = self.config
        y = _dense(cfg, cfg.hidden_size, cfg.classifier_bias, "dense", self.dtype)(h_BxTxD)
        return _norm(cfg, "norm", self.dtype)(activation(cfg.classifier_activation)(y))


def pool(cfg: ModelConfig, h_BxTxD, mask_BxT):
    """classifier_pooling: the first token, or the mean over the attention mask."""
    if cfg.classifier_pooling == "cls":
        return h_BxTxD[:, 0]
    m_BxTx1 = mask_BxT[..., None].astype(h_BxTxD.dtype)
    return (h_BxTxD * m_BxTx1).sum(1) / m_BxTx1.sum(1)


class Head(nn.Module):
    """ModernBertForMaskedLM's head and decoder (tied to the word embeddings), or the
    sequence / token / QA classifier: head -> dropout -> classifier (always with a bias)."""

    config: ModelConfig
    head: str = "mlm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, word_VxD, mask_BxT, masked_positions, deterministic: bool):
        from flaxdistil.models.heads import gather_masked, vocab_logits  # heads imports us

        cfg = self.config
        if self.head == "mlm":
            y = PredictionHead(cfg, self.dtype, name="head")(
                gather_masked(h_BxTxD, masked_positions)
            )
            V = cfg.vocab_size
            bias = self.param("bias", nn.initializers.zeros, (V,)) if cfg.decoder_bias else None
            bias = jnp.zeros((V,), self.dtype) if bias is None else bias.astype(self.dtype)
            return vocab_logits(y, word_VxD.astype(self.dtype), bias)
        if mask_BxT is None:
            mask_BxT = jnp.ones(h_BxTxD.shape[:2], jnp.int32)
        x = pool(cfg, h_BxTxD, mask_BxT) if self.head == "seq_cls" else h_BxTxD
        x = PredictionHead(cfg, self.dtype, name="head")(x)
        x = nn.Dropout(cfg.classifier_dropout or 0.0)(x, deterministic=deterministic)
        n_out = 2 if self.head == "qa" else cfg.num_labels
        return _dense(cfg, n_out, True, "out", self.dtype)(x)
