"""Model hyperparameters with Hugging Face field names (DistilBERT's own names translated)."""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("bert", "roberta", "distilbert")
HEADS = (None, "mlm", "seq_cls", "token_cls", "qa")

# DistilBERT spells BERT's fields differently; one table serves reading and writing config.json.
_DISTILBERT_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable (usable as a static jit argument); one class for all three families."""

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
    initializer_range: float = 0.02
    add_pooler: bool = True  # BERT/RoBERTa pooler (dense + tanh on the first token)
    sinusoidal_pos_embds: bool = False  # DistilBERT's fixed sinusoidal positions
    num_labels: int = 2
    classifier_dropout: float | None = None  # BERT/RoBERTa: None -> hidden_dropout_prob
    seq_classif_dropout: float = 0.2  # DistilBERT's classification dropout
    qa_dropout: float = 0.1  # DistilBERT's QA dropout
    problem_type: str | None = None  # HF's: single_label_classification / regression / ...
    id2label: tuple[tuple[int, str], ...] | None = None  # tuple so that the config hashes

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown model_type {self.model_type!r}: expected one of {FAMILIES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw) -> ModelConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **kw)

    # ---- Hugging Face config.json ----

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise ValueError(
                f"config.json has model_type {model_type!r}: flaxdistil supports {FAMILIES}"
            )
        hf = dict(hf)
        if model_type == "distilbert":
            hf = {_DISTILBERT_NAMES.get(k, k): v for k, v in hf.items()}
            hf.update(type_vocab_size=0, add_pooler=False)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in names}
        if hf.get("id2label"):
            kw["id2label"] = tuple(sorted((int(k), v) for k, v in hf["id2label"].items()))
            kw["num_labels"] = len(kw["id2label"])
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("add_pooler")
        id2label = d.pop("id2label") or tuple((i, f"LABEL_{i}") for i in range(self.num_labels))
        d["id2label"] = {str(i): name for i, name in id2label}
        d["label2id"] = {name: i for i, name in id2label}
        d.pop("num_labels")
        if self.model_type == "distilbert":
            back = {v: k for k, v in _DISTILBERT_NAMES.items()}
            for k in ("type_vocab_size", "classifier_dropout", "layer_norm_eps"):
                d.pop(k)
            d = {back.get(k, k): v for k, v in d.items()}
        else:
            for k in ("sinusoidal_pos_embds", "seq_classif_dropout", "qa_dropout"):
                d.pop(k)
        if d.get("problem_type") is None:
            d.pop("problem_type")
        return d
