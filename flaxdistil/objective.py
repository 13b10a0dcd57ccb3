"""The loss of a training step, composed from the config in TextBrewer's vocabulary.

    total = hard_label_weight * s_h(x) * L_hard
          + kd_loss_weight * s_kd(x) * KD_LOSS_MAP[kd_loss_type](logits_S, logits_T, T)
          + sum_i weight_i * MATCH_LOSS_MAP[loss_i](proj_i(feature_S[layer_S_i]), feature_T[..])

x = step / total steps is the progress the weight schedulers (schedules.WEIGHT_SCHEDULER) read;
T comes from the temperature scheduler, one per KD row. The hard loss is the task's (what the HF
*For* heads compute) or, for general distillation (task 'mlm'), the masked-LM cross-entropy.
Weights and temperature are traced values (``hparams``): they change without recompiling and are
logged at every step. ``Objective`` is static: which terms exist and what features they read.

Feature indices follow TextBrewer's example match sets: 'hidden' 0 is the embedding output and l
the output of layer l; 'attention', 'query', 'key', 'value' l is layer l (1-based); negative
indices count from the end (-1 = last). Attention features are pre-softmax scores [B,H,T,T].

Several teachers (TextBrewer's MultiTeacherDistiller): the KD target is the weighted mean of the
teachers' logits (TextBrewer's rule, which is the plain mean: equal weights), or with
``teacher_average='probs'`` the weighted mean of their probabilities at temperature T; each
match reads one teacher (``Match.teacher``). What the loss reads of teacher k is a dict of
*targets* (``target_specs``: 'logits', 'hidden4', 'attention2', ...), from the live teacher
(``teacher_targets``) or from the teacher cache in the batch (``batch_targets``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from flaxdistil import losses, schedules
from flaxdistil.data.masking import mask_tokens

IGNORE_INDEX = losses.IGNORE_INDEX
TASKS = ("mlm", "classification", "regression", "multilabel", "token_classification", "qa")
FEATURES = ("hidden", "attention", "query", "key", "value")
MATCH_KEYS = ("layer_T", "layer_S", "feature", "loss", "weight", "proj")
LOSS_KWARGS = ("num_relation_heads",)  # extra match keys passed to the loss
TEACHER_AVERAGES = ("logits", "probs")
PROJECTIONS = {"linear": lambda y: y, "relu": jax.nn.relu, "tanh": jnp.tanh}  # TextBrewer PROJ_MAP
# Losses comparing features element-wise: student and teacher widths must agree (or a proj).
SAME_WIDTH = ("hidden_mse", "cos", "pkd", "fsp", "gram")
# Attention losses comparing head by head (the _sum / _mean ones reduce over heads first).
SAME_HEADS = ("attention_mse", "attention_ce", "minilm_attention")
_NEG = -1e4  # logit given to padding positions of QA start/end distributions (finite: no NaN)


@dataclasses.dataclass(frozen=True)
class Match:
    """One entry of distill.intermediate_matches, layer indices resolved to absolute ones."""

    layer_T: int | tuple[int, ...]
    layer_S: int | tuple[int, ...]
    feature: str
    loss: str
    weight: float = 1.0
    proj: tuple | None = None  # (kind, dim_S, dim_T)
    proj_lr: float | None = None  # its own learning rate (TextBrewer's 4th proj element)
    loss_kwargs: tuple = ()
    teacher: int = 0  # the teacher it reads (index into the teachers), layer_T counts in it

    def key(self, i: int, multi: bool = False) -> str:
        lay = lambda x: "-".join(map(str, x)) if isinstance(x, tuple) else str(x)
        who = f"_teacher{self.teacher}" if multi else ""
        return f"loss_m{i}_{self.loss}_s{lay(self.layer_S)}_t{lay(self.layer_T)}{who}"

    @property
    def layers_T(self) -> tuple[int, ...]:
        return self.layer_T if isinstance(self.layer_T, tuple) else (self.layer_T,)


@dataclasses.dataclass(frozen=True)
class Objective:
    """Static structure of the loss (hashable: part of the compiled step's identity)."""

    task: str = "mlm"
    use_hard: bool = True
    use_kd: bool = False
    kd_loss_type: str = "kl_t2"
    matches: tuple[Match, ...] = ()
    temperature_scheduler: tuple = ("constant",)
    hard_label_weight_scheduler: str = "constant"
    kd_loss_weight_scheduler: str = "constant"
    total_steps: int = 1
    # general distillation (task 'mlm') only
    mlm_probability: float = 0.15
    mask_token_id: int = 103
    vocab_size: int = 30522
    special_ids: tuple[int, ...] = (0, 100, 101, 102, 103)
    restrict_ce_to_mask: bool = False
    # Run both MLM heads on the masked tokens only (a fixed number, masked_capacity) instead of
    # all B*T: needs restrict_ce_to_mask, since the KD then sees only those rows.
    gather_masked: bool = False
    # One weight per teacher, normalised to sum 1: the KD target is their weighted mean of
    # logits ('logits', TextBrewer's rule) or of probabilities at temperature T ('probs').
    teacher_weights: tuple[float, ...] = (1.0,)
    teacher_average: str = "logits"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: expected one of {TASKS}")
        if self.gather_masked and not self.restrict_ce_to_mask:
            raise ValueError(
                "distill.gather_masked=True computes logits at masked tokens only, so the KD "
                "cannot cover every non-pad token: set distill.restrict_ce_to_mask=True as well"
            )
        if self.use_kd and self.kd_loss_type not in losses.KD_LOSS_MAP:
            raise ValueError(
                f"unknown distill.kd_loss_type {self.kd_loss_type!r}: expected one of "
                f"{sorted(losses.KD_LOSS_MAP)}"
            )
        if self.use_kd and self.task == "regression" and self.kd_loss_type != "mse":
            raise ValueError(
                f"regression has one output, so kd_loss_type {self.kd_loss_type!r} (a softmax) "
                "is constant: set distill.kd_loss_type='mse'"
            )
        self._check_teachers()

    def _check_teachers(self):
        w = tuple(float(x) for x in self.teacher_weights)
        if not w or any(not x > 0 for x in w):
            raise ValueError(f"teacher weights must be positive numbers, got {list(w)}")
        object.__setattr__(self, "teacher_weights", tuple(x / sum(w) for x in w))
        if self.teacher_average not in TEACHER_AVERAGES:
            raise ValueError(
                f"distill.teacher_average must be one of {TEACHER_AVERAGES}, "
                f"got {self.teacher_average!r}"
            )
        bad = [m.teacher for m in self.matches if not 0 <= m.teacher < self.n_teachers]
        if bad:
            raise ValueError(f"a match reads teacher {bad[0]} of {self.n_teachers} teachers")
        if self.teacher_average != "probs" or not self.use_kd:
            return
        if self.kd_loss_type not in ("ce", "kl_t2", "bce"):
            raise ValueError(
                f"distill.teacher_average='probs' averages distributions: it needs kd_loss_type "
                f"ce, kl_t2 or bce, got {self.kd_loss_type!r} (use teacher_average='logits')"
            )
        if self.temperature_scheduler[0] != "constant":
            raise ValueError(
                f"distill.teacher_average='probs' needs a constant temperature: "
                f"{self.temperature_scheduler[0]!r} reads the teacher's logits, and averaged "
                "probabilities have none (use teacher_average='logits')"
            )

    @property
    def n_teachers(self) -> int:
        return len(self.teacher_weights)

    @property
    def needs_teacher(self) -> bool:
        return self.use_kd or bool(self.matches)

    @property
    def outputs(self) -> dict:
        """The model.apply keywords that produce the features the matches read (the student's:
        every match)."""
        return _outputs({m.feature for m in self.matches})

    def teacher_outputs(self, k: int) -> dict:
        """The model.apply keywords teacher k runs with: the features of its own matches."""
        return _outputs({m.feature for m in self.matches if m.teacher == k})

    def match_key(self, i: int) -> str:
        return self.matches[i].key(i, multi=self.n_teachers > 1)


def _outputs(feats: set) -> dict:
    return {
        "output_hidden_states": "hidden" in feats,
        "output_attentions": "scores" if "attention" in feats else False,
        "output_qkv": bool(feats & {"query", "key", "value"}),
    }


# ---------------------------------------------------------------- teacher targets


def target_specs(obj: Objective, k: int) -> tuple[tuple[str, str, int | None], ...]:
    """(name, feature, layer) of everything the loss reads of teacher k: 'logits' when there is
    KD, then one feature per teacher layer its matches read ('hidden4', 'attention2', ...)."""
    out = [("logits", "logits", None)] if obj.use_kd else []
    for m in obj.matches:
        if m.teacher == k:
            out += [(f"{m.feature}{layer}", m.feature, layer) for layer in m.layers_T]
    return tuple(dict.fromkeys(out))


def teacher_targets(obj: Objective, k: int, t_out) -> dict:
    """{target name: array} of teacher k's (logits, aux) output, as ``target_specs`` lists."""
    logits, aux = t_out
    return {
        name: logits if feat == "logits" else feature(aux, feat, layer)
        for name, feat, layer in target_specs(obj, k)
    }


def batch_key(k: int, name: str) -> str:
    """Where a cached target of teacher k travels in the batch (flaxdistil.teacher_cache)."""
    return f"teacher{k}/{name}"


def batch_targets(obj: Objective, batch: dict) -> list[dict]:
    """Every teacher's targets read from the batch (the teacher cache put them there)."""
    out = []
    for k in range(obj.n_teachers):
        names = [name for name, _, _ in target_specs(obj, k)]
        missing = [batch_key(k, n) for n in names if batch_key(k, n) not in batch]
        if missing:
            raise ValueError(
                f"the loss needs teacher outputs: no teacher model was given and the batch has "
                f"no cached {missing[0]!r} (flaxdistil.teacher_cache)"
            )
        out.append({n: batch[batch_key(k, n)] for n in names})
    return out


# ---------------------------------------------------------------- MLM masking (general)


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
    selected = flat != IGNORE_INDEX
    n = masked_capacity(flat.size, mlm_probability)
    (positions,) = jnp.nonzero(selected, size=n, fill_value=0)
    count = selected.sum()
    head_labels = jnp.where(jnp.arange(n) < count, flat[positions], IGNORE_INDEX)
    return positions, head_labels, count


def corrupt(obj: Objective, rng, batch: dict, token_weights=None):
    """The step's dynamic MLM masking with the objective's token ids: (masked ids, labels)."""
    return mask_tokens(
        rng,
        batch["input_ids"],
        batch["attention_mask"],
        special_ids=obj.special_ids,
        mask_token_id=obj.mask_token_id,
        vocab_size=obj.vocab_size,
        mlm_probability=obj.mlm_probability,
        token_weights=token_weights,
    )


# ---------------------------------------------------------------- hard and KD losses


def _qa_logits(logits_BxTx2, mask_BxT):
    """(start, end) logits [B,T] with padding pushed to ~-inf, so it carries no probability."""
    keep = jnp.asarray(mask_BxT).astype(bool)
    x = jnp.asarray(logits_BxTx2, jnp.float32)
    return tuple(jnp.where(keep, x[..., i], _NEG) for i in (0, 1))


def hard_loss(logits, labels, task: str):
    """The loss Hugging Face's *For* heads compute on gold labels, per task type."""
    if task == "classification":
        return losses.cross_entropy(logits, labels)
    if task == "regression":  # MSELoss(logits.squeeze(), labels)
        return losses.mse(logits[:, 0], labels)
    if task == "multilabel":  # BCEWithLogitsLoss
        return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels).mean()
    if task in ("token_classification", "mlm"):  # CrossEntropyLoss(ignore_index=-100)
        return losses.mlm_cross_entropy(logits, labels)
    if task == "qa":  # (CE(start) + CE(end)) / 2 over all positions, as BertForQuestionAnswering
        x = jnp.asarray(logits, jnp.float32)
        ce = lambda i: losses.cross_entropy(x[..., i], labels[:, i])
        return (ce(0) + ce(1)) / 2
    raise ValueError(f"unknown task {task!r}: expected one of {TASKS}")


def kd_rows(obj: Objective, s_logits, t_logits, mask_BxT, labels):
    """[(student logits, teacher logits, row mask)]: the distributions KD compares, per task."""
    if obj.task == "mlm":
        if obj.gather_masked:  # [N, V] rows at masked tokens; unused slots have label -100
            return [(s_logits, t_logits, labels != IGNORE_INDEX)]
        rows = labels != IGNORE_INDEX if obj.restrict_ce_to_mask else mask_BxT
        return [(s_logits, t_logits, rows)]
    if obj.task == "token_classification":
        return [(s_logits, t_logits, mask_BxT)]
    if obj.task == "qa":
        s, t = _qa_logits(s_logits, mask_BxT), _qa_logits(t_logits, mask_BxT)
        return [(s[0], t[0], None), (s[1], t[1], None)]
    return [(s_logits, t_logits, None)]


def kd_loss(obj: Objective, s_logits, t_logits, mask_BxT, labels, base_temperature):
    """(mean KD over the task's distributions, mean temperature used). ``t_logits``: one array,
    or one per teacher (combined by ``obj.teacher_average`` with ``obj.teacher_weights``)."""
    spec = obj.temperature_scheduler
    sched = schedules.temperature_scheduler(spec[0] if len(spec) == 1 else list(spec))
    fn = losses.KD_LOSS_MAP[obj.kd_loss_type]
    per_teacher = [
        kd_rows(obj, s_logits, t, mask_BxT, labels)
        for t in (t_logits if isinstance(t_logits, list | tuple) else [t_logits])
    ]
    values, temps = [], []
    for j, (s, _, rows) in enumerate(per_teacher[0]):
        s = jnp.asarray(s, jnp.float32)
        ts = [jax.lax.stop_gradient(jnp.asarray(rs[j][1], jnp.float32)) for rs in per_teacher]
        if len(ts) > 1 and obj.teacher_average == "probs":
            temperature = jnp.asarray(base_temperature, jnp.float32)
            t = mean_probs_as_logits(ts, obj.teacher_weights, temperature, obj.kd_loss_type)
        else:
            t = ts[0] if len(ts) == 1 else sum(w * x for w, x in zip(obj.teacher_weights, ts))
            temperature = sched(s, t, base_temperature, mask=rows)
        values.append(fn(s, t, temperature, mask=rows))
        temps.append(_mean_over(temperature, rows))
    return sum(values) / len(values), sum(temps) / len(temps)


def mean_probs_as_logits(ts, weights, temperature, kd_loss_type: str):
    """Logits z whose distribution at temperature T is the weighted mean of the teachers' own:
    T * log(sum_k w_k softmax(t_k / T)), so softmax(z / T) is that mean and every softmax KD loss
    takes it unchanged; for 'bce' (per-label sigmoids) T * logit(sum_k w_k sigmoid(t_k / T))."""
    log_w = jnp.log(jnp.asarray(weights, jnp.float32)).reshape((-1,) + (1,) * ts[0].ndim)
    x = jnp.stack(ts) / temperature
    if kd_loss_type == "bce":
        log_p = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(x), axis=0)
        log_q = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(-x), axis=0)
        return temperature * (log_p - log_q)
    return temperature * jax.nn.logsumexp(log_w + jax.nn.log_softmax(x, axis=-1), axis=0)


def _mean_over(x, rows):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 0:
        return x
    sel = jnp.ones(x.shape, bool) if rows is None else jnp.asarray(rows) != 0
    return jnp.sum(jnp.where(sel, x, 0.0)) / jnp.maximum(sel.sum(), 1)


# ---------------------------------------------------------------- intermediate matches


def feature(aux: dict, name: str, layer):
    """One feature of a model's aux outputs at a resolved layer (a tuple for pair losses)."""
    if isinstance(layer, tuple):
        return tuple(feature(aux, name, i) for i in layer)
    if name == "hidden":
        return aux["hidden_states"][layer]
    if name == "attention":
        return aux["attentions"][layer - 1]
    return aux["qkv"][layer - 1, FEATURES.index(name) - 2]


def project(proj_params: dict, kind: str, x):
    y = jnp.asarray(x, jnp.float32) @ proj_params["kernel"] + proj_params["bias"]
    return PROJECTIONS[kind](y)


def match_losses(obj: Objective, s_aux, targets, mask_BxT, proj_params: dict) -> dict:
    """{term name: unweighted loss} of every intermediate match; ``targets``: one dict per
    teacher (``teacher_targets`` / ``batch_targets``)."""
    out = {}
    for i, m in enumerate(obj.matches):
        s = feature(s_aux, m.feature, m.layer_S)
        got = [jax.lax.stop_gradient(targets[m.teacher][f"{m.feature}{j}"]) for j in m.layers_T]
        t = tuple(got) if isinstance(m.layer_T, tuple) else got[0]
        if m.proj is not None:
            p, kind = proj_params[f"m{i}"], m.proj[0]
            s = (
                tuple(project(p, kind, x) for x in s)
                if isinstance(s, tuple)
                else project(p, kind, s)
            )
        fn = losses.MATCH_LOSS_MAP[m.loss]
        out[obj.match_key(i)] = fn(s, t, mask_BxT, **dict(m.loss_kwargs))
    return out


def init_projections(obj: Objective, rng) -> dict:
    """TextBrewer's projections as torch.nn.Linear initialises them: U(+-1/sqrt(dim_S))."""
    out = {}
    for i, m in enumerate(obj.matches):
        if m.proj is None:
            continue
        _, d_s, d_t = m.proj
        k1, k2 = jax.random.split(jax.random.fold_in(rng, i))
        bound = 1.0 / math.sqrt(d_s)
        out[f"m{i}"] = {
            "kernel": jax.random.uniform(k1, (d_s, d_t), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k2, (d_t,), jnp.float32, -bound, bound),
        }
    return out


# ---------------------------------------------------------------- the total


def compose(obj: Objective, student_out, targets, batch, labels, proj_params, hparams, step):
    """(total, terms) of one micro-batch. student_out: (logits, aux); targets: one dict per
    teacher (``teacher_targets``), None without a teacher; labels: the hard labels the heads are
    scored on (MLM labels at the head's rows for task 'mlm')."""
    s_logits, s_aux = student_out
    mask = batch["attention_mask"]
    x = jnp.clip(step.astype(jnp.float32) / max(obj.total_steps, 1), 0.0, 1.0)
    scale = lambda name: schedules.weight_scheduler(name)(x)
    w_hard = hparams["hard_label_weight"] * scale(obj.hard_label_weight_scheduler)
    w_kd = hparams["kd_loss_weight"] * scale(obj.kd_loss_weight_scheduler)
    zero = jnp.zeros((), jnp.float32)
    terms = {"loss_hard": hard_loss(s_logits, labels, obj.task) if obj.use_hard else zero}
    total = w_hard * terms["loss_hard"] if obj.use_hard else zero
    temperature = jnp.asarray(hparams["temperature"], jnp.float32)
    if obj.use_kd:
        t_logits = [t["logits"] for t in targets]
        # A teacher with its own tokenizer (token classification): the aligned words only.
        kd_mask = batch.get("kd_mask", mask)
        terms["loss_kd"], temperature = kd_loss(
            obj, s_logits, t_logits, kd_mask, labels, hparams["temperature"]
        )
        total = total + w_kd * terms["loss_kd"]
    if obj.matches:
        matched = match_losses(obj, s_aux, targets, mask, proj_params)
        for w, v in zip(hparams["match_weights"], matched.values()):
            total = total + w * v
        terms.update(matched)
    scalars = {"hard_label_weight": w_hard, "kd_loss_weight": w_kd, "temperature": temperature}
    return total, {"loss": total, **terms, **scalars}


def hparams(distill: dict, obj: Objective) -> dict:
    """The traced values of the loss: base weights and temperature (schedulers scale them)."""
    return {
        "temperature": jnp.float32(distill["temperature"]),
        "hard_label_weight": jnp.float32(distill["hard_label_weight"]),
        "kd_loss_weight": jnp.float32(distill["kd_loss_weight"]),
        "match_weights": jnp.asarray([m.weight for m in obj.matches], jnp.float32),
    }
