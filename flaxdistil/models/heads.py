"""Task heads on the shared encoder, one Model class for every (family, head) pair.

``logits, aux = Model(cfg, head).apply({'params': p}, input_ids, attention_mask, ...)``
 - head None: logits is None (a bare encoder, like HF's BertModel).
 - "mlm": [B, T, V] (or [B, P, V] at ``masked_positions`` [B, P], or [N, V] at flat positions [N]
   into the B*T tokens), decoder tied to the word embeddings.
 - "seq_cls": [B, num_labels] (regression: num_labels = 1).
 - "token_cls": [B, T, num_labels].
 - "qa": [B, T, 2] (start, end).
 - "electra_disc": [B, T], ELECTRA's replaced-token detection logit per token.
 - "albert_pretraining": {"mlm": as "mlm", "sop": [B, num_labels]}, AlbertForPreTraining's two
   outputs (the sentence-order classifier reads the pooler).
 - "xlnet_lm": XLNetLMHeadModel's [B, T, V], or [B, M, V] from the query stream with
   ``target_mapping`` [B, M, T] (and ``perm_mask`` [B, T, T], 1: i does not see j); ``mems``
   [L, B, S, D] are the previous segments' layer inputs (xlnet.new_mems makes them).
aux holds 'last_hidden_state', and on request 'hidden_states' [L+1, B, T, D] (index 0: embeddings)
and 'attentions' [L, B, H, T, T] (probabilities, or pre-softmax scores with
output_attentions='scores'), 'qkv' [L, 3, B, T, D] with output_qkv; 'pooled' where a pooler
exists; XLNet with target_mapping: 'query_hidden_state' [B, M, D] (its content stream's hidden
states and attentions are the ones above; with mems, attentions are [L, B, H, T, S + T]).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxdistil import xla_cpu
from flaxdistil.models import modernbert
from flaxdistil.models.config import FAMILY_HEADS, HEADS, ModelConfig
from flaxdistil.models.encoder import Encoder, activation, dense, layer_norm, unstack_layers


def uses_pooler(cfg: ModelConfig, head: str | None) -> bool:
    """HF builds the pooler for the bare model and for BERT's and ALBERT's sequence classifiers
    only; ELECTRA, XLNet, ModernBERT and DeBERTa (whose classifier pools on its own) have none."""
    if not cfg.add_pooler or cfg.model_type in ("electra", "xlnet", "deberta-v2", "modernbert"):
        return False
    if head == "albert_pretraining":  # the sentence-order head reads it
        return True
    return head is None or (head == "seq_cls" and cfg.model_type in ("bert", "albert"))


def token_head_dropout(cfg: ModelConfig, head: str) -> float:
    """Dropout before the per-token heads, as each HF family has it (BERT/RoBERTa QA: none)."""
    if head == "qa" or cfg.model_type == "xlnet":  # BERT/RoBERTa QA, XLNet: none
        return cfg.qa_dropout if cfg.model_type == "distilbert" else 0.0
    if cfg.model_type in ("distilbert", "deberta-v2") or cfg.classifier_dropout is None:
        return cfg.hidden_dropout_prob  # DeBERTa's cls_dropout is its sequence classifier's
    return cfg.classifier_dropout


def _vocab_logits(y_NxD, embeddings_VxD, bias_V):
    return jnp.einsum("...d,vd->...v", y_NxD, embeddings_VxD) + bias_V


@jax.custom_vjp
def vocab_logits(y_NxD, embeddings_VxD, bias_V):
    """y @ embeddings^T + bias, whose backward gets the weight and the bias gradients from one
    matmul against [y, 1]. AD would sum the [N, V] gradient over N for the bias, which XLA:CPU
    does ~20x slower than a matmul (286 vs 12 ms at N=1024, V=30522); the distillation step
    gets 13% faster on CPU with the masked-token heads (bench.py)."""
    return _vocab_logits(y_NxD, embeddings_VxD, bias_V)


def _vocab_logits_fwd(y_NxD, embeddings_VxD, bias_V):
    return _vocab_logits(y_NxD, embeddings_VxD, bias_V), (y_NxD, embeddings_VxD)


def _vocab_logits_bwd(res, g_NxV):
    y_NxD, embeddings_VxD = res
    g_y = jnp.einsum("...v,vd->...d", g_NxV, embeddings_VxD)
    y1_NxE = jnp.concatenate([y_NxD, jnp.ones_like(y_NxD[..., :1])], -1)
    # [E, V] rather than [V, E]: g keeps its row-major layout (a [V, N] copy of it was slower).
    g_ExV = jnp.einsum("...e,...v->ev", y1_NxE, g_NxV)
    return g_y, g_ExV[:-1].T, g_ExV[-1]


vocab_logits.defvjp(_vocab_logits_fwd, _vocab_logits_bwd)


class MLMHead(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxPxD, word_embeddings_VxD):
        cfg = self.config
        # ALBERT and ELECTRA decode from the embedding width; RoBERTa's lm_head and ELECTRA's
        # generator apply gelu whatever hidden_act is.
        y = dense(cfg, cfg.embed_dim, "transform", self.dtype)(h_BxPxD)
        act = activation("gelu" if cfg.arch in ("roberta", "electra") else cfg.hidden_act)
        y = layer_norm(cfg, "norm", self.dtype)(act(y))
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,))
        return vocab_logits(y, word_embeddings_VxD.astype(self.dtype), bias.astype(self.dtype))


class XLNetLMHead(nn.Module):
    """XLNetLMHeadModel's lm_loss: the tied word embeddings and a bias, no transform."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, y_BxNxD, word_embeddings_VxD):
        bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,))
        return vocab_logits(
            y_BxNxD, word_embeddings_VxD.astype(self.dtype), bias.astype(self.dtype)
        )


def gather_masked(h_BxTxD, masked_positions):
    """The hidden states the MLM head projects: all, [B, P] per row, or [N] flat positions."""
    if masked_positions is None:
        return h_BxTxD
    if masked_positions.ndim == 1:
        # Flat indices into the B*T tokens: a fixed number N over the whole batch, which wastes
        # less than a per-row P when rows hold different numbers of masks.
        return h_BxTxD.reshape(-1, h_BxTxD.shape[-1])[masked_positions]
    # Only the masked positions need the vocabulary projection: [B,P,D] not [B,T,D].
    return jnp.take_along_axis(h_BxTxD, masked_positions[..., None], axis=1)


class ClassificationHead(nn.Module):
    """BERT, ALBERT: dropout -> out on the pooled vector. RoBERTa: dropout -> dense -> tanh ->
    dropout -> out on <s>; ELECTRA the same with gelu (whatever hidden_act is); XLNet's sequence
    summary: dense -> tanh -> dropout -> out on the last token (XLNet pads on the left).
    DeBERTa's ContextPooler: dropout (pooler_dropout) -> dense (pooler) -> pooler_hidden_act ->
    dropout -> out on [CLS]. DistilBERT: dense (pre_classifier) -> ReLU -> dropout -> out."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, pooled_BxD, deterministic: bool):
        cfg = self.config
        if cfg.model_type == "distilbert":
            p = cfg.seq_classif_dropout
        else:
            p = (
                cfg.hidden_dropout_prob
                if cfg.classifier_dropout is None
                else cfg.classifier_dropout
            )
        drop = lambda y: nn.Dropout(p)(y, deterministic=deterministic)
        if cfg.model_type in ("bert", "albert"):
            x = drop(pooled_BxD)
        elif cfg.arch in ("roberta", "electra"):
            act = jnp.tanh if cfg.arch == "roberta" else activation("gelu")
            x = drop(act(dense(cfg, cfg.hidden_size, "dense", self.dtype)(drop(h_BxTxD[:, 0]))))
        elif cfg.arch == "deberta-v2":
            x = nn.Dropout(cfg.pooler_dropout)(h_BxTxD[:, 0], deterministic=deterministic)
            x = activation(cfg.pooler_hidden_act)(
                dense(cfg, cfg.hidden_size, "pooler", self.dtype)(x)
            )
            x = drop(x)
        elif cfg.arch == "xlnet":
            x = drop(jnp.tanh(dense(cfg, cfg.hidden_size, "dense", self.dtype)(h_BxTxD[:, -1])))
        else:
            x = drop(jax.nn.relu(dense(cfg, cfg.hidden_size, "dense", self.dtype)(h_BxTxD[:, 0])))
        return dense(cfg, cfg.num_labels, "out", self.dtype)(x)


class DiscriminatorHead(nn.Module):
    """ELECTRA's discriminator_predictions: dense -> hidden_act -> one logit per token."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD):
        cfg = self.config
        y = activation(cfg.hidden_act)(dense(cfg, cfg.hidden_size, "dense", self.dtype)(h_BxTxD))
        return dense(cfg, 1, "out", self.dtype)(y)[..., 0]


def _check_inputs(cfg: ModelConfig, head: str | None, xlnet_inputs: tuple) -> None:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: expected one of {HEADS}")
    if head not in FAMILY_HEADS[cfg.model_type]:
        raise ValueError(
            f"head {head!r} does not exist for {cfg.model_type}: expected one of "
            f"{FAMILY_HEADS[cfg.model_type]}"
        )
    reads_pooler = head == "albert_pretraining" or (
        head == "seq_cls" and cfg.model_type in ("bert", "albert")
    )
    if reads_pooler and not cfg.add_pooler:
        what = "sequence classifier" if head == "seq_cls" else "sentence-order classifier"
        raise ValueError(
            f"a {cfg.model_type} {what} reads the pooler, but add_pooler is False (a BERT "
            "without token types and pooler is a DistilBERT)"
        )
    if cfg.model_type != "xlnet" and any(x is not None for x in xlnet_inputs):
        raise ValueError(f"perm_mask, target_mapping and mems are XLNet's, not {cfg.model_type}'s")


class Model(nn.Module):
    config: ModelConfig
    head: str | None = "mlm"
    dtype: jnp.dtype = jnp.float32  # compute dtype; params stay float32
    remat: str | None = None
    attention_impl: str = "einsum"
    scan_layers: bool = True  # False: per-layer params, see encoder.unstack_layers

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        *,
        train: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool | str = False,
        output_qkv: bool = False,
        masked_positions=None,
        perm_mask=None,
        target_mapping=None,
        mems=None,
    ):
        cfg, head = self.config, self.head
        _check_inputs(cfg, head, (perm_mask, target_mapping, mems))
        encoder_cls = modernbert.Encoder if cfg.model_type == "modernbert" else Encoder
        last, aux = encoder_cls(
            cfg,
            self.dtype,
            uses_pooler(cfg, head),
            self.remat,
            self.attention_impl,
            self.scan_layers,
            name="encoder",
        )(
            input_ids,
            attention_mask,
            token_type_ids,
            train=train,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_qkv=output_qkv,
            perm_mask_BxTxT=perm_mask,
            target_mapping_BxMxT=target_mapping,
            mems_LxBxSxD=mems,
        )
        word = aux.pop("word_embeddings")
        deterministic = not train
        if head is None:
            logits = None
        elif cfg.model_type == "modernbert":
            name = "mlm" if head == "mlm" else "classifier"
            logits = modernbert.Head(cfg, head, self.dtype, name=name)(
                last, word, attention_mask, masked_positions, deterministic
            )
        elif head == "mlm":
            logits = MLMHead(cfg, self.dtype, name="mlm")(
                gather_masked(last, masked_positions), word
            )
        elif head == "albert_pretraining":
            logits = {
                "mlm": MLMHead(cfg, self.dtype, name="mlm")(
                    gather_masked(last, masked_positions), word
                ),
                "sop": ClassificationHead(cfg, self.dtype, name="sop_classifier")(
                    last, aux["pooled"], deterministic
                ),
            }
        elif head == "xlnet_lm":  # the query stream predicts the targets, else the content one
            y = aux.get("query_hidden_state", last)
            logits = XLNetLMHead(cfg, self.dtype, name="lm_loss")(y, word)
        elif head == "electra_disc":
            logits = DiscriminatorHead(cfg, self.dtype, name="discriminator")(last)
        elif head == "seq_cls":
            logits = ClassificationHead(cfg, self.dtype, name="classifier")(
                last, aux.get("pooled"), deterministic
            )
        else:
            x = nn.Dropout(token_head_dropout(cfg, head))(last, deterministic=deterministic)
            n_out, name = (2, "qa_outputs") if head == "qa" else (cfg.num_labels, "classifier")
            logits = dense(cfg, n_out, name, self.dtype)(x)
        return logits, aux


def build(cfg: ModelConfig, head: str | None = "mlm", **kw) -> Model:
    return Model(cfg, head, **kw)


def init_params(cfg: ModelConfig, head: str | None, rng: jax.Array, seq_len: int = 8) -> dict:
    ids = jnp.ones((1, seq_len), jnp.int32)
    return jax.jit(Model(cfg, head).init)(rng, ids)["params"]


def inference_fn(
    cfg: ModelConfig,
    head: str | None,
    params: dict,
    dtype="float32",
    *,
    unroll_layers: bool = True,
    attention_impl: str = "einsum",
    compiler_options: dict | str | None = "auto",
):
    """A jitted eval forward and the params it takes: ``fn(params, input_ids, attention_mask=None,
    token_type_ids=None) -> logits`` (the last hidden state for head=None).

    ``params`` are in the scanned layout that load_pretrained and training produce; they are cast
    to ``dtype`` and, with unroll_layers, split per layer (unstack_layers) once, here. A scanned
    forward slices every layer's weights out of the stacked arrays at each call, a copy that cost
    2-20% of a BERT-base-shaped forward on CPU in reports/bench_cpu.md (most at batch 1).
    compiler_options="auto" compiles the forward with Eigen's matmuls on CPU
    (xla_cpu.inference_options), faster than YNNPACK's at these shapes; None keeps XLA's
    defaults; a dict is passed to jax.jit as it is.
    """
    dtype = jnp.dtype(dtype)
    model = Model(cfg, head, dtype, attention_impl=attention_impl, scan_layers=not unroll_layers)
    params = unstack_layers(params) if unroll_layers else params
    params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, dtype), params))

    if compiler_options == "auto":
        compiler_options = xla_cpu.inference_options()

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def fn(params, input_ids, attention_mask=None, token_type_ids=None):
        logits, aux = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
        return aux["last_hidden_state"] if head is None else logits

    return fn, params
