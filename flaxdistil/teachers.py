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
or the preset's, resolved for that teacher's depth and width) and ``tokenizer`` (default
``teacher.tokenizer``, else the teacher's own directory). Teachers may differ in size and
architecture.

A teacher whose tokenizer differs from the student's (TextBrewer's separate teacher and student
batches; ``resolve_tokenizers``) gets the task data encoded with its own tokenizer too: each
training batch then carries its own ``teacher<k>/input_ids`` / ``attention_mask`` /
``token_type_ids`` for the same examples, and it runs on those inside the step. What is defined
between two tokenisations: KD on sequence-level logits (classification, regression, multi-label)
with any pair; token classification by words (the teacher's logits at the first sub-token of
each word placed at the student's first sub-token of that word, KD only there). Refused in one
line: general (MLM) distillation (the two MLM heads predict over different vocabularies at
different masked tokens), QA (start/end logits run over each side's own tokens), and every
intermediate match (hidden states and attentions are per token: the tokens do not correspond).
A teacher directory without tokenizer files is taken to share the student's.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import jax
import jax.numpy as jnp

from flaxdistil import hf

ENTRY_KEYS = ("path", "weight", "dtype", "intermediate_matches", "tokenizer")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclasses.dataclass
class Teacher:
    pre: hf.Pretrained  # config, params, head
    path: str  # as the config names it
    weight: float = 1.0
    dtype: str = "float32"
    intermediate_matches: list | None = None  # None: the distill fields' (config > preset)
    tokenizer: str = ""  # where its tokenizer is read ("": its own directory)
    # Set by resolve_tokenizers when it tokenises unlike the student: its tokenizer, and the
    # training rows in its tokenisation (the task job encodes them).
    own_tokenizer: object = None
    rows: object = None

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
        "tokenizer": str(e.get("tokenizer") or cfg.teacher.get("tokenizer", "") or ""),
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


def resolve_tokenizers(teachers: list[Teacher], s_cfg, tokenizer, task: str) -> None:
    """Set ``own_tokenizer`` on each teacher that tokenises unlike the student (``tokenizer``);
    refuse, in one line, a pair that cannot be distilled (see the module docstring)."""
    for t in teachers:
        own = _own_tokenizer(t)
        if own is None:
            if t.config.vocab_size != s_cfg.vocab_size:
                raise ValueError(
                    f"teacher {t.path} has vocab_size {t.config.vocab_size}, the student "
                    f"{s_cfg.vocab_size}, and no tokenizer files: name its tokenizer with "
                    "teacher.tokenizer (or the teachers entry's 'tokenizer')"
                )
            continue
        if same_tokenizer(own, tokenizer):
            continue
        why = _refusal(task)
        if why:
            raise ValueError(
                f"teacher {t.path}'s tokenizer differs from the student's "
                f"({_differences(own, tokenizer)}): {why}"
            )
        t.own_tokenizer = own


def same_tokenizer(a, b) -> bool:
    """The same token ids for every text: the tokenizers' definitions (vocabulary, normaliser,
    pre-tokeniser, special-token template) agree; truncation / padding are call settings."""
    import json

    state = lambda tok: {
        k: v
        for k, v in json.loads(tok.backend_tokenizer.to_str()).items()
        if k not in ("truncation", "padding")
    }
    return a is b or state(a) == state(b)


def _refusal(task: str) -> str | None:
    if task == "mlm":
        return (
            "general (MLM) distillation needs one vocabulary: the two MLM heads predict over "
            "different vocabularies at different masked tokens, so KD between them is undefined; "
            "use a teacher with the student's tokenizer"
        )
    if task == "qa":
        return (
            "QA start/end logits run over each tokenizer's own tokens, which do not correspond; "
            "use a teacher with the student's tokenizer"
        )
    return None


def _differences(own, tokenizer) -> str:
    a, b = own.get_vocab(), tokenizer.get_vocab()
    diff = sorted(set(a.items()) ^ set(b.items()))[:1]
    return f"{len(a)} vs {len(b)} tokens" + (f", e.g. {diff[0]}" if diff else "")


def _own_tokenizer(t: Teacher):
    """Its tokenizer (teacher.tokenizer, else its directory's); None when it has none."""
    from flaxdistil.data import text_pipeline

    if t.tokenizer:
        return text_pipeline.load_tokenizer(hf.resolve(t.tokenizer))
    if not any((Path(t.pre.path) / f).exists() for f in _TOKENIZER_FILES):
        return None
    return text_pipeline.load_tokenizer(t.pre.path)
