"""Extractive QA (SQuAD v1.1): read the official JSON, cut long contexts into overlapping
features, label answer token spans, and map start/end logits back to answer text.

A context longer than max_length becomes several features (windows overlapping by doc_stride
tokens). A training feature whose window does not contain the whole answer points start and end
at the CLS token (index 0), the usual convention for "no answer here". Examples are dicts in the
Hugging Face layout: {'id', 'question', 'context', 'answers': {'text': [...], 'answer_start':
[...]}}. Questions come first and padding is on the right (BERT-style tokenizers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flaxdistil.data.tasks import Encoded, from_rows


def read_squad_json(path) -> list[dict]:
    """The official nested format: data -> paragraphs -> qas -> answers."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "data" not in doc:
        found = list(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected SQuAD JSON with a top-level 'data' list, found {found}")
    examples = []
    for article in doc["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = qa.get("answers", [])
                examples.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "question": qa["question"],
                        "context": para["context"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    if not examples:
        raise ValueError(f"{path}: no questions found under data/paragraphs/qas")
    return examples


def tokenize(examples: Sequence[dict], tokenizer, max_length: int, doc_stride: int):
    """Question-first pairs, the context cut into windows overlapping by doc_stride tokens, with
    offsets (the features of every split: training, evaluation, prediction)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("QA preprocessing needs a fast tokenizer (offsets and sequence_ids)")
    # Leading spaces in questions waste tokens and can break truncation of very long questions.
    return tokenizer(
        [ex["question"].lstrip() for ex in examples],
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def _context_span(sequence_ids: Sequence[int | None]) -> tuple[int, int]:
    """First and last token index of the context (sequence id 1) in one feature."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    return context[0], context[-1]


def answer_token_span(offsets, sequence_ids, start_char: int, end_char: int) -> tuple[int, int]:
    """Token (start, end) covering characters [start_char, end_char) of the context, or (0, 0)
    when this window does not contain the whole answer."""
    first, last = _context_span(sequence_ids)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start = first
    while start + 1 <= last and offsets[start + 1][0] <= start_char:
        start += 1  # last token starting at or before the answer's first character
    end = last
    while end - 1 >= first and offsets[end - 1][1] >= end_char:
        end -= 1  # first token ending at or after the answer's last character
    return start, end


def prepare_train_features(
    examples: Sequence[dict], tokenizer, max_length: int = 384, doc_stride: int = 128
) -> Encoded:
    """Features with labels [F, 2] = (start, end) token positions; (0, 0) = CLS, no answer."""
    tok = tokenize(examples, tokenizer, max_length, doc_stride)
    spans = []
    for i, offsets in enumerate(tok["offset_mapping"]):
        answers = examples[tok["overflow_to_sample_mapping"][i]]["answers"]
        if not answers["text"]:
            spans.append((0, 0))
            continue
        # SQuAD v1.1 training data has one answer per question; the first one is the label.
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        spans.append(answer_token_span(offsets, tok.sequence_ids(i), start_char, end_char))
    return from_rows(tok["input_ids"], tok.get("token_type_ids"), np.array(spans, np.int32))


@dataclasses.dataclass
class QAEvalFeatures:
    encoded: Encoded  # labels are unused placeholders (zeros)
    example_ids: list[str]  # the example each feature came from
    offsets: list[list[tuple[int, int] | None]]  # None outside the context


def prepare_eval_features(
    examples: Sequence[dict], tokenizer, max_length: int = 384, doc_stride: int = 128
) -> QAEvalFeatures:
    tok = tokenize(examples, tokenizer, max_length, doc_stride)
    example_ids, offsets = [], []
    for i, feature_offsets in enumerate(tok["offset_mapping"]):
        example_ids.append(examples[tok["overflow_to_sample_mapping"][i]]["id"])
        seq = tok.sequence_ids(i)
        # Masking question/special offsets makes any span touching them invalid at decode time.
        offsets.append([tuple(o) if seq[k] == 1 else None for k, o in enumerate(feature_offsets)])
    placeholder = np.zeros((len(offsets), 2), np.int32)
    encoded = from_rows(tok["input_ids"], tok.get("token_type_ids"), placeholder)
    return QAEvalFeatures(encoded, example_ids, offsets)


def _best_span(context, offsets, start_logits, end_logits, n_best, max_answer_length):
    """(score, text) of the best valid span in one feature, or None."""
    n = len(offsets)
    start_logits, end_logits = np.asarray(start_logits)[:n], np.asarray(end_logits)[:n]
    best = None
    for s in np.argsort(start_logits)[::-1][:n_best]:
        for e in np.argsort(end_logits)[::-1][:n_best]:
            if offsets[s] is None or offsets[e] is None:
                continue
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, context[offsets[s][0] : offsets[e][1]])
    return best


def postprocess_predictions(
    examples: Sequence[dict],
    features: QAEvalFeatures,
    start_logits,
    end_logits,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """{example id: answer text}: the highest start+end logit span over all features of an
    example among the n_best starts x n_best ends that lie in the context, with start <= end
    and at most max_answer_length tokens. Logits may be padded past each feature's length."""
    by_example: dict[str, list[int]] = {}
    for f, ex_id in enumerate(features.example_ids):
        by_example.setdefault(ex_id, []).append(f)
    answers = {}
    for ex in examples:
        candidates = [
            _best_span(
                ex["context"],
                features.offsets[f],
                start_logits[f],
                end_logits[f],
                n_best,
                max_answer_length,
            )
            for f in by_example.get(ex["id"], [])
        ]
        candidates = [c for c in candidates if c is not None]
        answers[ex["id"]] = max(candidates)[1] if candidates else ""
    return answers
