"""Evaluation metrics in plain NumPy, computed on the host after predictions leave the device.

Every metric returns Python floats so results can go straight into logs and JSON. Definitions
follow the references people compare against: scikit-learn (accuracy, macro F1, multi-class MCC),
SciPy (Pearson, Spearman with average ranks for ties), seqeval (entity-level F1 on BIO tags) and
the official SQuAD v1.1 script (EM/F1; reported here in [0, 1], the script multiplies by 100).

Degenerate inputs (constant predictions, empty sets) give 0.0 instead of NaN: the training loop
treats a NaN metric as a divergence, and a model that predicts one class early in training has
not diverged.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flaxdistil.losses import IGNORE_INDEX  # the label convention of the losses, -100


def _ints(x) -> np.ndarray:
    return np.asarray(x).astype(np.int64).reshape(-1)


def _floats(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _safe_div(2 * precision * recall, precision + recall)


# --- classification ------------------------------------------------------------------------


def accuracy(predictions, labels) -> float:
    predictions, labels = _ints(predictions), _ints(labels)
    return float(np.mean(predictions == labels)) if labels.size else 0.0


def confusion_matrix(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """Returns (classes, C) with C[i, j] = #(label == classes[i] and prediction == classes[j])."""
    predictions, labels = _ints(predictions), _ints(labels)
    classes = np.union1d(labels, predictions)
    true_idx = np.searchsorted(classes, labels)
    pred_idx = np.searchsorted(classes, predictions)
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (true_idx, pred_idx), 1)
    return classes, cm


def per_class_f1(predictions, labels) -> dict[int, float]:
    """F1 for every class seen in labels or predictions (sklearn's label set for average=None)."""
    classes, cm = confusion_matrix(predictions, labels)
    tp = np.diag(cm).astype(np.float64)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of P and R, and is 0 when both are 0.
    den = cm.sum(axis=0) + cm.sum(axis=1)
    return {int(c): _safe_div(2 * t, d) for c, t, d in zip(classes, tp, den)}


def macro_f1(predictions, labels) -> float:
    scores = per_class_f1(predictions, labels)
    return float(np.mean(list(scores.values()))) if scores else 0.0


def per_label_report(predictions, labels, label_names=None) -> dict[str, dict[str, float]]:
    """sklearn's ``classification_report(output_dict=True)`` per class: {name: {'precision',
    'recall', 'f1-score', 'support'}} for every class seen in labels or predictions (its default
    label set), named by ``label_names[id]`` when given, else by the id."""
    classes, cm = confusion_matrix(predictions, labels)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    out = {}
    for c, t, p, n in zip(classes, tp, predicted, support):
        precision, recall = _safe_div(t, p), _safe_div(t, n)
        name = str(label_names[c]) if label_names is not None else str(int(c))
        out[name] = {
            "precision": precision,
            "recall": recall,
            "f1-score": _f1(precision, recall),
            "support": int(n),
        }
    return out


def matthews_corrcoef(predictions, labels) -> float:
    """Multi-class MCC (Gorodkin 2004), the formula sklearn uses; 0.0 when undefined."""
    _, cm = confusion_matrix(predictions, labels)
    cm = cm.astype(np.float64)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    return _safe_div(cov_tp, np.sqrt(cov_tt * cov_pp))


# --- regression ----------------------------------------------------------------------------


def pearson(predictions, labels) -> float:
    """Pearson r; 0.0 when either side is constant (SciPy returns NaN there)."""
    x, y = _floats(predictions), _floats(labels)
    x, y = x - x.mean(), y - y.mean()
    return _safe_div(x @ y, np.sqrt((x @ x) * (y @ y)))


def rankdata(x) -> np.ndarray:
    """Ranks starting at 1, ties get the average of the ranks they span (scipy 'average')."""
    x = _floats(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values shares the mean of its first and last 1-based rank.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(predictions, labels) -> float:
    return pearson(rankdata(predictions), rankdata(labels))


def mse(predictions, labels) -> float:
    return float(np.mean((_floats(predictions) - _floats(labels)) ** 2))


# --- multi-label ---------------------------------------------------------------------------


def multilabel_metrics(logits, labels, threshold: float = 0.5) -> dict[str, float]:
    """logits, labels: [N, C]; a class is predicted when sigmoid(logit) > threshold."""
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    pred = probs > threshold
    gold = np.asarray(labels) > 0.5
    tp = (pred & gold).sum(axis=0)
    fp = (pred & ~gold).sum(axis=0)
    fn = (~pred & gold).sum(axis=0)
    class_f1 = [_safe_div(2 * t, 2 * t + p + n) for t, p, n in zip(tp, fp, fn)]
    return {
        "micro_f1": _safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
        "macro_f1": float(np.mean(class_f1)) if class_f1 else 0.0,
        "subset_accuracy": float(np.mean(np.all(pred == gold, axis=1))) if len(gold) else 0.0,
    }


# --- token classification ------------------------------------------------------------------


def token_accuracy(predictions, labels, ignore_index: int = IGNORE_INDEX) -> float:
    predictions, labels = _ints(predictions), _ints(labels)
    keep = labels != ignore_index
    return accuracy(predictions[keep], labels[keep])


def bio_chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end_inclusive) chunks of one BIO/IOB2 sequence, as seqeval/conlleval read
    them: an I-X that does not continue an X chunk starts a new one instead of being dropped."""
    chunks, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes a chunk at the end
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if start is not None and not continues:
            chunks.append((kind, start, i - 1))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return chunks


def entity_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision/recall/F1 over sentences: a chunk counts only on an exact match."""
    pred = {(s, *c) for s, tags in enumerate(pred_tags) for c in bio_chunks(tags)}
    gold = {(s, *c) for s, tags in enumerate(gold_tags) for c in bio_chunks(tags)}
    correct = len(pred & gold)
    precision, recall = _safe_div(correct, len(pred)), _safe_div(correct, len(gold))
    return {
        "entity_precision": precision,
        "entity_recall": recall,
        "entity_f1": _f1(precision, recall),
    }


def is_bio(label_names: Sequence[str] | None) -> bool:
    if not label_names:
        return False
    return all(n == "O" or (n[:2] in ("B-", "I-") and len(n) > 2) for n in label_names)


def _tag_sequences(predictions, labels, label_names) -> tuple[list[list[str]], list[list[str]]]:
    """Turns [N, L] id arrays into per-sentence tag lists, dropping ignored positions."""
    pred_seqs, gold_seqs = [], []
    for p_row, l_row in zip(np.asarray(predictions), np.asarray(labels)):
        keep = l_row != IGNORE_INDEX
        pred_seqs.append([label_names[i] for i in p_row[keep]])
        gold_seqs.append([label_names[i] for i in l_row[keep]])
    return pred_seqs, gold_seqs


# --- extractive QA (SQuAD v1.1) ------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, strip punctuation, articles, spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _em(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction: str, gold: str) -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    return _f1(same / len(pred_toks), same / len(gold_toks))


def squad_metrics(predictions, references) -> dict[str, float]:
    """predictions: {id: text} or a list; references: {id: [gold texts]} or a list of lists.

    Each question scores the max over its gold answers; missing predictions score 0, as in the
    official script."""
    if isinstance(references, Mapping):
        ids = list(references)
        golds = [references[i] for i in ids]
        preds = [predictions.get(i, "") for i in ids]
    else:
        golds, preds = list(references), list(predictions)
    em = [max(_em(p, g) for g in gs) if gs else 0.0 for p, gs in zip(preds, golds)]
    f1 = [max(_token_f1(p, g) for g in gs) if gs else 0.0 for p, gs in zip(preds, golds)]
    return {
        "exact_match": float(np.mean(em)) if em else 0.0,
        "f1": float(np.mean(f1)) if f1 else 0.0,
    }


# --- registry ------------------------------------------------------------------------------

METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "per_class_f1": per_class_f1,
    "per_label_report": per_label_report,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
    "multilabel": multilabel_metrics,
    "token_accuracy": token_accuracy,
    "entity_f1": entity_f1,
    "squad": squad_metrics,
}


def _class_ids(predictions, labels) -> np.ndarray:
    """Accepts either class ids or logits with one more (class) axis than labels."""
    predictions = np.asarray(predictions)
    if predictions.ndim == np.asarray(labels).ndim + 1:
        predictions = predictions.argmax(axis=-1)
    return predictions


def label_report(task_type: str, predictions, labels, label_names=None) -> dict | None:
    """``per_label_report`` for a task with one class per example or token (classification,
    token classification; ignored tokens left out), None for the other task types."""
    if task_type not in ("classification", "token_classification"):
        return None
    ids, labels = _class_ids(predictions, labels), np.asarray(labels)
    keep = labels != IGNORE_INDEX
    return per_label_report(ids[keep], labels[keep], label_names)


def compute(task_type: str, predictions, labels, label_names=None) -> dict[str, float]:
    """The standard metric set for a task type.

    classification: logits [N, C] or ids [N]; regression: [N] or [N, 1]; multilabel: logits
    [N, C] with 0/1 labels; token_classification: logits [N, L, C] or ids [N, L] with -100 on
    ignored positions (+ entity F1 when label_names are BIO tags); qa: see `squad_metrics`.
    """
    if task_type == "classification":
        ids = _class_ids(predictions, labels)
        return {
            "accuracy": accuracy(ids, labels),
            "macro_f1": macro_f1(ids, labels),
            "mcc": matthews_corrcoef(ids, labels),
        }
    if task_type == "regression":
        return {
            "pearson": pearson(predictions, labels),
            "spearman": spearman(predictions, labels),
            "mse": mse(predictions, labels),
        }
    if task_type == "multilabel":
        return multilabel_metrics(predictions, labels)
    if task_type == "token_classification":
        ids = _class_ids(predictions, labels)
        keep = np.asarray(labels) != IGNORE_INDEX
        out = {
            "token_accuracy": token_accuracy(ids, labels),
            "token_macro_f1": macro_f1(ids[keep], np.asarray(labels)[keep]),
        }
        if is_bio(label_names):
            out.update(entity_f1(*_tag_sequences(ids, labels, label_names)))
        return out
    if task_type == "qa":
        return squad_metrics(predictions, labels)
    raise ValueError(
        f"unknown task_type {task_type!r}; expected one of "
        "'classification', 'regression', 'multilabel', 'token_classification', 'qa'"
    )
