"""The teachers of a run: ``teacher.path`` (one, the common case) or ``teachers`` (a list).

    c.teachers = [
        {"path": "workdirs/sent_teacher_s0/best_hf"},                    # weight 1
        {"path": "workdirs/sent_teacher_big/best_hf", "weight": 2.0, "dtype": "bfloat16",
         "intermediate_matches": [{"layer_T": 12, "layer_S": 3, "feature": "hidden",
                                   "loss": "cos"}]},
    ]

Each entry has its own checkpoint ``path``, KD ``weight`` (normalised over the teachers; the KD
target is the weighted mean of their logits, TextBrewer's MultiTeacherDistiller rule, or of
their probabilities with ``distill.teacher_average='probs'``), ``dtype`` (default
``teacher.dtype``; 'bfloat16' stores and runs that teacher in bf16) and optional
``intermediate_matches`` counted in that teacher's layers (default: ``distill.intermediate_matches``
or the preset's, resolved for that teacher's depth and width). Teachers may differ in size and
architecture; they must share the student's vocabulary (a teacher with its own tokenizer is not
supported: its token ids would mean other tokens).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import jax
import jax.numpy as jnp

from flaxdistil import hf

ENTRY_KEYS = ("path", "weight", "dtype", "intermediate_matches")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclasses.dataclass
class Teacher:
    pre: hf.Pretrained  # config, params, head
    path: str  # as the config names it
    weight: float = 1.0
    dtype: str = "float32"
    intermediate_matches: list | None = None  # None: the distill fields' (config > preset)

    @property
    def config(self):
        return self.pre.config

    @property
    def params(self):
        return self.pre.params

    def model(self, head: str, attention_impl: str = "einsum"):
        """Its Model in its own compute dtype (teacher.dtype or its entry's)."""
        from flaxdistil.models import Model

        return Model(self.config, head, jnp.dtype(self.dtype), attention_impl=attention_impl)

    def run_params(self):
        """Its params in its compute dtype: a bf16 teacher also stores its weights in bf16 (half
        the memory and bandwidth)."""
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(self.dtype)), self.params)


def entries(cfg) -> list[dict]:
    """The teachers the config names, each entry complete (no checkpoint is read)."""
    many = list(cfg.get("teachers") or [])
    if many and cfg.teacher.path:
        raise ValueError(
            f"set teacher.path (one teacher) or teachers (a list), not both: teacher.path is "
            f"{cfg.teacher.path!r} and teachers has {len(many)} entries"
        )
    if not many:
        return [_entry(cfg, {"path": cfg.teacher.path}, None)] if cfg.teacher.path else []
    return [_entry(cfg, e, i) for i, e in enumerate(many)]


def _entry(cfg, raw, i) -> dict:
    where = "teacher" if i is None else f"teachers[{i}]"
    if not hasattr(raw, "items"):
        raise ValueError(f"{where} expects a dict {{'path': ..., 'weight': ...}}, got {raw!r}")
    e = dict(raw)
    for key in e:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            hint = f" (closest: {close[0]!r})" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; expected {list(ENTRY_KEYS)}")
    if not e.get("path"):
        raise ValueError(f"{where} needs a 'path' (a fine-tuned HF directory or asset name)")
    weight = e.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ValueError(f"{where}: weight expects a positive number, got {weight!r}")
    ims = e.get("intermediate_matches")
    if ims is not None and (hasattr(ims, "items") or not isinstance(ims, list | tuple)):
        raise ValueError(f"{where}: intermediate_matches expects a list of dicts, got {ims!r}")
    return {
        "path": str(e["path"]),
        "weight": float(weight),
        "dtype": e.get("dtype") or cfg.teacher.dtype,
        "intermediate_matches": None if ims is None else [dict(m) for m in ims],
    }


def first_path(cfg) -> str:
    """The first teacher's path ('' without a teacher): the model a student is sliced from and
    whose tokenizer the run uses."""
    es = entries(cfg)
    return es[0]["path"] if es else ""


def load(cfg, head: str, **head_fields) -> list[Teacher]:
    """Every teacher with a trained ``head`` (a random one would teach noise)."""
    out = []
    for e in entries(cfg):
        pre = hf.load_pretrained(e["path"], head, **head_fields)
        if pre.report.new_init:
            hint = "fit one with scripts/fit_mlm_head.py" if head == "mlm" else "fine-tune it first"
            raise ValueError(
                f"teacher {e['path']} has no trained {head} head "
                f"({', '.join(pre.report.new_init)} would be random): {hint}"
            )
        out.append(Teacher(pre, **e))
    return out


def check_vocab(teachers: list[Teacher], s_cfg, tokenizer) -> None:
    """Refuse a teacher whose vocabulary is not the student's, in one line: with another
    tokenizer the same ids are other tokens (separate teacher batches are not supported)."""
    vocab = None
    for t in teachers:
        if t.config.vocab_size != s_cfg.vocab_size:
            raise ValueError(
                f"teacher {t.path} has vocab_size {t.config.vocab_size}, the student "
                f"{s_cfg.vocab_size}: teachers must share the student's vocabulary (a teacher "
                "with its own tokenizer is not supported)"
            )
        own = _tokenizer_vocab(t.pre.path)
        if own is None:
            continue
        vocab = tokenizer.get_vocab() if vocab is None else vocab
        if own != vocab:
            diff = sorted(set(own.items()) ^ set(vocab.items()))[:1]
            raise ValueError(
                f"teacher {t.path}'s tokenizer differs from the student's ({len(own)} vs "
                f"{len(vocab)} tokens, e.g. {diff[0] if diff else '?'}): teachers must share "
                "the student's vocabulary (a teacher with its own tokenizer is not supported)"
            )


def _tokenizer_vocab(path: Path) -> dict | None:
    if not any((Path(path) / f).exists() for f in _TOKENIZER_FILES):
        return None
    from flaxdistil.data import text_pipeline

    return text_pipeline.load_tokenizer(path).get_vocab()
