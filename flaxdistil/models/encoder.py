"""One encoder for BERT, RoBERTa (XLM-R, CamemBERT), DistilBERT, ELECTRA, ALBERT, XLNet and
DeBERTa-v2 (their attention in xlnet.py, deberta.py); layers stacked with nn.scan.

The families share a post-LayerNorm transformer block and differ in the embeddings (RoBERTa's
padding-offset positions, DistilBERT's missing token types and optional sinusoidal positions,
ELECTRA's and ALBERT's narrower tables projected to hidden_size), activations, eps and dropout
placement. Layer params carry a leading layer axis, so a student is a slice of the teacher's pytree
(see student.py); ALBERT's axis has length 1, its one shared layer, applied num_hidden_layers times.
"""

from __future__ import annotations

import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil.models import deberta, xlnet
from flaxdistil.models.config import ModelConfig

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

REMAT_POLICIES = {
    "none": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dense(cfg: ModelConfig, features: int, name: str, dtype) -> nn.Dense:
    init = nn.initializers.normal(cfg.initializer_range)
    return nn.Dense(features, dtype=dtype, kernel_init=init, name=name)


def layer_norm(cfg: ModelConfig, name: str, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name=name)


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """DistilBERT's create_sinusoidal_embeddings."""
    pos = np.arange(n_pos)[:, None] / np.power(10000, 2 * (np.arange(dim)[None] // 2) / dim)
    table = np.zeros((n_pos, dim), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    return table


def position_ids(cfg: ModelConfig, input_ids_BxT: jax.Array) -> jax.Array:
    if cfg.arch == "roberta":
        # RoBERTa counts positions from pad_token_id + 1 over non-pad tokens only.
        real = (input_ids_BxT != cfg.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)


class Embeddings(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT, deterministic: bool, num_predict=None):
        """XLNet: ((words h, query stream g: mask_emb at num_predict targets, or None), table)."""
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        embed = lambda n, name, i=init: nn.Embed(n, cfg.embed_dim, embedding_init=i, name=name)
        word = embed(cfg.vocab_size, "word_embeddings")
        x_BxTxD = word(input_ids_BxT)
        if cfg.model_type == "xlnet":
            # Words only: positions and segments enter each layer's attention (xlnet.py).
            mask_emb = self.param("mask_emb", init, (1, 1, cfg.hidden_size))
            drop = lambda y: nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
            g_BxMxD = None
            if num_predict is not None:  # the query stream starts from mask_emb at each target
                g_BxMxD = jnp.broadcast_to(mask_emb, (len(x_BxTxD), num_predict, cfg.hidden_size))
            streams = (x_BxTxD, g_BxMxD)
            return tuple(None if x is None else drop(x).astype(self.dtype) for x in streams), word
        if cfg.sinusoidal_pos_embds:
            table = sinusoidal_table(cfg.max_position_embeddings, cfg.embed_dim)
            pos = embed(cfg.max_position_embeddings, "position_embeddings", lambda *_: table)
            # HF freezes the sinusoidal table (requires_grad=False).
            x_BxTxD += jax.lax.stop_gradient(pos(position_ids(cfg, input_ids_BxT)))
        else:
            x_BxTxD += embed(cfg.max_position_embeddings, "position_embeddings")(
                position_ids(cfg, input_ids_BxT)
            )
        if cfg.type_vocab_size:
            if token_type_ids_BxT is None:
                token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)
            x_BxTxD += embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids_BxT)
        x_BxTxD = layer_norm(cfg, "LayerNorm", self.dtype)(x_BxTxD)
        x_BxTxD = nn.Dropout(cfg.hidden_dropout_prob)(x_BxTxD, deterministic=deterministic)
        if cfg.projects_embeddings:  # ELECTRA's embeddings_project, ALBERT's mapping_in: E -> D
            x_BxTxD = dense(cfg, cfg.hidden_size, "project", self.dtype)(x_BxTxD)
        return x_BxTxD.astype(self.dtype), word


def fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxT, local_window_size=None):
    """jax.nn.dot_product_attention with the keys of each row given as a length, mask.sum(-1):
    the attention mask must be right-padded (ones, then zeros), as BERT batches are.
    local_window_size (left, right): also ModernBERT's sliding window (XLA's implementation:
    cuDNN has no two-sided window without a causal mask, and says so).

    cuDNN's flash attention where it applies (a GPU, bf16/fp16, head dim a multiple of 8; jax
    checks while tracing and raises otherwise), else XLA's implementation: both take the lengths,
    so the result is the same everywhere. Padded query rows attend to the real keys, as in the
    einsum path.
    """
    lengths_B = jnp.sum(mask_BxT.astype(jnp.int32), axis=-1)
    attend = functools.partial(
        jax.nn.dot_product_attention,
        q_BxTxHxK,
        k_BxTxHxK,
        v_BxTxHxK,
        key_value_seq_lengths=lengths_B,
        local_window_size=local_window_size,
    )
    if jax.default_backend() == "gpu" and q_BxTxHxK.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return attend(implementation="cudnn")
        except (NotImplementedError, RuntimeError, ValueError) as e:  # no cuDNN, or its limits
            # Once per trace: a researcher timing "fused" should know it is not cuDNN's kernel.
            warnings.warn(
                f"fused attention: cuDNN refused ({e}); using XLA's implementation", stacklevel=2
            )
    return attend(implementation="xla")


ATTENTION_OUTPUTS = (False, True, "probs", "scores")


def _want(output_attentions, kind: str) -> bool:
    """output_attentions: False, True/'probs' (softmax probabilities, as transformers returns) or
    'scores' (pre-softmax, masked keys at the float32 minimum: TinyBERT's / TextBrewer's input)."""
    if output_attentions not in ATTENTION_OUTPUTS:
        raise ValueError(
            f"output_attentions must be one of {ATTENTION_OUTPUTS}, got {output_attentions!r}"
        )
    return bool(output_attentions) and (output_attentions == "scores") == (kind == "scores")


class SelfAttention(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_attentions: bool | str = False
    # "einsum" materialises the probabilities (needed for attention losses and parity);
    # "fused" calls jax.nn.dot_product_attention, see fused_attention.
    attention_impl: str = "einsum"
    output_qkv: bool = False  # also return the projected queries, keys, values [3,B,T,D]

    @nn.compact
    def __call__(self, x_BxTxD, mask_BxT):
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        H, K = cfg.num_attention_heads, cfg.head_dim
        split = lambda y: y.reshape(B, T, H, K)
        # all_head_size: hidden_size, or less once heads are pruned (prune_structured.py)
        q_BxTxHxK = split(dense(cfg, cfg.all_head_size, "query", self.dtype)(x_BxTxD))
        k_BxTxHxK = split(dense(cfg, cfg.all_head_size, "key", self.dtype)(x_BxTxD))
        v_BxTxHxK = split(dense(cfg, cfg.all_head_size, "value", self.dtype)(x_BxTxD))
        keep_Bx1x1xT = mask_BxT[:, None, None, :].astype(bool)
        dropout_on = not self.deterministic and cfg.attention_probs_dropout_prob > 0
        probs_BxHxTxT = None
        if self.attention_impl == "fused" and not self.output_attentions and not dropout_on:
            ctx_BxTxHxK = fused_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxT)
        else:
            scores = jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK) / np.sqrt(K)
            # Softmax in fp32 even under bf16 compute; masked keys get the dtype's minimum
            # (as transformers does) so all-padding rows stay finite.
            scores = scores.astype(jnp.float32)
            scores = jnp.where(keep_Bx1x1xT, scores, jnp.finfo(jnp.float32).min)
            probs_BxHxTxT = jax.nn.softmax(scores, axis=-1)
            dropped = nn.Dropout(cfg.attention_probs_dropout_prob)(
                probs_BxHxTxT, deterministic=self.deterministic
            )
            ctx_BxTxHxK = jnp.einsum("bhqt,bthk->bqhk", dropped.astype(self.dtype), v_BxTxHxK)
            if _want(self.output_attentions, "scores"):
                probs_BxHxTxT = scores
        out_BxTxD = dense(cfg, cfg.hidden_size, "out", self.dtype)(ctx_BxTxHxK.reshape(B, T, -1))
        qkv = None
        if self.output_qkv:
            qkv = jnp.stack([y.reshape(B, T, -1) for y in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)])
        return out_BxTxD, probs_BxHxTxT, qkv


class Layer(nn.Module):
    """Post-LN transformer block; its __call__ has nn.scan's (carry, x) -> (carry, y) form."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    deterministic: bool = True
    output_hidden_states: bool = False
    output_attentions: bool | str = False
    attention_impl: str = "einsum"
    output_qkv: bool = False

    @nn.compact
    def __call__(self, carry, mask_BxT, *relative):
        """carry: the hidden states; XLNet's (content h, query g or None). relative: XLNet's
        (positions [P, D], segments [B, T], perm_mask, target_mapping, this layer's mems; each
        but the positions may be None); DeBERTa's (relative embeddings [P, D],) with
        relative_attention; nothing otherwise."""
        cfg = self.config
        h_BxTxD, g_BxMxD = carry if cfg.model_type == "xlnet" else (carry, None)
        drop = lambda y: nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=self.deterministic)
        # Relative-position families: einsum only, whatever attention_impl says (see their modules).
        relative_attention = {
            "xlnet": xlnet.RelativeSelfAttention,
            "deberta-v2": deberta.DisentangledSelfAttention,
        }.get(cfg.model_type)
        if relative_attention is not None:
            attention = relative_attention(
                cfg,
                self.dtype,
                self.deterministic,
                _want(self.output_attentions, "scores"),
                self.output_qkv,
                name="attention",
            )
            if cfg.model_type == "xlnet":
                relative = (*relative[:3], g_BxMxD, *relative[3:])
        else:
            attention = SelfAttention(
                cfg,
                self.dtype,
                self.deterministic,
                self.output_attentions,
                self.attention_impl,
                self.output_qkv,
                name="attention",
            )
        attn_out, probs, qkv, *query = attention(h_BxTxD, mask_BxT, *relative)
        # Built once, applied to each stream: XLNet's query stream shares the content stream's
        # norms and FFN.
        attention_norm = layer_norm(cfg, "attention_norm", self.dtype)
        fc1 = dense(cfg, cfg.intermediate_size, "fc1", self.dtype)
        fc2 = dense(cfg, cfg.hidden_size, "fc2", self.dtype)
        mlp_norm = layer_norm(cfg, "mlp_norm", self.dtype)

        def block(attn_out, x):
            if cfg.model_type != "distilbert":  # DistilBERT has no dropout after out_lin
                attn_out = drop(attn_out)
            x = attention_norm(attn_out + x)
            y = activation(cfg.hidden_act)(fc1(x))
            if cfg.model_type == "xlnet":  # XLNet also drops out inside its FFN
                y = drop(y)
            y = fc2(y)
            if cfg.model_type != "albert":  # ALBERT has no dropout after ffn_output
                y = drop(y)
            return mlp_norm(y + x).astype(self.dtype)

        h_BxTxD = block(attn_out, h_BxTxD)
        ys = (
            h_BxTxD if self.output_hidden_states else None,
            probs if self.output_attentions else None,
            qkv,
        )
        if cfg.model_type != "xlnet":
            return h_BxTxD, ys
        g_BxMxD = None if g_BxMxD is None else block(query[0], g_BxMxD)
        return (h_BxTxD, g_BxMxD), ys


class Encoder(nn.Module):
    """Embeddings + scanned layers (+ pooler). Returns the last hidden state and an aux dict."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    with_pooler: bool = False
    remat: str | None = None  # None: no remat; else a key of REMAT_POLICIES
    attention_impl: str = "einsum"
    # False: one module per layer ('layer_0', ...; see unstack_layers). Inference on CPU then reads
    # each weight once, where the scan's dynamic slices first copy every layer's weights.
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
        perm_mask_BxTxT=None,
        target_mapping_BxMxT=None,
        mems_LxBxSxD=None,
    ):
        """perm_mask, target_mapping, mems: XLNetModel's (see xlnet.py); XLNet only."""
        cfg = self.config
        if attention_mask_BxT is None:
            attention_mask_BxT = jnp.ones_like(input_ids_BxT)
        num_predict = None if target_mapping_BxMxT is None else target_mapping_BxMxT.shape[1]
        if cfg.model_type == "deberta-v2":  # zeroes padding, so it takes the mask
            carry, word = deberta.Embeddings(cfg, self.dtype, name="embeddings")(
                input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, not train
            )
        else:
            carry, word = Embeddings(cfg, self.dtype, name="embeddings")(
                input_ids_BxT, token_type_ids_BxT, not train, num_predict
            )
        h_BxTxD = carry[0] if cfg.model_type == "xlnet" else carry
        layer_cls = Layer
        if self.remat is not None:
            layer_cls = nn.remat(Layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        layer_args = (
            cfg,
            self.dtype,
            not train,
            output_hidden_states,
            output_attentions,
            self.attention_impl,
            output_qkv,
        )
        relative, mems = (), ()
        if cfg.model_type == "xlnet":
            drop = lambda y: nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=not train)
            relative, mems = xlnet.layer_inputs(
                cfg, input_ids_BxT.shape[1], token_type_ids_BxT, perm_mask_BxTxT,
                target_mapping_BxMxT, mems_LxBxSxD, drop, self.dtype,
            )  # fmt: skip
        elif cfg.model_type == "deberta-v2" and cfg.relative_attention:
            relative = (deberta.RelativeEmbeddings(cfg, self.dtype, name="relative")(),)
        if self.scan_layers:
            # Everything is broadcast to every layer but the mems, one per layer.
            in_axes = (nn.broadcast,) * (1 + len(relative)) + (0,) * len(mems)
            stack = _scanned(layer_cls, cfg, in_axes)(*layer_args, name="layer")
            carry, (hidden_LxBxTxD, att_LxBxHxTxT, qkv_Lx3xBxTxD) = stack(
                carry, attention_mask_BxT, *relative, *mems
            )
        else:
            layers = [
                layer_cls(*layer_args, name=f"layer_{i}") for i in range(cfg.num_distinct_layers)
            ]
            ys = []
            for i in range(cfg.num_hidden_layers):
                layer_mems = [m[i] for m in mems]
                carry, y = layers[i % len(layers)](
                    carry, attention_mask_BxT, *relative, *layer_mems
                )
                ys.append(y)
            hidden_LxBxTxD, att_LxBxHxTxT, qkv_Lx3xBxTxD = (
                None if y[0] is None else jnp.stack(y) for y in zip(*ys)
            )
        last_BxTxD, query_BxMxD = carry if cfg.model_type == "xlnet" else (carry, None)
        if cfg.model_type == "xlnet":  # XLNetModel drops out its output too
            drop = lambda y: nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=not train)
            last_BxTxD = drop(last_BxTxD)
            query_BxMxD = None if query_BxMxD is None else drop(query_BxMxD)
        aux = {"last_hidden_state": last_BxTxD, "word_embeddings": word.embedding}
        if query_BxMxD is not None:  # XLNet's query stream at the target_mapping positions
            aux["query_hidden_state"] = query_BxMxD
        if output_hidden_states:
            aux["hidden_states"] = jnp.concatenate([h_BxTxD[None], hidden_LxBxTxD], axis=0)
        if output_attentions:
            aux["attentions"] = att_LxBxHxTxT
        if output_qkv:  # MiniLM's self-attention relations need each layer's q, k, v
            aux["qkv"] = qkv_Lx3xBxTxD
        if self.with_pooler:
            pooled = dense(cfg, cfg.hidden_size, "pooler", self.dtype)(last_BxTxD[:, 0])
            aux["pooled"] = jnp.tanh(pooled)
        return last_BxTxD, aux


def _scanned(layer_cls, cfg: ModelConfig, in_axes=nn.broadcast):
    """The layers as one nn.scan over num_hidden_layers, params on a leading layer axis."""
    if cfg.num_distinct_layers == cfg.num_hidden_layers:
        return nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=cfg.num_hidden_layers,
        )
    # ALBERT: the shared layer's params are broadcast into every step of the scan; stored with a
    # leading axis of 1 so that they are stacked like every other family's (and like HF's one
    # albert_layer_group), hence the squeeze in and the expand out.
    shared = nn.scan(
        layer_cls,
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": True},
        in_axes=nn.broadcast,
        length=cfg.num_hidden_layers,
    )
    return nn.map_variables(
        shared,
        "params",
        trans_in_fn=lambda v: jax.tree.map(lambda x: x[0], v),
        trans_out_fn=lambda v: jax.tree.map(lambda x: x[None], v),
        init=True,
        mutable=True,
    )


def unstack_layers(params: dict) -> dict:
    """Params of a scanned model ('layer' with a leading layer axis) -> those of the same model
    with scan_layers=False ('layer_0', 'layer_1', ...)."""
    enc = dict(params["encoder"])
    if "layer" not in enc:
        raise ValueError(
            "unstack_layers expects scanned params (a stacked 'encoder/layer'); found encoder "
            f"keys {sorted(enc)}"
        )
    stacked = enc.pop("layer")
    n = jax.tree.leaves(stacked)[0].shape[0]
    enc.update({f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)})
    return {**params, "encoder": enc}
