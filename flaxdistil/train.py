"""Train state, optimizer and the one pure step every job runs (jitted once by the caller).

``train_step(state, teacher_params, batch, rng, hparams, token_weights) -> (state, metrics)``:
the teacher is an argument (never closed over, never donated, never saved) and runs under
stop_gradient. Several teachers: ``teacher`` and ``teacher_params`` are tuples, one entry per
teacher, and each runs once per step; no teacher model while the loss needs one: the teachers'
outputs come in the batch (flaxdistil.teacher_cache). A teacher with its own tokenizer runs on its
own ``teacher<k>/input_ids`` / ``attention_mask`` / ``token_type_ids`` of the batch (for token
classification its logits are then gathered at the student's words: ``teacher<k>/align``,
flaxdistil.teachers). For general distillation the MLM masking
happens inside the step, so it is new at every step and reproducible from (rng, step). The loss
is ``objective.compose``: hard labels, KD on logits, intermediate matches through trainable
projections (``state.proj``). Without a teacher the step is plain fine-tuning / MLM training.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from flaxdistil import objective as objectives
from flaxdistil import prune, quantize
from flaxdistil.models import Model
from flaxdistil.objective import IGNORE_INDEX, Objective


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # the student's
    proj: Any  # intermediate-match projections {'m<i>': {'kernel', 'bias'}}: trained, saved
    opt_state: Any


# ---------------------------------------------------------------- optimizer


def decay_mask(params):
    """AdamW weight decay on kernels and embeddings only: not on biases or LayerNorm scales."""

    def keep(path, x):
        leaf = str(getattr(path[-1], "key", path[-1]))
        return leaf in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(keep, params)


def lr_schedule(learning_rate: float, total_steps: int, warmup_steps: int):
    """Linear warmup then linear decay to 0."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
            optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1)),
        ],
        [warmup_steps],
    )


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    accumulate: int = 1,
    trainable=None,
    proj_lrs: dict | None = None,
    prune_sparsity: float = 0.0,
    prune_rounds: int = 1,
    prune_scope: str = "global",
) -> optax.GradientTransformation:
    """AdamW with linear warmup then linear decay to 0, global-norm clipping, decay on kernels and
    embeddings only, optional gradient accumulation over ``accumulate`` micro-batches, and an
    optional ``trainable(path) -> bool`` that freezes the rest of the student.

    Updates a ``{'params': student, 'proj': projections}`` tree; ``proj_lrs`` maps a projection
    key to its own learning rate (TextBrewer's per-projection learning rate). ``prune_sparsity``
    > 0 wraps it all in prune.pruning: iterative magnitude pruning of the student's encoder
    kernels in ``prune_rounds`` rounds over the run, the masks kept in the optimizer state."""
    proj_lrs = proj_lrs or {}

    def adamw(lr):
        sched = lr_schedule(lr, total_steps, warmup_steps)
        return optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)

    transforms = {"train": adamw(learning_rate), "freeze": optax.set_to_zero()}
    transforms.update({f"proj:{k}": adamw(lr) for k, lr in proj_lrs.items()})

    def label(tree):
        def params_label(path, _):
            return "train" if trainable is None or trainable(_path_str(path)) else "freeze"

        def proj_label(path, _):
            key = str(getattr(path[0], "key", path[0]))
            return f"proj:{key}" if key in proj_lrs else "train"

        return {
            "params": jax.tree_util.tree_map_with_path(params_label, tree["params"]),
            "proj": jax.tree_util.tree_map_with_path(proj_label, tree["proj"]),
        }

    tx = optax.chain(
        optax.clip_by_global_norm(max_grad_norm) if max_grad_norm else optax.identity(),
        optax.multi_transform(transforms, label),
    )
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    if prune_sparsity:
        # Outermost, so its count is the train step (micro-steps under accumulation).
        include = lambda tree: {
            "params": prune.eligible(tree["params"]),
            "proj": jax.tree.map(lambda _: False, tree["proj"]),
        }
        tx = prune.pruning(tx, sparsity=prune_sparsity, rounds=prune_rounds,
                           total_steps=total_steps * accumulate, scope=prune_scope,
                           include_fn=include)  # fmt: skip
    return tx


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def create_state(params, tx, proj=None) -> TrainState:
    proj = {} if proj is None else proj
    opt_state = tx.init({"params": params, "proj": proj})
    return TrainState(jnp.zeros((), jnp.int32), params, proj, opt_state)


def _frozen(params, trainable):
    """stop_gradient on frozen subtrees, so the backward pass skips them entirely."""
    if trainable is None:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x if trainable(_path_str(p)) else jax.lax.stop_gradient(x), params
    )


# ---------------------------------------------------------------- the step


def _inputs(batch: dict):
    return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")


def train_step(
    state: TrainState,
    teacher_params,
    batch: dict,
    rng: jax.Array,
    hparams: dict,
    token_weights=None,
    *,
    obj: Objective,
    student: Model,
    teacher: Model | tuple | None,
    tx,
    trainable=None,
    qat=None,
):
    """qat: a quantize.Scheme (train.qat_bits) whose fake quantisation the student's forward
    sees, with straight-through gradients; the params and their updates stay float."""
    rng = jax.random.fold_in(rng, state.step)
    mask_rng, dropout_rng = jax.random.split(rng)
    ids, mask, types = _inputs(batch)
    labels, positions, extra = batch.get("labels"), None, {}
    if obj.task == "mlm":
        ids, labels = objectives.corrupt(obj, mask_rng, batch, token_weights)
        extra["masked_tokens"] = (labels != IGNORE_INDEX).sum()
        if obj.gather_masked:
            positions, labels, n_masked = objectives.masked_rows(labels, obj.mlm_probability)
            extra["masked_dropped"] = n_masked - (labels != IGNORE_INDEX).sum()
    head_kw = {"masked_positions": positions} if obj.task == "mlm" else {}
    targets = None
    if obj.needs_teacher:
        targets = _teacher_targets(obj, teacher, teacher_params, batch, (ids, mask, types), head_kw)

    def loss_fn(trained):
        params = _frozen(trained["params"], trainable)
        if qat is not None:
            params = quantize.fake_quantize_params(params, qat)
        s_out = student.apply(
            {"params": params},
            ids,
            mask,
            types,
            train=True,
            rngs={"dropout": dropout_rng},
            **head_kw,
            **obj.outputs,
        )
        total, terms = objectives.compose(
            obj, s_out, targets, batch, labels, trained["proj"], hparams, state.step
        )
        if obj.task == "mlm":
            terms["mlm_accuracy"] = mlm_accuracy(s_out[0], labels)
        return total, terms

    trained = {"params": state.params, "proj": state.proj}
    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    new = optax.apply_updates(trained, updates)
    metrics = {
        **terms,
        **extra,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new["params"]),
        "tokens": mask.sum(),
    }
    return TrainState(state.step + 1, new["params"], new["proj"], opt_state), metrics


def as_teachers(teacher, teacher_params) -> tuple[tuple, tuple]:
    """(models, params) as tuples: one Model and its params tree is the one-teacher case."""
    if teacher is None:
        return (), ()
    if isinstance(teacher, Model):
        return (teacher,), (teacher_params,)
    return tuple(teacher), tuple(teacher_params)


def _teacher_targets(obj, teacher, teacher_params, batch, inputs, head_kw) -> list[dict]:
    """Each teacher's targets (objective.target_specs), in float32 under stop_gradient: every
    teacher runs once on the batch, or the cached outputs are read from the batch."""
    models, params = as_teachers(teacher, teacher_params)
    if not models:
        targets = objectives.batch_targets(obj, batch)
    else:
        if len(models) != obj.n_teachers:
            raise ValueError(f"{len(models)} teacher models for {obj.n_teachers} teacher weights")
        targets = [
            objectives.teacher_targets(
                obj,
                k,
                m.apply(
                    {"params": p},
                    *_teacher_inputs(batch, k, inputs),
                    **head_kw,
                    **obj.teacher_outputs(k),
                ),
            )
            for k, (m, p) in enumerate(zip(models, params))
        ]
    targets = [_word_aligned(batch, k, t) for k, t in enumerate(targets)]
    return jax.lax.stop_gradient(jax.tree.map(lambda x: x.astype(jnp.float32), targets))


def _teacher_inputs(batch: dict, k: int, inputs):
    """Teacher k's own (ids, mask, types) when it has its own tokenizer, else the student's."""
    key = lambda name: objectives.batch_key(k, name)
    if key("input_ids") not in batch:
        return inputs
    return batch[key("input_ids")], batch[key("attention_mask")], batch.get(key("token_type_ids"))


def _word_aligned(batch: dict, k: int, targets: dict) -> dict:
    """Token classification with teacher k's own tokenizer: its logits gathered at the teacher
    position of each student position's word (``batching.word_alignment``), so they line up
    with the student's; the KD reads them at ``batch['kd_mask']`` only."""
    align = batch.get(objectives.batch_key(k, "align"))
    if align is None or "logits" not in targets:
        return targets
    logits = jnp.take_along_axis(targets["logits"], align[..., None], axis=1)
    return {**targets, "logits": logits}


def mlm_accuracy(logits, labels):
    """Share of selected tokens whose label is argmax(logits), the first maximum on ties, found
    with a max and a sum: XLA:CPU's argmax over a vocabulary (a variadic reduce) is ~15x slower."""
    sel = labels != IGNORE_INDEX
    label = jnp.where(sel, labels, 0)[..., None]
    top = logits.max(-1, keepdims=True)
    is_top = logits == top
    earlier_top = jnp.sum(is_top & (jnp.arange(logits.shape[-1]) < label), -1, jnp.float32)
    hit = sel & (jnp.take_along_axis(logits, label, -1)[..., 0] == top[..., 0]) & (earlier_top == 0)
    return hit.sum() / jnp.maximum(sel.sum(), 1)


def jit_train_step(
    obj: Objective,
    student: Model,
    teacher: Model | tuple | None,
    tx,
    mesh,
    state_sharding,
    teacher_sharding,
    trainable=None,
    compiler_options=None,
    qat=None,
):
    """Compile the step once: batch split over 'data', state donated, teacher not (one Model and
    its params' sharding, or tuples of them: one per teacher; none when the outputs are cached).
    compiler_options go to jax.jit (XLA debug options, e.g. xla_cpu.EIGEN_DOTS); qat: see
    train_step."""
    from flaxdistil import sharding as shd

    fn = functools.partial(
        train_step, obj=obj, student=student, teacher=teacher, tx=tx, trainable=trainable, qat=qat
    )
    rep = shd.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, teacher_sharding, shd.batch_sharding(mesh), rep, rep, rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )


def mlm_eval_step(params, batch: dict, rng: jax.Array, *, model: Model, obj: Objective):
    """Summed MLM loss / hits / count on a batch with fixed masking (rng given per batch)."""
    ids, labels = objectives.corrupt(obj, rng, batch)
    # The vocabulary projection only at masked tokens: the eval cost of the head drops ~7x.
    positions, labels, _ = objectives.masked_rows(labels, obj.mlm_probability)
    logits, _ = model.apply(
        {"params": params}, ids, batch["attention_mask"], masked_positions=positions
    )
    sel = labels != IGNORE_INDEX
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(logp, jnp.where(sel, labels, 0)[..., None], -1)[..., 0]
    return {
        "nll_sum": jnp.where(sel, nll, 0).sum(),
        "hits": ((jnp.argmax(logits, -1) == labels) & sel).sum(),
        "count": sel.sum(),
    }
