"""Evaluation of a model on held-out data: task metrics (``metrics.compute``) and MLM metrics.

The same distance the task trains on (its hard loss) is reported as 'loss' beside the metrics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import metrics, objective, train
from flaxdistil.data.batching import eval_batches
from flaxdistil.models import Model


def make_forward(model: Model):
    return jax.jit(lambda p, ids, mask, types: model.apply({"params": p}, ids, mask, types)[0])


def predict(forward, params, encoded, batch_size: int, pad_id: int = 0) -> list[np.ndarray]:
    """Per-example outputs in the original order; token-level outputs are cut to each row's own
    length (a batch pads them to its widest row)."""
    outs: list = [None] * len(encoded)
    for idx, batch in eval_batches(encoded, batch_size, pad_id):
        logits = np.asarray(jax.device_get(forward(params, *train._inputs(batch))))
        for r, j in enumerate(idx):
            outs[j] = logits[r]
    return outs


def _pad_rows(rows: list[np.ndarray], width: int, value) -> np.ndarray:
    pad = lambda r: np.pad(
        r, [(0, width - len(r))] + [(0, 0)] * (r.ndim - 1), constant_values=value
    )
    return np.stack([pad(r) for r in rows])


def token_level_arrays(outs, encoded):
    """(logits [N, W, C], labels [N, W]) with each row cut to its length and both padded to
    the same width W (labels with -100), whatever the batch widths were."""
    lengths, offsets = encoded.lengths, encoded.offsets
    rows = [o[:n] for o, n in zip(outs, lengths)]
    labels = [encoded.labels[offsets[i] : offsets[i + 1]] for i in range(len(encoded))]
    width = int(lengths.max())
    return _pad_rows(rows, width, 0.0), _pad_rows(labels, width, objective.IGNORE_INDEX)


def evaluate_task(
    forward, params, data, split: str, *, batch_size: int = 64, pad_id: int = 0, per_label=False
):
    """``metrics.compute``'s metrics for the task, plus 'loss' (the hard loss; not for QA).
    ``per_label``: also 'per_label', ``metrics.label_report``'s table by class or tag name
    (classification and token classification; the other tasks have none)."""
    outs = predict(forward, params, data.splits[split], batch_size, pad_id)
    return score_outputs(outs, data, split, per_label)


def score_outputs(outs: list[np.ndarray], data, split: str, per_label=False) -> dict:
    """The metrics of per-example outputs (``predict``'s) on ``split``."""
    task, encoded = data.spec.task_type, data.splits[split]
    if task == "qa":
        from flaxdistil.data.qa import postprocess_predictions

        examples, features = data.qa_eval[split]
        x = _pad_rows(outs, max(len(o) for o in outs), objective._NEG)
        answers = postprocess_predictions(examples, features, x[..., 0], x[..., 1])
        refs = {ex["id"]: ex["answers"]["text"] for ex in examples}
        return metrics.compute("qa", answers, refs)
    if encoded.token_level:
        logits, labels = token_level_arrays(outs, encoded)
    else:
        logits, labels = np.stack(outs), encoded.labels
    loss = float(objective.hard_loss(jnp.asarray(logits), jnp.asarray(labels), task))
    preds = logits[:, 0] if task == "regression" else logits
    names = data.spec.label_names
    out = {"loss": loss, **metrics.compute(task, preds, labels, names)}
    report = metrics.label_report(task, preds, labels, names) if per_label else None
    return out if report is None else {**out, "per_label": report}


def ensemble_outputs(per_model: list[list[np.ndarray]], weights, average: str, task: str):
    """Per-example outputs of an ensemble: the weighted mean of the models' logits (TextBrewer's
    multi-teacher rule) or, with average='probs', the log of the weighted mean of their
    probabilities (softmax; per-label sigmoids for multi-label), which every metric reads as
    logits. The same two rules the KD target of several teachers uses (objective.kd_loss)."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    if average == "probs" and task in ("regression", "qa"):
        raise ValueError(f"average='probs' has no meaning for {task}: use 'logits'")
    out = []
    for rows in zip(*per_model):
        x = np.stack([np.asarray(r, np.float64) for r in rows])
        wx = w.reshape((-1,) + (1,) * (x.ndim - 1))
        if average == "logits":
            out.append((wx * x).sum(0).astype(np.float32))
            continue
        kind = "bce" if task == "multilabel" else "ce"
        z = objective.mean_probs_as_logits(list(jnp.asarray(x)), w, 1.0, kind)
        out.append(np.asarray(z, np.float32))
    return out


# model and objective static (both hashable): one compilation per shape for the whole run, not
# one per evaluation as a fresh jit(lambda) each call would make.
_mlm_eval_step = jax.jit(
    lambda p, b, r, model, obj: train.mlm_eval_step(p, b, r, model=model, obj=obj),
    static_argnums=(3, 4),
)


def evaluate_mlm(model: Model, params, encoded, obj, batch_size: int, pad_id: int) -> dict:
    """Held-out MLM loss / accuracy / perplexity with masks fixed by a seed per batch, so every
    model scored on the same data sees identical corruptions."""
    tot = {"nll_sum": 0.0, "hits": 0, "count": 0}
    for i, (_, batch) in enumerate(eval_batches(encoded, batch_size, pad_id, pad_multiple=32)):
        batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
        out = jax.device_get(_mlm_eval_step(params, batch, jax.random.key(10_000 + i), model, obj))
        for k in tot:
            tot[k] += float(out[k])
    loss = tot["nll_sum"] / max(tot["count"], 1)
    return {
        "mlm_loss": loss,
        "mlm_accuracy": tot["hits"] / max(tot["count"], 1),
        "perplexity": float(np.exp(min(loss, 50.0))),
        "masked_tokens": int(tot["count"]),
    }
