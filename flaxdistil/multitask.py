"""Multi-task distillation in the one engine: TextBrewer's MultiTaskDistiller, for flaxdistil.

One student encoder with one head per task. Each step draws one task, task d with probability
|d|^tau / sum_d' |d'|^tau where |d| is its number of training batches per epoch (TextBrewer's
``sampling_weights`` over ``len(dataloader)``; tau = 1: every batch once per epoch on average,
tau = 0: tasks uniformly), and runs ``train.train_step`` on a batch of that task with that task's
teachers, objective and head: the encoder and the task's head train, the other heads neither
move nor age their AdamW moments (PyTorch's AdamW skips a parameter whose grad is None, as
TextBrewer's heads of the tasks not drawn are); the learning rate follows the global step.

The student's params tree is ``{'encoder': shared, 'heads': {task: head}}``; a task's own params
(what ``Model(config, head)`` applies) are the shared encoder merged with its head
(``task_params``); a pooler, which HF builds for BERT's sequence classifiers only, belongs to the
head. ``TaskBatches`` has Batches' interface (state_dict / load_state_dict: exact resume) and
tags each batch with its task (``task_id``, one per row); ``TaskSteps`` runs the task's compiled
step and names its loss terms ``<task>/<term>`` beside the unprefixed ones.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxdistil import train

TASK_ID = "task_id"


def sampling_weights(sizes, tau: float) -> np.ndarray:
    """TextBrewer's rule: task d's probability |d|^tau / sum |d'|^tau (float64)."""
    sizes = np.asarray(sizes, np.float64)
    z = np.power(sizes, tau)
    return z / z.sum()


# ---------------------------------------------------------------- params


def split_params(params: dict) -> tuple[dict, dict]:
    """(shared encoder, head) of one task's student params: the head is everything outside the
    encoder, plus the encoder's pooler (built for some heads only)."""
    enc = params["encoder"]
    shared = {k: v for k, v in enc.items() if k != "pooler"}
    head = {k: v for k, v in params.items() if k != "encoder"}
    if "pooler" in enc:
        head["encoder"] = {"pooler": enc["pooler"]}
    return shared, head


def combine(shared: dict, heads: dict) -> dict:
    """The multi-task params tree from the shared encoder and {task: head}."""
    return {"encoder": shared, "heads": dict(heads)}


def task_params(params: dict, name: str) -> dict:
    """Task ``name``'s student params (what its Model applies) out of the multi-task tree."""
    head = params["heads"][name]
    enc = {**params["encoder"], **head.get("encoder", {})}
    return {"encoder": enc, **{k: v for k, v in head.items() if k != "encoder"}}


@dataclasses.dataclass(frozen=True)
class TaskModel:
    """A task's Model applied to the multi-task params tree: what train_step calls ``student``
    (it only calls ``apply``); the gradients reach the shared encoder and this task's head."""

    model: object  # models.Model
    name: str

    def apply(self, variables, *args, **kwargs):
        return self.model.apply({"params": task_params(variables["params"], self.name)}, *args,
                                **kwargs)  # fmt: skip


# ---------------------------------------------------------------- optimizer


def held(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner``'s state, unchanged, and zero updates: a head whose task was not drawn."""

    def update(updates, state, params=None):
        return jax.tree.map(jnp.zeros_like, updates), state

    return optax.GradientTransformation(inner.init, update)


def make_optimizer(
    names,
    active: str,
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
    """train.make_optimizer's AdamW (warmup + linear decay, decay on kernels and embeddings,
    global-norm clipping) for the steps of task ``active``: the encoder and each head keep their
    own Adam moments and bias-correction count, the heads of ``names`` other than ``active`` are
    held; the learning rate is scaled last, by the global step. Every task's optimizer has the
    same state structure, so one state serves them all."""

    def adam():  # optax.adamw without its learning rate (applied once, below, by global step)
        return optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(weight_decay, mask=train.decay_mask),
        )

    transforms = {"shared": adam()}
    transforms.update({f"head:{n}": adam() if n == active else held(adam()) for n in names})

    def label(tree):
        def params_label(path, _):
            top = str(getattr(path[0], "key", path[0]))
            return f"head:{getattr(path[1], 'key', path[1])}" if top == "heads" else "shared"

        return {
            "params": jax.tree_util.tree_map_with_path(params_label, tree["params"]),
            "proj": jax.tree.map(lambda _: "shared", tree["proj"]),
        }

    sched = train.lr_schedule(learning_rate, total_steps, warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm) if max_grad_norm else optax.identity(),
        optax.multi_transform(transforms, label),
        optax.scale_by_learning_rate(sched),
    )


# ---------------------------------------------------------------- data and steps


class TaskBatches:
    """Batches of several tasks (``{name: Batches}``), one task per step: each epoch of
    ``len(self)`` = the tasks' batches summed (TextBrewer's total_size) draws its task sequence
    from (seed, epoch) with ``sampling_weights``; each task's Batches keeps its own position."""

    def __init__(self, parts: dict, tau: float, seed: int = 0):
        self.names, self.parts = list(parts), list(parts.values())
        sizes = {b.batch_size for b in self.parts}
        if len(sizes) != 1:
            raise ValueError(f"the tasks' batch sizes differ: {sorted(sizes)}")
        self.batch_size = sizes.pop()
        self.sizes = [len(b) for b in self.parts]
        self.weights = sampling_weights(self.sizes, tau)
        self.seed, self.epoch, self.index = seed, 0, 0
        self._plan_epoch, self._plan = None, None

    def __len__(self) -> int:
        return sum(self.sizes)

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """The task index of every step of ``epoch`` (a function of seed and epoch only)."""
        if self._plan_epoch != epoch:
            self._plan, self._plan_epoch = self._draw(epoch), epoch
        return self._plan

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, len(self.names)])
        return rng.choice(len(self.names), size=len(self), p=self.weights)

    def task_counts(self, steps: int) -> dict[str, int]:
        """How many of the first ``steps`` steps each task gets."""
        counts, n = np.zeros(len(self.names), np.int64), len(self)
        for epoch in range(-(-steps // n)):
            plan = self._draw(epoch)[: steps - epoch * n]
            counts += np.bincount(plan, minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts)}

    def select_rows(self, start: int, stop: int) -> None:
        for b in self.parts:
            b.select_rows(start, stop)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        k = int(self.epoch_plan(self.epoch)[self.index])
        batch = next(self.parts[k])
        batch[TASK_ID] = np.full(len(batch["input_ids"]), k, np.int32)
        self.index += 1
        return batch

    @property
    def epoch_done(self) -> bool:
        return self.index >= len(self)

    def state_dict(self) -> dict:
        return {
            "epoch": int(self.epoch),
            "index": int(self.index),
            "seed": int(self.seed),
            "tasks": {n: b.state_dict() for n, b in zip(self.names, self.parts)},
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            self.seed, self._plan_epoch = int(state["seed"]), None
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        missing = sorted(set(self.names) - set(state["tasks"]))
        if missing:
            raise ValueError(f"the checkpoint's data position has no task {missing[0]!r}")
        for n, b in zip(self.names, self.parts):
            b.load_state_dict(state["tasks"][n])


class TaskSteps:
    """What the Loop calls as its step: reads the batch's task, runs that task's compiled step
    with its teachers' params and hparams (``teacher_params`` / ``hparams``: one per task), and
    adds the loss terms again as ``<task>/<term>`` (a column per task in train.csv and
    TensorBoard)."""

    def __init__(self, names, steps):
        self.names, self.steps = list(names), list(steps)

    def __call__(self, state, teacher_params, batch, rng, hparams, token_weights=None):
        ids = batch.pop(TASK_ID)
        k = int(np.asarray(ids.addressable_shards[0].data)[0])  # an input: ready, no wait
        state, metrics = self.steps[k](state, teacher_params[k], batch, rng, hparams[k],
                                       token_weights)  # fmt: skip
        name = self.names[k]
        out = dict(metrics)
        out.update({f"{name}/{t}": v for t, v in metrics.items() if t.startswith("loss")})
        return state, out
