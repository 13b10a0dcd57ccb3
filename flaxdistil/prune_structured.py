"""Structured pruning as TextPruner does it: attention heads and FFN neurons ranked by first-order
Taylor importance, then physically removed (matrices shrink, the model runs faster).

``heads_imp, ffn_imp = importance(cfg, head, params, batches, task='classification')`` is
TextPruner's ``get_importance_score``: over the batches, |sum(w * dL/dw)| of each head's columns of
the attention output projection, and for each FFN neuron |sum(w * dL/dw) + b * dL/db| of its fc1
column plus |sum(w * dL/dw)| of its fc2 row, divided by the number of examples. ``use_logits=True``
is a label-free variant: the labels are the model's own argmax predictions. (TextPruner's
``use_logits`` takes the cross entropy to the model's own soft predictions, whose gradient
softmax(z) - p is zero when p = softmax(z): its scores come only from the rounding of its fp16
copy of the model. Hard pseudo-labels keep a first-order signal.)

``keep = choose(imp, k)`` keeps the k most important per layer. flaxdistil stacks its layers on one
axis (nn.scan), so every layer keeps the same number (TextPruner's even masking, its default);
uneven per-layer sizes do not fit the stacked params and are refused. ``prune_heads_ffn`` removes
the rest. Hugging Face export: a smaller intermediate_size is a plain config field; transformers 5
dropped ``pruned_heads``, so ``full_heads`` pads the pruned heads back as zero weights (outputs
unchanged, attention matrices full size) and flaxdistil's compact files keep the small ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import objective
from flaxdistil.models import Model, ModelConfig

HEAD_TASKS = {"seq_cls": "classification", "token_cls": "token_classification", "qa": "qa"}
HEAD_TASKS["mlm"] = "mlm"


def task_of(cfg: ModelConfig, head: str | None) -> str:
    """The task whose loss (objective.hard_loss) scores a head's predictions on gold labels."""
    if head == "seq_cls" and (cfg.problem_type == "regression" or cfg.num_labels == 1):
        return "regression"
    if head not in HEAD_TASKS:
        raise ValueError(
            f"importance scores need a head with a loss ({sorted(HEAD_TASKS)}), got {head!r}"
        )
    return HEAD_TASKS[head]


def _check_family(cfg: ModelConfig) -> None:
    if cfg.model_type == "xlnet":
        raise ValueError("structured pruning covers the BERT-style families, not XLNet")


def pseudo_labels(logits, mask_BxT, head: str):
    """The model's own predictions as labels: argmax per example (per real token; QA: per start
    and end over the real positions)."""
    x = jnp.asarray(logits, jnp.float32)
    if head == "qa":
        keep = mask_BxT.astype(bool)[..., None]
        return jnp.argmax(jnp.where(keep, x, -jnp.inf), axis=1)  # [B, 2]
    top = jnp.argmax(x, -1)
    if head in ("token_cls", "mlm"):
        return jnp.where(mask_BxT.astype(bool), top, objective.IGNORE_INDEX)
    return top


def _scores(params, grads, cfg: ModelConfig):
    """(heads [L, H], ffn [L, I]) of one batch: TextPruner's sums, then abs."""
    lay, g = params["encoder"]["layer"], grads["encoder"]["layer"]
    L, H, K = lay["attention"]["out"]["kernel"].shape[0], cfg.num_attention_heads, cfg.head_dim
    wg = lambda *keys: _get(lay, keys) * _get(g, keys)
    heads = jnp.abs(wg("attention", "out", "kernel").reshape(L, H, K, -1).sum((2, 3)))
    fc1 = wg("fc1", "kernel").sum(1) + wg("fc1", "bias")
    ffn = jnp.abs(fc1) + jnp.abs(wg("fc2", "kernel").sum(2))
    return heads, ffn


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def importance(cfg: ModelConfig, head: str, params, batches, *, task=None, use_logits=False):
    """(head importance [L, H], FFN importance [L, I]) as NumPy, summed over `batches` (dicts of
    input_ids, attention_mask, optional token_type_ids, and labels unless use_logits) and divided
    by the number of examples. Dropout off, as TextPruner's model.eval()."""
    _check_family(cfg)
    task = task or task_of(cfg, head)
    if use_logits and task == "regression":
        raise ValueError("label-free importance needs class logits: regression needs labels")
    model = Model(cfg, head)

    def loss_fn(p, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits, _ = model.apply({"params": p}, ids, mask, batch.get("token_type_ids"))
        labels = pseudo_labels(logits, mask, head) if use_logits else batch["labels"]
        return objective.hard_loss(logits, jax.lax.stop_gradient(labels), task)

    @jax.jit
    def one(p, batch):
        return _scores(p, jax.grad(loss_fn)(p, batch), cfg)

    heads = ffn = 0.0
    n = 0
    for batch in batches:
        if not use_logits and "labels" not in batch:
            raise ValueError("importance with labels needs batches with 'labels' (or use_logits)")
        h, f = one(params, {k: jnp.asarray(v) for k, v in batch.items()})
        heads, ffn, n = heads + h, ffn + f, n + len(batch["input_ids"])
    if n == 0:
        raise ValueError("importance scores need at least one batch of data")
    return np.asarray(heads) / n, np.asarray(ffn) / n


def choose(imp, keep: int, what: str = "heads"):
    """[L, keep] indices (ascending) of the `keep` most important units of each layer."""
    imp = np.asarray(imp)
    if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or keep < 1:
        raise ValueError(f"{what} to keep per layer must be an integer >= 1, got {keep!r}")
    if keep > imp.shape[1]:
        raise ValueError(f"cannot keep {keep} {what} per layer: the model has {imp.shape[1]}")
    order = np.argsort(-imp, axis=1, kind="stable")[:, :keep]
    return np.sort(order, axis=1)


def check_even(keep_per_layer) -> int:
    """One size for every layer, or one clear line: flaxdistil's stacked layers need it."""
    sizes = sorted({int(k) for k in keep_per_layer})
    if len(sizes) != 1:
        raise ValueError(
            f"uneven sizes per layer {list(keep_per_layer)}: flaxdistil stacks its layers on one "
            "axis (nn.scan), so every layer must keep the same number of heads / FFN neurons"
        )
    return sizes[0]


def _take(x, idx_LxN, axis: int, group: int = 1):
    """Gather along `axis` of a stacked [L, ...] array the units idx (each `group` wide)."""
    L = x.shape[0]
    shape = list(x.shape)
    shape[axis : axis + 1] = [shape[axis] // group, group]
    y = np.asarray(x).reshape(shape)
    idx = np.asarray(idx_LxN).reshape([L] + [1] * (axis - 1) + [-1] + [1] * (y.ndim - axis - 1))
    out = np.take_along_axis(y, idx, axis)
    shape = list(out.shape)
    shape[axis : axis + 2] = [shape[axis] * group]
    return out.reshape(shape)


def prune_heads_ffn(params, cfg: ModelConfig, keep_heads=None, keep_ffn=None):
    """(params, config) with only the kept heads ([L, H'] indices) and FFN neurons ([L, I'])."""
    _check_family(cfg)
    lay = jax.tree.map(np.asarray, params["encoder"]["layer"])
    att = {k: dict(v) for k, v in lay["attention"].items()}
    new_cfg = cfg
    if keep_heads is not None:
        keep_heads = np.asarray(keep_heads)
        K = cfg.head_dim
        for name in ("query", "key", "value"):
            att[name]["kernel"] = _take(att[name]["kernel"], keep_heads, 2, K)
            att[name]["bias"] = _take(att[name]["bias"], keep_heads, 1, K)
        att["out"]["kernel"] = _take(att["out"]["kernel"], keep_heads, 1, K)
        new_cfg = new_cfg.replace(num_attention_heads=keep_heads.shape[1], attention_head_size=K)
    lay = {**lay, "attention": att}
    if keep_ffn is not None:
        keep_ffn = np.asarray(keep_ffn)
        lay["fc1"] = {
            "kernel": _take(lay["fc1"]["kernel"], keep_ffn, 2),
            "bias": _take(lay["fc1"]["bias"], keep_ffn, 1),
        }
        lay["fc2"] = {**lay["fc2"], "kernel": _take(lay["fc2"]["kernel"], keep_ffn, 1)}
        new_cfg = new_cfg.replace(intermediate_size=keep_ffn.shape[1])
    enc = {**params["encoder"], "layer": lay}
    return {**params, "encoder": enc}, new_cfg


def check_iterations(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


def schedule(n_layers: int, size: int, keep: int, iterations: int) -> list[int]:
    """Units per layer after each iteration, as TextPruner's iterative_pruning counts them: the
    total still to remove is split evenly over the iterations (the remainder one more each in
    the first ones), and the even per-layer size is the running total // n_layers."""
    check_iterations(iterations)
    go = n_layers * (size - keep)
    per, extra = divmod(go, iterations)
    total, sizes = n_layers * size, []
    for i in range(iterations):
        total -= per + (1 if i < extra else 0)
        sizes.append(total // n_layers)
    return sizes


def iterative_prune(
    cfg: ModelConfig, head: str, params, batches, *, heads_keep=None, ffn_keep=None,
    iterations: int = 1, use_logits: bool = False,
):  # fmt: skip
    """TextPruner's iterative structured pruning (pruning_order None): each iteration ranks the
    heads and FFN neurons on the model pruned so far and removes its share (``schedule``), so a
    unit's importance is measured without the units already gone. Returns (params, config, kept
    head indices [L, heads_keep], kept FFN indices [L, ffn_keep]), indices into the original
    layers (None for what is not pruned)."""
    L = cfg.num_hidden_layers
    h_sizes = schedule(L, cfg.num_attention_heads, heads_keep, iterations) if heads_keep else None
    f_sizes = schedule(L, cfg.intermediate_size, ffn_keep, iterations) if ffn_keep else None
    kept_h = np.tile(np.arange(cfg.num_attention_heads), (L, 1))
    kept_f = np.tile(np.arange(cfg.intermediate_size), (L, 1))
    for i in range(iterations):
        h_imp, f_imp = importance(cfg, head, params, batches, use_logits=use_logits)
        sel_h = choose(h_imp, h_sizes[i]) if h_sizes else None
        sel_f = choose(f_imp, f_sizes[i], "FFN neurons") if f_sizes else None
        params, cfg = prune_heads_ffn(params, cfg, sel_h, sel_f)
        if sel_h is not None:
            kept_h = np.take_along_axis(kept_h, sel_h, 1)
        if sel_f is not None:
            kept_f = np.take_along_axis(kept_f, sel_f, 1)
    return params, cfg, kept_h if heads_keep else None, kept_f if ffn_keep else None


def full_heads(params, cfg: ModelConfig):
    """A head-pruned model as one with hidden_size / head_dim heads, the missing ones zero: the
    form transformers 5 loads (it has no pruned_heads). Outputs are unchanged: a zero head's
    values are zero and so is its share of the output projection."""
    if cfg.all_head_size == cfg.hidden_size:
        return params, cfg
    pad = cfg.hidden_size - cfg.all_head_size
    full = cfg.hf_view
    lay = jax.tree.map(np.asarray, params["encoder"]["layer"])
    att = {k: dict(v) for k, v in lay["attention"].items()}
    widen = lambda x, axis: np.concatenate(
        [x, np.zeros(x.shape[:axis] + (pad,) + x.shape[axis + 1 :], x.dtype)], axis
    )
    for name in ("query", "key", "value"):
        att[name] = {"kernel": widen(att[name]["kernel"], 2), "bias": widen(att[name]["bias"], 1)}
    att["out"] = {**att["out"], "kernel": widen(att["out"]["kernel"], 1)}
    enc = {**params["encoder"], "layer": {**lay, "attention": att}}
    return {**params, "encoder": enc}, full
