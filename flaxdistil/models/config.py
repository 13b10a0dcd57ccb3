"""Model hyperparameters with Hugging Face field names (DistilBERT's own names translated)."""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = (
    "bert",
    "roberta",
    "distilbert",
    "xlm-roberta",
    "camembert",
    "electra",
    "albert",
    "xlnet",
    "deberta-v2",
    "modernbert",
)
HEADS = (
    None,
    "mlm",
    "seq_cls",
    "token_cls",
    "qa",
    "electra_disc",
    "albert_pretraining",
    "xlnet_lm",
)
# electra_disc: ElectraForPreTraining's replaced-token detector, one logit per token.
# albert_pretraining: AlbertForPreTraining, logits {"mlm": [B, T, V], "sop": [B, num_labels]}.
# xlnet_lm: XLNetLMHeadModel (perm_mask, target_mapping, mems); XLNet has no masked LM, and its
# QA is the simple one.
FAMILY_HEADS = {f: HEADS[:5] for f in FAMILIES} | {
    "electra": HEADS[:6],
    "albert": HEADS[:5] + ("albert_pretraining",),
    "xlnet": (None, "seq_cls", "token_cls", "qa", "xlnet_lm"),
    "modernbert": HEADS[:5],
}

# Families that are another family's code and HF key names under their own model_type (and
# architectures on export): XLM-R and CamemBERT are RoBERTa with other vocabularies.
SAME_AS = {"xlm-roberta": "roberta", "camembert": "roberta"}
# Families with factorised embeddings (embedding_size, projected to hidden_size).
FACTORISED = ("electra", "albert", "deberta-v2")

# Fields a family spells differently from BERT; one table serves reading and writing config.json.
RENAMED = {
    "distilbert": {
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden_dim": "intermediate_size",
        "activation": "hidden_act",
        "dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
    },
    "albert": {"classifier_dropout_prob": "classifier_dropout"},
    "deberta-v2": {"cls_dropout": "classifier_dropout"},
    "xlnet": {
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "d_inner": "intermediate_size",
        "ff_activation": "hidden_act",
        "dropout": "hidden_dropout_prob",
        "summary_last_dropout": "classifier_dropout",
    },
    "modernbert": {
        "hidden_activation": "hidden_act",
        "norm_eps": "layer_norm_eps",
        "attention_dropout": "attention_probs_dropout_prob",
    },
}
# XLNet settings flaxdistil computes (those of the released checkpoints and of fine-tuning).
_XLNET_SUPPORTED = {
    "attn_type": "bi",
    "bi_data": False,
    "summary_type": "last",
    "summary_use_proj": True,
    "summary_activation": "tanh",
}
# Fields XLNet's config.json does not have (max_position_embeddings even raises there).
_XLNET_ABSENT = (
    "max_position_embeddings",
    "type_vocab_size",
    "attention_probs_dropout_prob",
)
# DebertaV2Config's defaults where they are not ours: released config.json files leave them out.
_DEBERTA_DEFAULTS = {
    "vocab_size": 128100,
    "hidden_size": 1536,
    "num_hidden_layers": 24,
    "num_attention_heads": 24,
    "intermediate_size": 6144,
    "type_vocab_size": 0,
    "layer_norm_eps": 1e-7,
}
# Fields only DeBERTa-v2 has (ModelConfig's block of them below).
_DEBERTA_FIELDS = (
    "relative_attention",
    "max_relative_positions",
    "position_buckets",
    "pos_att_type",
    "norm_rel_ebd",
    "share_att_key",
    "position_biased_input",
    "pooler_dropout",
    "pooler_hidden_act",
    "legacy",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable (usable as a static jit argument); one class for every family."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token-type embeddings (DistilBERT)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # ELECTRA/ALBERT factorised embeddings: width of the embedding tables, projected to hidden_size
    # (ELECTRA only where they differ). None: hidden_size, no projection (BERT, RoBERTa, ...).
    embedding_size: int | None = None
    initializer_range: float = 0.02
    add_pooler: bool = True  # BERT/RoBERTa pooler (dense + tanh on the first token)
    sinusoidal_pos_embds: bool = False  # DistilBERT's fixed sinusoidal positions
    num_labels: int = 2
    classifier_dropout: float | None = None  # None -> hidden_dropout_prob (ALBERT: *_prob)
    seq_classif_dropout: float = 0.2  # DistilBERT's classification dropout
    qa_dropout: float = 0.1  # DistilBERT's QA dropout
    problem_type: str | None = None  # HF's: single_label_classification / regression / ...
    id2label: tuple[tuple[int, str], ...] | None = None  # tuple so that the config hashes
    # Width of one attention head when heads were pruned away (prune_structured.py): q/k/v then
    # project to num_attention_heads x attention_head_size < hidden_size. None: hidden_size /
    # num_attention_heads. HF BERTs have no such field: export pads the pruned heads with zeros.
    attention_head_size: int | None = None
    # DeBERTa-v2/v3 (models/deberta.py), DebertaV2Config's names and defaults.
    relative_attention: bool = False  # the disentangled position terms at all
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    position_buckets: int = -1  # > 0: log-bucketed distances, 2 x position_buckets embeddings
    pos_att_type: tuple[str, ...] = ()  # of "c2p" (content-to-position), "p2c"
    norm_rel_ebd: str = "none"  # "layer_norm": the relative embeddings pass a LayerNorm
    share_att_key: bool = False  # positions projected by the content query/key projections
    position_biased_input: bool = True  # False (v3): no absolute position embeddings
    pooler_dropout: float = 0.0  # ContextPooler (the sequence classifier's)
    pooler_hidden_act: str = "gelu"
    legacy: bool = True  # MLM head as cls.predictions (True) or lm_predictions.lm_head (False)
    # ModernBERT's (models/modernbert.py), in its HF names. layer_types: each layer's
    # "full_attention" or "sliding_attention" (None: HF's default, global every 3rd layer); a
    # sliding layer sees keys at |i - j| <= local_attention // 2.
    layer_types: tuple[str, ...] | None = None
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    classifier_pooling: str = "cls"  # or "mean" (over the attention mask)
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    # The layers whose attn_norm is the identity: transformers' layer 0 has none (the embedding
    # norm precedes it). A student sliced from teacher layers records where that layer went.
    identity_attn_norm_layers: tuple[int, ...] = (0,)

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown model_type {self.model_type!r}: expected one of {FAMILIES}")
        if (
            self.embedding_size not in (None, self.hidden_size)
            and self.model_type not in FACTORISED
        ):
            raise ValueError(  # the other families have no HF name for the projection
                f"embedding_size {self.embedding_size} != hidden_size {self.hidden_size} needs "
                f"a model_type in {FACTORISED}, got {self.model_type!r}"
            )
        if self.model_type == "deberta-v2":
            _check_deberta_fields(self)
        if self.model_type == "modernbert":
            for k in ("layer_types", "identity_attn_norm_layers"):  # lists from a CLI or JSON
                if getattr(self, k) is not None:
                    object.__setattr__(self, k, tuple(getattr(self, k)))  # so that it hashes
            _check_modernbert(self)
        if self.attention_head_size is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def all_head_size(self) -> int:
        """Width of the q/k/v projections: hidden_size unless heads were pruned."""
        return self.num_attention_heads * self.head_dim

    @property
    def arch(self) -> str:
        """The family whose modules and HF names this one uses ('roberta' for XLM-R)."""
        return SAME_AS.get(self.model_type, self.model_type)

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def projects_embeddings(self) -> bool:
        """ALBERT always maps embeddings to hidden_size; ELECTRA only when the widths differ."""
        return self.model_type == "albert" or self.embed_dim != self.hidden_size

    @property
    def num_distinct_layers(self) -> int:
        """Layers with params of their own (the stacked axis): ALBERT applies one shared layer
        num_hidden_layers times."""
        return 1 if self.model_type == "albert" else self.num_hidden_layers

    def replace(self, **kw) -> ModelConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **kw)

    # ---- flaxdistil's own JSON: every field, including those HF configs cannot hold ----

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_json after a JSON round trip (which turns id2label's pairs into lists)."""
        d = dict(d)
        if d.get("id2label") is not None:
            d["id2label"] = tuple((int(i), name) for i, name in d["id2label"])
        return cls(**d)

    @property
    def hf_view(self) -> ModelConfig:
        """The config transformers can hold: head-pruned models as hidden_size / head_dim heads
        (prune_structured.full_heads pads the params the same way)."""
        if self.all_head_size == self.hidden_size:
            return self
        if self.hidden_size % self.head_dim:
            raise ValueError(f"head width {self.head_dim} does not divide {self.hidden_size}")
        return self.replace(
            num_attention_heads=self.hidden_size // self.head_dim, attention_head_size=None
        )

    # ---- Hugging Face config.json ----

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise ValueError(
                f"config.json has model_type {model_type!r}: flaxdistil supports {FAMILIES}"
            )
        hf = {RENAMED.get(model_type, {}).get(k, k): v for k, v in hf.items()}
        if model_type == "distilbert":
            hf.update(type_vocab_size=0, add_pooler=False)
        elif model_type == "electra":
            hf.update(add_pooler=False)  # ElectraModel has no pooler
        elif model_type == "albert":
            _check_albert_groups(hf)
        elif model_type == "deberta-v2":
            hf = _deberta_from_hf(hf)
        elif model_type == "modernbert":
            hf.update(_modernbert_from_hf(hf))
        elif model_type == "xlnet":
            _check_xlnet(hf)
            # One dropout everywhere; token types are compared, not embedded.
            hf.update(add_pooler=False, type_vocab_size=2)
            hf["attention_probs_dropout_prob"] = hf.get("hidden_dropout_prob", 0.1)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in names}
        if hf.get("id2label"):
            kw["id2label"] = tuple(sorted((int(k), v) for k, v in hf["id2label"].items()))
            kw["num_labels"] = len(kw["id2label"])
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        if self.all_head_size != self.hidden_size:
            raise ValueError(
                f"a config with {self.num_attention_heads} heads of {self.head_dim} (pruned from "
                f"hidden {self.hidden_size}) has no HF form: prune_structured.full_heads pads it"
            )
        d = dataclasses.asdict(self)
        d.pop("add_pooler")
        d.pop("attention_head_size")
        id2label = d.pop("id2label") or tuple((i, f"LABEL_{i}") for i in range(self.num_labels))
        d["id2label"] = {str(i): name for i, name in id2label}
        d["label2id"] = {name: i for i, name in id2label}
        d.pop("num_labels")
        if self.model_type == "modernbert":
            d = _modernbert_to_hf(self, d)
        else:
            d = {k: v for k, v in d.items() if k not in MODERNBERT_FIELDS}
        if self.model_type == "distilbert":
            for k in ("type_vocab_size", "classifier_dropout", "layer_norm_eps"):
                d.pop(k)
        else:
            for k in ("sinusoidal_pos_embds", "seq_classif_dropout", "qa_dropout"):
                d.pop(k)
        if self.model_type == "deberta-v2":
            d["pos_att_type"] = list(self.pos_att_type)
        else:
            for k in _DEBERTA_FIELDS:
                d.pop(k)
        if self.model_type in FACTORISED:
            d["embedding_size"] = self.embed_dim  # HF's defaults (128) are not ours
        else:
            d.pop("embedding_size")
        if self.model_type == "albert":
            d.update(num_hidden_groups=1, inner_group_num=1)
            if d["classifier_dropout"] is None:  # AlbertForSequenceClassification needs a number
                d["classifier_dropout"] = self.hidden_dropout_prob
        if self.model_type == "xlnet":
            d = {k: v for k, v in d.items() if k not in _XLNET_ABSENT} | _XLNET_SUPPORTED
            if d["classifier_dropout"] is None:
                d["classifier_dropout"] = self.hidden_dropout_prob
        back = {v: k for k, v in RENAMED.get(self.model_type, {}).items()}
        d = {back.get(k, k): v for k, v in d.items()}
        if d.get("problem_type") is None:
            d.pop("problem_type")
        return d


def _check_albert_groups(hf: dict[str, Any]) -> None:
    """Real ALBERTs share one layer across all depths; several groups would need a layer axis of
    num_hidden_groups x inner_group_num, which no released checkpoint has."""
    groups, inner = hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1)
    if (groups, inner) != (1, 1):
        raise ValueError(
            f"ALBERT with num_hidden_groups={groups}, inner_group_num={inner}: flaxdistil "
            "supports the one shared layer of the released ALBERTs (both 1)"
        )


def _check_xlnet(hf: dict[str, Any]) -> None:
    bad = [f"{k}={hf[k]!r}" for k, v in _XLNET_SUPPORTED.items() if hf.get(k, v) != v]
    if hf.get("clamp_len", -1) > 0:
        bad.append(f"clamp_len={hf['clamp_len']}")
    if bad:
        raise ValueError(
            f"XLNet with {', '.join(bad)}: flaxdistil computes {_XLNET_SUPPORTED} and no "
            "clamp_len, as the released XLNets have"
        )


# DeBERTa-v2 options flaxdistil does not compute: ConvLayer after the first layer (DeBERTa-v2
# xlarge/xxlarge; the v3 models have none), a head width other than hidden / heads, a pooler of
# another width (DebertaV2ForSequenceClassification then fails in transformers too).
_DEBERTA_ABSENT = {"conv_kernel_size": 0}


def _deberta_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    bad = [f"{k}={hf[k]!r}" for k, v in _DEBERTA_ABSENT.items() if hf.get(k, v) != v]
    heads = hf.get("num_attention_heads", _DEBERTA_DEFAULTS["num_attention_heads"])
    width = hf.get("hidden_size", _DEBERTA_DEFAULTS["hidden_size"])
    if hf.get("attention_head_size", width // heads) != width // heads:
        bad.append(f"attention_head_size={hf['attention_head_size']}")
    if hf.get("pooler_hidden_size", width) != width:
        bad.append(f"pooler_hidden_size={hf['pooler_hidden_size']}")
    if bad:
        raise ValueError(
            f"DeBERTa-v2 with {', '.join(bad)}: flaxdistil computes no ConvLayer "
            "(conv_kernel_size 0), heads of hidden_size / num_attention_heads and a pooler of "
            "hidden_size, as the DeBERTa-v3 models have"
        )
    hf = _DEBERTA_DEFAULTS | hf | {"add_pooler": False}  # its only pooler is the classifier's
    if hf.get("embedding_size") == hf["hidden_size"]:  # no embed_proj, as when it is absent
        hf["embedding_size"] = None
    kinds = hf.get("pos_att_type") or ()
    if isinstance(kinds, str):  # "p2c|c2p" in the released config.json files
        kinds = kinds.split("|")
    hf["pos_att_type"] = tuple(k.strip().lower() for k in kinds)
    return hf


def _check_deberta_fields(cfg: ModelConfig) -> None:
    unknown = [k for k in cfg.pos_att_type if k not in ("c2p", "p2c")]
    norms = [k.strip() for k in cfg.norm_rel_ebd.lower().split("|")]
    problems = []
    if unknown:
        problems.append(f"pos_att_type {cfg.pos_att_type} (expected of 'c2p', 'p2c')")
    if set(norms) - {"layer_norm", "none"}:
        problems.append(f"norm_rel_ebd {cfg.norm_rel_ebd!r} (expected 'layer_norm' or 'none')")
    if not cfg.legacy and cfg.embed_dim != cfg.hidden_size:
        # lm_predictions.lm_head decodes at hidden_size against the embedding_size table.
        problems.append(
            f"legacy=False with embedding_size {cfg.embed_dim} != hidden_size {cfg.hidden_size}"
        )
    if problems:
        raise ValueError("unsupported DeBERTa-v2 config: " + "; ".join(problems))


# ---------------------------------------------------------------- ModernBERT

MODERNBERT_FIELDS = (
    "layer_types",
    "local_attention",
    "global_rope_theta",
    "local_rope_theta",
    "norm_bias",
    "attention_bias",
    "mlp_bias",
    "decoder_bias",
    "classifier_bias",
    "classifier_activation",
    "classifier_pooling",
    "embedding_dropout",
    "mlp_dropout",
    "identity_attn_norm_layers",
)
LAYER_TYPES = ("full_attention", "sliding_attention")
# ModernBertConfig's defaults where they are not BERT's (old config.json files may omit them).
_MODERNBERT_DEFAULTS = {
    "vocab_size": 50368,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "max_position_embeddings": 8192,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 50283,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout": 0.0,
}


def modernbert_layer_types(num_layers: int, every_n: int = 3) -> tuple[str, ...]:
    """transformers' pattern: layer i is global iff i % global_attn_every_n_layers == 0."""
    return tuple(LAYER_TYPES[bool(i % every_n)] for i in range(num_layers))


def global_every_n(layer_types: tuple[str, ...]) -> int | None:
    """The global_attn_every_n_layers that gives this pattern, or None if none does."""
    for n in range(1, len(layer_types) + 1):
        if modernbert_layer_types(len(layer_types), n) == tuple(layer_types):
            return n
    return None


def _check_modernbert(cfg: ModelConfig) -> None:
    L = cfg.num_hidden_layers
    if cfg.layer_types is not None and (
        len(cfg.layer_types) != L or set(cfg.layer_types) - set(LAYER_TYPES)
    ):
        raise ValueError(
            f"layer_types must hold {L} entries from {LAYER_TYPES}, got {cfg.layer_types}"
        )
    if any(not 0 <= i < L for i in cfg.identity_attn_norm_layers):
        raise ValueError(
            f"identity_attn_norm_layers {cfg.identity_attn_norm_layers} must index the {L} layers"
        )
    if cfg.classifier_pooling not in ("cls", "mean"):
        raise ValueError(
            f"classifier_pooling must be 'cls' or 'mean', got {cfg.classifier_pooling!r}"
        )


def _modernbert_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Fields of a ModernBERT config.json (renamed already) in flaxdistil's form."""
    out = {k: hf.get(k, v) for k, v in _MODERNBERT_DEFAULTS.items()}
    L = out["num_hidden_layers"]
    types = hf.get("layer_types") or modernbert_layer_types(
        L, hf.get("global_attn_every_n_layers", 3)
    )
    rope = hf.get("rope_parameters") or {}
    thetas = {}
    for kind, old_name, theta in [
        ("full_attention", "global", 1.6e5),
        ("sliding_attention", "local", 1e4),
    ]:
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise ValueError(
                f"ModernBERT with rope scaling ({params or hf.get('rope_scaling')}): flaxdistil "
                "computes the default rotary positions only"
            )
        old = f"{old_name}_rope_theta"  # transformers 4.x's name
        thetas[old] = float(params.get("rope_theta", hf.get(old, theta)))
    return (
        out
        | thetas
        | {
            "layer_types": tuple(types),
            "type_vocab_size": 0,
            "add_pooler": False,
            "hidden_dropout_prob": 0.0,  # ModernBERT's dropouts are attention/mlp/embedding_dropout
            "identity_attn_norm_layers": (0,),
        }
    )


def _modernbert_to_hf(cfg: ModelConfig, d: dict[str, Any]) -> dict[str, Any]:
    """config.json fields of a ModernBERT; refuses what transformers cannot rebuild exactly."""
    types = cfg.layer_types or modernbert_layer_types(cfg.num_hidden_layers)
    n, problems = global_every_n(types), []
    if n is None:
        pattern = "".join("G" if t == "full_attention" else "L" for t in types)
        glob = [i for i, t in enumerate(types) if t == "full_attention"]
        problems.append(
            f"its layers' attention pattern {pattern} (G global, L sliding; global layers "
            f"{glob}) is not 'global iff layer % n == 0' for any global_attn_every_n_layers"
        )
    if tuple(cfg.identity_attn_norm_layers) != (0,):
        problems.append(
            "transformers has no attn_norm at layer 0 and one at every other layer, but this "
            f"model's identity attn_norm layers are {list(cfg.identity_attn_norm_layers)}"
        )
    if problems:
        raise ValueError(
            "cannot export this ModernBERT to transformers: "
            + "; ".join(problems)
            + " (a student exports when its layers start at teacher layer 0 and its global "
            "layers fall every n-th from there)"
        )
    for k in ("type_vocab_size", "hidden_dropout_prob", "identity_attn_norm_layers"):
        d.pop(k)
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": cfg.global_rope_theta},
        "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta},
    }
    if d["classifier_dropout"] is None:
        d["classifier_dropout"] = 0.0
    # layer_types for transformers 5, global_attn_every_n_layers and the thetas for 4.x.
    return d | {
        "layer_types": list(types),
        "global_attn_every_n_layers": n,
        "rope_parameters": rope,
    }
