"""The one mapping table between flaxdistil params and Hugging Face PyTorch state-dict keys.

Each row is (our module path, HF module name, kind). ``{i}`` marks a stacked layer: our params hold
all layers on a leading axis, HF has one key per layer. The kind says how tensors translate:

  dense  kernel [in, out] <-> weight [out, in] (transposed), bias <-> bias
  norm   scale <-> weight, bias <-> bias
  embed  embedding <-> weight
  param  the tensor itself
  heads, heads_out  XLNet's einsum projections: kernel [D, H*K] (out: [H*K, D]) <-> [D, H, K]

hf.py walks these rows in both directions (load and export), so a name lives in one place only.
Backbone names are relative to the family prefix (``bert.``, ``roberta.``, ``distilbert.``, ...,
see PREFIX) that HF uses inside task models; head names are absolute. A row whose module our
params lack is skipped (ELECTRA's embeddings_project exists only when embedding_size differs).
"""

from __future__ import annotations

from flaxdistil.models.config import FAMILIES, FAMILY_HEADS, SAME_AS

_BERT_LAYER = [
    ("encoder/layer/attention/query", "encoder.layer.{i}.attention.self.query", "dense"),
    ("encoder/layer/attention/key", "encoder.layer.{i}.attention.self.key", "dense"),
    ("encoder/layer/attention/value", "encoder.layer.{i}.attention.self.value", "dense"),
    ("encoder/layer/attention/out", "encoder.layer.{i}.attention.output.dense", "dense"),
    ("encoder/layer/attention_norm", "encoder.layer.{i}.attention.output.LayerNorm", "norm"),
    ("encoder/layer/fc1", "encoder.layer.{i}.intermediate.dense", "dense"),
    ("encoder/layer/fc2", "encoder.layer.{i}.output.dense", "dense"),
    ("encoder/layer/mlp_norm", "encoder.layer.{i}.output.LayerNorm", "norm"),
]
_EMBEDDINGS = [
    ("encoder/embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("encoder/embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("encoder/embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("encoder/embeddings/LayerNorm", "embeddings.LayerNorm", "norm"),
]
_POOLER = [("encoder/pooler", "pooler.dense", "dense")]
# ALBERT's one shared layer: {i} is the layer group (always 0, see ModelConfig.num_distinct_layers).
_ALBERT_LAYER = [
    (ours, f"encoder.albert_layer_groups.{{i}}.albert_layers.0.{theirs}", kind)
    for ours, theirs, kind in [
        ("encoder/layer/attention/query", "attention.query", "dense"),
        ("encoder/layer/attention/key", "attention.key", "dense"),
        ("encoder/layer/attention/value", "attention.value", "dense"),
        ("encoder/layer/attention/out", "attention.dense", "dense"),
        ("encoder/layer/attention_norm", "attention.LayerNorm", "norm"),
        ("encoder/layer/fc1", "ffn", "dense"),
        ("encoder/layer/fc2", "ffn_output", "dense"),
        ("encoder/layer/mlp_norm", "full_layer_layer_norm", "norm"),
    ]
]

_XLNET_LAYER = [
    (f"encoder/layer/{ours}", f"layer.{{i}}.{theirs}", kind)
    for ours, theirs, kind in [
        ("attention/query", "rel_attn.q", "heads"),
        ("attention/key", "rel_attn.k", "heads"),
        ("attention/value", "rel_attn.v", "heads"),
        ("attention/pos", "rel_attn.r", "heads"),
        ("attention/out", "rel_attn.o", "heads_out"),
        ("attention/r_w_bias", "rel_attn.r_w_bias", "param"),
        ("attention/r_r_bias", "rel_attn.r_r_bias", "param"),
        ("attention/r_s_bias", "rel_attn.r_s_bias", "param"),
        ("attention/seg_embed", "rel_attn.seg_embed", "param"),
        ("attention_norm", "rel_attn.layer_norm", "norm"),
        ("fc1", "ff.layer_1", "dense"),
        ("fc2", "ff.layer_2", "dense"),
        ("mlp_norm", "ff.layer_norm", "norm"),
    ]
]

_DEBERTA_LAYER = [
    (f"encoder/layer/{ours}", f"encoder.layer.{{i}}.{theirs}", "dense")
    for ours, theirs in [
        ("attention/query", "attention.self.query_proj"),
        ("attention/key", "attention.self.key_proj"),
        ("attention/value", "attention.self.value_proj"),
        ("attention/pos_key", "attention.self.pos_key_proj"),  # c2p without share_att_key
        ("attention/pos_query", "attention.self.pos_query_proj"),  # p2c without share_att_key
        ("attention/out", "attention.output.dense"),
        ("fc1", "intermediate.dense"),
        ("fc2", "output.dense"),
    ]
] + [
    ("encoder/layer/attention_norm", "encoder.layer.{i}.attention.output.LayerNorm", "norm"),
    ("encoder/layer/mlp_norm", "encoder.layer.{i}.output.LayerNorm", "norm"),
]

BACKBONE = {
    "bert": _EMBEDDINGS + _BERT_LAYER + _POOLER,
    "roberta": _EMBEDDINGS + _BERT_LAYER + _POOLER,
    "distilbert": _EMBEDDINGS[:2]
    + _EMBEDDINGS[3:]
    + [
        ("encoder/layer/attention/query", "transformer.layer.{i}.attention.q_lin", "dense"),
        ("encoder/layer/attention/key", "transformer.layer.{i}.attention.k_lin", "dense"),
        ("encoder/layer/attention/value", "transformer.layer.{i}.attention.v_lin", "dense"),
        ("encoder/layer/attention/out", "transformer.layer.{i}.attention.out_lin", "dense"),
        ("encoder/layer/attention_norm", "transformer.layer.{i}.sa_layer_norm", "norm"),
        ("encoder/layer/fc1", "transformer.layer.{i}.ffn.lin1", "dense"),
        ("encoder/layer/fc2", "transformer.layer.{i}.ffn.lin2", "dense"),
        ("encoder/layer/mlp_norm", "transformer.layer.{i}.output_layer_norm", "norm"),
    ],
    "electra": _EMBEDDINGS
    + [("encoder/embeddings/project", "embeddings_project", "dense")]
    + _BERT_LAYER,
    "albert": _EMBEDDINGS
    + [("encoder/embeddings/project", "encoder.embedding_hidden_mapping_in", "dense")]
    + _ALBERT_LAYER
    + [("encoder/pooler", "pooler", "dense")],
    "xlnet": [
        ("encoder/embeddings/word_embeddings", "word_embedding", "embed"),
        ("encoder/embeddings/mask_emb", "mask_emb", "param"),
    ]
    + _XLNET_LAYER,
    # No absolute positions without position_biased_input, no relative ones without
    # relative_attention, embed_proj (no bias) only when embedding_size != hidden_size.
    "deberta-v2": _EMBEDDINGS
    + [
        ("encoder/embeddings/project", "embeddings.embed_proj", "dense"),
        ("encoder/relative/rel_embeddings", "encoder.rel_embeddings.weight", "param"),
        ("encoder/relative/LayerNorm", "encoder.LayerNorm", "norm"),
    ]
    + _DEBERTA_LAYER,
    "modernbert": [
        ("encoder/embeddings/tok_embeddings", "embeddings.tok_embeddings", "embed"),
        ("encoder/embeddings/norm", "embeddings.norm", "norm"),
        ("encoder/layer/attn_norm", "layers.{i}.attn_norm", "norm"),
        ("encoder/layer/attn/Wqkv", "layers.{i}.attn.Wqkv", "dense"),
        ("encoder/layer/attn/Wo", "layers.{i}.attn.Wo", "dense"),
        ("encoder/layer/mlp_norm", "layers.{i}.mlp_norm", "norm"),
        ("encoder/layer/mlp/Wi", "layers.{i}.mlp.Wi", "dense"),
        ("encoder/layer/mlp/Wo", "layers.{i}.mlp.Wo", "dense"),
        ("encoder/final_norm", "final_norm", "norm"),
    ],
}

_TOKEN_CLS = [("classifier", "classifier", "dense")]
_QA = [("qa_outputs", "qa_outputs", "dense")]
HEAD = {
    ("bert", "mlm"): [
        ("mlm/transform", "cls.predictions.transform.dense", "dense"),
        ("mlm/norm", "cls.predictions.transform.LayerNorm", "norm"),
        ("mlm/bias", "cls.predictions.bias", "param"),
    ],
    ("roberta", "mlm"): [
        ("mlm/transform", "lm_head.dense", "dense"),
        ("mlm/norm", "lm_head.layer_norm", "norm"),
        ("mlm/bias", "lm_head.bias", "param"),
    ],
    ("distilbert", "mlm"): [
        ("mlm/transform", "vocab_transform", "dense"),
        ("mlm/norm", "vocab_layer_norm", "norm"),
        ("mlm/bias", "vocab_projector.bias", "param"),
    ],
    ("bert", "seq_cls"): [("classifier/out", "classifier", "dense")],
    ("roberta", "seq_cls"): [
        ("classifier/dense", "classifier.dense", "dense"),
        ("classifier/out", "classifier.out_proj", "dense"),
    ],
    ("distilbert", "seq_cls"): [
        ("classifier/dense", "pre_classifier", "dense"),
        ("classifier/out", "classifier", "dense"),
    ],
    ("electra", "mlm"): [  # the generator; its decoder weight is the word embeddings
        ("mlm/transform", "generator_predictions.dense", "dense"),
        ("mlm/norm", "generator_predictions.LayerNorm", "norm"),
        ("mlm/bias", "generator_lm_head.bias", "param"),
    ],
    ("electra", "seq_cls"): [
        ("classifier/dense", "classifier.dense", "dense"),
        ("classifier/out", "classifier.out_proj", "dense"),
    ],
    ("electra", "electra_disc"): [
        ("discriminator/dense", "discriminator_predictions.dense", "dense"),
        ("discriminator/out", "discriminator_predictions.dense_prediction", "dense"),
    ],
    ("albert", "mlm"): [
        ("mlm/transform", "predictions.dense", "dense"),
        ("mlm/norm", "predictions.LayerNorm", "norm"),
        ("mlm/bias", "predictions.bias", "param"),
    ],
    ("albert", "seq_cls"): [("classifier/out", "classifier", "dense")],
    ("xlnet", "seq_cls"): [
        ("classifier/dense", "sequence_summary.summary", "dense"),
        ("classifier/out", "logits_proj", "dense"),
    ],
    ("xlnet", "xlnet_lm"): [("lm_loss/bias", "lm_loss.bias", "param")],
    # DebertaV2ForMaskedLM with config.legacy (transformers' default), and without it (the
    # layout of Microsoft's checkpoints, see rows()); both compute BERT's MLM head.
    ("deberta-v2", "mlm"): [
        ("mlm/transform", "cls.predictions.transform.dense", "dense"),
        ("mlm/norm", "cls.predictions.transform.LayerNorm", "norm"),
        ("mlm/bias", "cls.predictions.bias", "param"),
    ],
    ("deberta-v2", "mlm/lm_predictions"): [
        ("mlm/transform", "lm_predictions.lm_head.dense", "dense"),
        ("mlm/norm", "lm_predictions.lm_head.LayerNorm", "norm"),
        ("mlm/bias", "lm_predictions.lm_head.bias", "param"),
    ],
    ("deberta-v2", "seq_cls"): [  # the ContextPooler is the task model's, not the backbone's
        ("classifier/pooler", "pooler.dense", "dense"),
        ("classifier/out", "classifier", "dense"),
    ],
    **{(f, "token_cls"): _TOKEN_CLS for f in BACKBONE},
    **{(f, "qa"): _QA for f in BACKBONE},
}

# ModernBERT's heads all pass through "head" (dense, act, norm); the classifiers are "classifier".
_MODERNBERT_CLS = [
    ("classifier/head/dense", "head.dense", "dense"),
    ("classifier/head/norm", "head.norm", "norm"),
    ("classifier/out", "classifier", "dense"),
]
HEAD |= {("modernbert", h): _MODERNBERT_CLS for h in ("seq_cls", "token_cls", "qa")}
HEAD["modernbert", "mlm"] = [
    ("mlm/head/dense", "head.dense", "dense"),
    ("mlm/head/norm", "head.norm", "norm"),
    ("mlm/bias", "decoder.bias", "param"),
]

# AlbertForPreTraining: the MLM head and the sentence-order classifier on the pooler.
HEAD["albert", "albert_pretraining"] = HEAD["albert", "mlm"] + [
    ("sop_classifier/out", "sop_classifier.classifier", "dense")
]

# Keys HF keeps that carry no information of their own: the decoder tied to the word embeddings,
# its bias (the same tensor as the head bias), and registered buffers.
TIED = {
    "bert": {
        "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    },
    "roberta": {
        "lm_head.decoder.weight": "embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    },
    "distilbert": {"vocab_projector.weight": "embeddings.word_embeddings.weight"},
    "electra": {"generator_lm_head.weight": "embeddings.word_embeddings.weight"},
    "albert": {
        "predictions.decoder.weight": "embeddings.word_embeddings.weight",
        "predictions.decoder.bias": "predictions.bias",
    },
    "xlnet": {"lm_loss.weight": "word_embedding.weight"},
    "deberta-v2": {
        "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    },
    "modernbert": {"decoder.weight": "embeddings.tok_embeddings.weight"},
}
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

# Where HF keeps heads and the pooler: checkpoint keys under these are weights of a head we were not
# asked for (reported and skipped); any other unknown key is an error.
HEAD_NAMESPACES = {
    "bert": ("cls.", "classifier.", "qa_outputs.", "pooler."),
    "roberta": ("lm_head.", "classifier.", "qa_outputs.", "pooler."),
    "distilbert": ("vocab_", "pre_classifier.", "classifier.", "qa_outputs."),
    "electra": ("generator_", "discriminator_predictions.", "classifier.", "qa_outputs."),
    "albert": ("predictions.", "sop_classifier.", "classifier.", "qa_outputs.", "pooler."),
    "xlnet": ("lm_loss.", "sequence_summary.", "logits_proj.", "classifier.", "qa_outputs.")
    + ("start_logits.", "end_logits.", "answer_class."),  # XLNetForQuestionAnswering's beam heads
    # mask_predictions: the v3 checkpoints' replaced-token detector; position_embeddings: kept in
    # checkpoints whose position_biased_input is False (transformers ignores them too).
    "deberta-v2": ("cls.", "lm_predictions.", "mask_predictions.", "pooler.", "classifier.")
    + ("qa_outputs.", "embeddings.position_embeddings."),
    "modernbert": ("head.", "decoder.", "classifier."),
}

# Families that run another's code use its rows, under their own model_type.
for _family, _base in SAME_AS.items():
    BACKBONE[_family], TIED[_family] = BACKBONE[_base], TIED[_base]
    HEAD_NAMESPACES[_family] = HEAD_NAMESPACES[_base]
    HEAD.update({(_family, h): r for (f, h), r in list(HEAD.items()) if f == _base})

# The module name HF's task models keep the backbone under.
PREFIX = {f: SAME_AS.get(f, f) for f in FAMILIES} | {
    "xlnet": "transformer",
    "deberta-v2": "deberta",
    "modernbert": "model",
}


def absent_in_hf(cfg) -> set[str]:
    """Keys (without PREFIX) of our stacked layers that HF does not have: ModernBERT's identity
    attn_norms (its layer 0's). Loading fills them with an identity LayerNorm's values, which
    the layer ignores; export leaves them out."""
    if cfg.model_type != "modernbert":
        return set()
    return {
        f"layers.{i}.attn_norm.{leaf}"
        for i in cfg.identity_attn_norm_layers
        for leaf in ("weight", "bias")
    }


# transformers' class names: f"{CLASS_PREFIX}{suffix}".
_CLASS_PREFIX = {
    "bert": "Bert",
    "roberta": "Roberta",
    "distilbert": "DistilBert",
    "xlm-roberta": "XLMRoberta",
    "camembert": "Camembert",
    "electra": "Electra",
    "albert": "Albert",
    "xlnet": "XLNet",
    "deberta-v2": "DebertaV2",
    "modernbert": "ModernBert",
}
_CLASS_SUFFIX = {
    None: "Model",
    "mlm": "ForMaskedLM",
    "seq_cls": "ForSequenceClassification",
    "token_cls": "ForTokenClassification",
    "qa": "ForQuestionAnswering",
    "electra_disc": "ForPreTraining",
    "albert_pretraining": "ForPreTraining",
    "xlnet_lm": "LMHeadModel",
}
ARCHITECTURES = {
    f: {h: _CLASS_PREFIX[f] + _CLASS_SUFFIX[h] for h in FAMILY_HEADS[f]} for f in FAMILIES
}
ARCHITECTURES["xlnet"]["qa"] = "XLNetForQuestionAnsweringSimple"  # start/end logits, as ours
# The transformers Auto class that builds each head's model from its config.
AUTO_CLASSES = {
    None: "AutoModel",
    "mlm": "AutoModelForMaskedLM",
    "seq_cls": "AutoModelForSequenceClassification",
    "token_cls": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
    "electra_disc": "AutoModelForPreTraining",
    "albert_pretraining": "AutoModelForPreTraining",
    "xlnet_lm": "AutoModelForPreTraining",  # XLNetLMHeadModel
}

# kind -> [(our leaf name, HF tensor suffix, layout)]; layout: how one tensor changes (see below)
LEAVES = {
    "dense": [("kernel", "weight", "T"), ("bias", "bias", None)],
    "norm": [("scale", "weight", None), ("bias", "bias", None)],
    "embed": [("embedding", "weight", None)],
    "param": [(None, None, None)],
    "heads": [("kernel", None, "heads")],
    "heads_out": [("kernel", None, "heads_out")],
}


def rows(model_type: str, head: str | None, legacy: bool = True):
    """Yield (our leaf path, HF key template, layout, is_head, our module path). legacy:
    ModelConfig.legacy, which of DeBERTa-v2's two MLM layouts (other families have one)."""
    table = [(r, False) for r in BACKBONE[model_type]]
    variant = "mlm/lm_predictions" if head == "mlm" and not legacy else head
    table += [(r, True) for r in HEAD.get((model_type, variant), HEAD.get((model_type, head), []))]
    for (ours, theirs, kind), is_head in table:
        for leaf, suffix, layout in LEAVES[kind]:
            path = ours if leaf is None else f"{ours}/{leaf}"
            key = theirs if suffix is None else f"{theirs}.{suffix}"
            yield path, key, layout, is_head, ours


def hf_shape(shape: tuple, layout: str | None, heads: int) -> tuple:
    """The HF shape of one (per-layer) tensor of ours."""
    if layout == "T":
        return shape[::-1]
    if layout in ("heads", "heads_out"):
        d_model = shape[0] if layout == "heads" else shape[1]
        return (d_model, heads, (shape[1] if layout == "heads" else shape[0]) // heads)
    return shape


def to_hf(x, layout: str | None, heads: int):
    if layout == "T":
        return x.T
    if layout in ("heads", "heads_out"):
        x = x if layout == "heads" else x.T
        return x.reshape(x.shape[0], heads, -1)
    return x


def from_hf(x, layout: str | None):
    if layout == "T":
        return x.T
    if layout in ("heads", "heads_out"):
        x = x.reshape(x.shape[0], -1)
        return x if layout == "heads" else x.T
    return x
