"""Train state, optimizer and the pure step functions (jitted once by the caller).

``distill_step(state, teacher_params, batch, rng, token_weights) -> (state, metrics)``: the
teacher is an argument (never closed over, never donated, never saved) and runs under
stop_gradient; masking happens inside the step so it is new at every step and reproducible from
(rng, step). With every teacher weight at zero the step is plain MLM training (the no-teacher
baseline, or fitting a head on a frozen encoder).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from flaxdistil import losses
from flaxdistil.data.masking import mask_tokens
from flaxdistil.models import Model


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Static settings of the step (hashable: part of the compiled function's identity)."""

    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_mse: float = 0.0
    restrict_ce_to_mask: bool = False
    # Run both MLM heads on the masked tokens only (a fixed number, masked_capacity) instead of
    # all B*T: needs restrict_ce_to_mask, since the KL then sees only those rows.
    gather_masked: bool = False
    mlm_probability: float = 0.15
    mask_token_id: int = 103
    vocab_size: int = 30522
    special_ids: tuple[int, ...] = (0, 100, 101, 102, 103)

    def __post_init__(self):
        if self.gather_masked and not self.restrict_ce_to_mask:
            raise ValueError(
                "gather_masked=True computes logits at masked tokens only, so the KL cannot cover "
                "every non-pad token: set restrict_ce_to_mask=True as well"
            )

    @property
    def needs_teacher(self) -> bool:
        return any(a > 0 for a in (self.alpha_ce, self.alpha_cos, self.alpha_mse))


# ---------------------------------------------------------------- optimizer


def decay_mask(params):
    """AdamW weight decay on kernels and embeddings only: not on biases or LayerNorm scales."""

    def keep(path, x):
        leaf = str(getattr(path[-1], "key", path[-1]))
        return leaf in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(keep, params)


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
) -> optax.GradientTransformation:
    """AdamW with linear warmup then linear decay to 0, global-norm clipping, decay on kernels and
    embeddings only, optional gradient accumulation over ``accumulate`` micro-batches, and an
    optional ``trainable(path) -> bool`` that freezes the rest."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
            optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1)),
        ],
        [warmup_steps],
    )
    tx = optax.chain(
        optax.clip_by_global_norm(max_grad_norm) if max_grad_norm else optax.identity(),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )
    if trainable is not None:
        labels = lambda p: jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(_path_str(path)) else "freeze", p
        )
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    return tx


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def create_state(params, tx) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


# ---------------------------------------------------------------- steps


def _frozen(params, trainable):
    """stop_gradient on frozen subtrees, so the backward pass skips them entirely."""
    if trainable is None:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x if trainable(_path_str(p)) else jax.lax.stop_gradient(x), params
    )


def masked_capacity(n_tokens: int, mlm_probability: float) -> int:
    """Static row count of the gathered MLM head for a batch of ``n_tokens`` tokens.

    The expected number of masked tokens plus 6 standard deviations, rounded up to a multiple of 8:
    Bernoulli masking exceeds it with probability < 1e-9 (the excess would be dropped and counted
    in the 'masked_dropped' metric); weighted masking selects exactly round(p * n) <= this.
    """
    p = mlm_probability
    cap = p * n_tokens + 6 * math.sqrt(n_tokens * p * (1 - p)) + 1
    return min(n_tokens, 8 * math.ceil(cap / 8))


def masked_rows(labels_BxT, mlm_probability: float):
    """(flat positions [N], their labels [N] with -100 in unused slots, masked count)."""
    flat = labels_BxT.reshape(-1)
    selected = flat != losses.IGNORE_INDEX
    n = masked_capacity(flat.size, mlm_probability)
    (positions,) = jnp.nonzero(selected, size=n, fill_value=0)
    count = selected.sum()
    head_labels = jnp.where(jnp.arange(n) < count, flat[positions], losses.IGNORE_INDEX)
    return positions, head_labels, count


def corrupt(spec: DistillSpec, rng, batch: dict, token_weights=None):
    """The step's dynamic MLM masking with the spec's token ids: (masked ids, labels)."""
    return mask_tokens(
        rng,
        batch["input_ids"],
        batch["attention_mask"],
        special_ids=spec.special_ids,
        mask_token_id=spec.mask_token_id,
        vocab_size=spec.vocab_size,
        mlm_probability=spec.mlm_probability,
        token_weights=token_weights,
    )


def distill_step(
    state: TrainState,
    teacher_params,
    batch: dict,
    rng: jax.Array,
    token_weights,
    *,
    student: Model,
    teacher: Model | None,
    spec: DistillSpec,
    tx,
    trainable=None,
):
    rng = jax.random.fold_in(rng, state.step)
    mask_rng, dropout_rng = jax.random.split(rng)
    ids, labels = corrupt(spec, mask_rng, batch, token_weights)
    mask = batch["attention_mask"]
    want_hidden = spec.alpha_cos > 0
    positions, head_labels = None, labels
    if spec.gather_masked:
        positions, head_labels, n_masked = masked_rows(labels, spec.mlm_probability)
    t_out = {}
    if spec.needs_teacher:
        t_logits, t_aux = teacher.apply(
            {"params": teacher_params}, ids, mask, masked_positions=positions
        )
        t_out = jax.lax.stop_gradient(
            {"logits": t_logits.astype(jnp.float32), "hidden": t_aux["last_hidden_state"]}
        )

    def loss_fn(params):
        logits, aux = student.apply(
            {"params": _frozen(params, trainable)},
            ids,
            mask,
            train=True,
            rngs={"dropout": dropout_rng},
            masked_positions=positions,
        )
        s_out = {"logits": logits, "hidden": aux["last_hidden_state"] if want_hidden else None}
        total, terms = losses.distil_loss(
            s_out,
            t_out or {"logits": logits, "hidden": None},
            {"attention_mask": mask, "labels": head_labels},
            temperature=spec.temperature,
            alpha_ce=spec.alpha_ce,
            alpha_mlm=spec.alpha_mlm,
            alpha_cos=spec.alpha_cos,
            alpha_mse=spec.alpha_mse,
            restrict_ce_to_mask=spec.restrict_ce_to_mask,
        )
        return total, (terms, _mlm_accuracy(logits, head_labels))

    (_, (terms, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **terms,
        "mlm_accuracy": acc,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "masked_tokens": (labels != losses.IGNORE_INDEX).sum(),
        "tokens": mask.sum(),
    }
    if spec.gather_masked:
        metrics["masked_dropped"] = n_masked - (head_labels != losses.IGNORE_INDEX).sum()
    return TrainState(state.step + 1, params, opt_state), metrics


def _mlm_accuracy(logits, labels):
    """Share of selected tokens whose label is argmax(logits), the first maximum on ties, found
    with a max and a sum: XLA:CPU's argmax over a vocabulary (a variadic reduce) is ~15x slower."""
    sel = labels != losses.IGNORE_INDEX
    label = jnp.where(sel, labels, 0)[..., None]
    top = logits.max(-1, keepdims=True)
    is_top = logits == top
    earlier_top = jnp.sum(is_top & (jnp.arange(logits.shape[-1]) < label), -1, jnp.float32)
    hit = sel & (jnp.take_along_axis(logits, label, -1)[..., 0] == top[..., 0]) & (earlier_top == 0)
    return hit.sum() / jnp.maximum(sel.sum(), 1)


def mlm_eval_step(params, batch: dict, rng: jax.Array, *, model: Model, spec: DistillSpec):
    """Summed MLM loss / hits / count on a batch with fixed masking (rng given per batch)."""
    ids, labels = corrupt(spec, rng, batch)
    # The vocabulary projection only at masked tokens: the eval cost of the head drops ~7x.
    positions, labels, _ = masked_rows(labels, spec.mlm_probability)
    logits, _ = model.apply(
        {"params": params}, ids, batch["attention_mask"], masked_positions=positions
    )
    sel = labels != losses.IGNORE_INDEX
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(logp, jnp.where(sel, labels, 0)[..., None], -1)[..., 0]
    return {
        "nll_sum": jnp.where(sel, nll, 0).sum(),
        "hits": ((jnp.argmax(logits, -1) == labels) & sel).sum(),
        "count": sel.sum(),
    }


def jit_distill_step(
    student,
    teacher,
    spec,
    tx,
    mesh,
    state_sharding,
    teacher_sharding,
    trainable=None,
    compiler_options=None,
):
    """Compile the step once: batch split over 'data', state donated, teacher not.
    compiler_options go to jax.jit (XLA debug options, e.g. xla_cpu.EIGEN_DOTS)."""
    from flaxdistil import sharding as shd

    fn = functools.partial(
        distill_step, student=student, teacher=teacher, spec=spec, tx=tx, trainable=trainable
    )
    rep = shd.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, teacher_sharding, shd.batch_sharding(mesh), rep, rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )
