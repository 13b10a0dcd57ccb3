"""The one mapping table between flaxdistil params and Hugging Face PyTorch state-dict keys.

Each row is (our module path, HF module name, kind). ``{i}`` marks a stacked layer: our params hold
all layers on a leading axis, HF has one key per layer. The kind says how tensors translate:

  dense  kernel [in, out] <-> weight [out, in] (transposed), bias <-> bias
  norm   scale <-> weight, bias <-> bias
  embed  embedding <-> weight
  param  the tensor itself

hf.py walks these rows in both directions (load and export), so a name lives in one place only.
Backbone names are relative to the family prefix (``bert.``, ``roberta.``, ``distilbert.``) that HF
uses inside task models; head names are absolute.
"""

from __future__ import annotations

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
    **{(f, "token_cls"): _TOKEN_CLS for f in BACKBONE},
    **{(f, "qa"): _QA for f in BACKBONE},
}

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
}
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

# Where HF keeps heads and the pooler: checkpoint keys under these are weights of a head we were not
# asked for (reported and skipped); any other unknown key is an error.
HEAD_NAMESPACES = {
    "bert": ("cls.", "classifier.", "qa_outputs.", "pooler."),
    "roberta": ("lm_head.", "classifier.", "qa_outputs.", "pooler."),
    "distilbert": ("vocab_", "pre_classifier.", "classifier.", "qa_outputs."),
}

ARCHITECTURES = {
    "bert": {
        None: "BertModel",
        "mlm": "BertForMaskedLM",
        "seq_cls": "BertForSequenceClassification",
        "token_cls": "BertForTokenClassification",
        "qa": "BertForQuestionAnswering",
    },
    "roberta": {
        None: "RobertaModel",
        "mlm": "RobertaForMaskedLM",
        "seq_cls": "RobertaForSequenceClassification",
        "token_cls": "RobertaForTokenClassification",
        "qa": "RobertaForQuestionAnswering",
    },
    "distilbert": {
        None: "DistilBertModel",
        "mlm": "DistilBertForMaskedLM",
        "seq_cls": "DistilBertForSequenceClassification",
        "token_cls": "DistilBertForTokenClassification",
        "qa": "DistilBertForQuestionAnswering",
    },
}

# kind -> [(our leaf name, HF tensor suffix, transpose)]
LEAVES = {
    "dense": [("kernel", "weight", True), ("bias", "bias", False)],
    "norm": [("scale", "weight", False), ("bias", "bias", False)],
    "embed": [("embedding", "weight", False)],
    "param": [(None, None, False)],
}


def rows(model_type: str, head: str | None):
    """Yield (our leaf path, HF key template, transpose, is_head, our module path)."""
    table = [(r, False) for r in BACKBONE[model_type]]
    table += [(r, True) for r in HEAD.get((model_type, head), [])]
    for (ours, theirs, kind), is_head in table:
        for leaf, suffix, transpose in LEAVES[kind]:
            path = ours if leaf is None else f"{ours}/{leaf}"
            key = theirs if suffix is None else f"{theirs}.{suffix}"
            yield path, key, transpose, is_head, ours
