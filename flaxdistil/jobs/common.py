"""What both jobs set up the same way: tokenizer, teacher, student, objective, optimizer, step.

Config fields by role (configs/common.py documents each): ``teacher.*`` (path, dtype, cache,
cache_dtype) or ``teachers`` (a list, flaxdistil/teachers.py),
``student.*`` (init slice | pretrained | random, path, layers, distilbert_style, preset, fields),
``distill.*`` (TextBrewer's names), ``train.*``, ``eval.*``, ``export.*``, ``mesh.*``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flaxdistil import (
    hf,
    matches,
    objective,
    prune,
    quantize,
    sharding,
    teacher_cache,
    teachers,
    train,
    vocab,
)
from flaxdistil import student as students
from flaxdistil.data import text_pipeline
from flaxdistil.data.batching import Batches
from flaxdistil.models import Model, ModelConfig


@dataclasses.dataclass
class Engine:
    """The compiled step and everything it is called with."""

    state: train.TrainState
    step_fn: object
    teacher_params: object
    hparams: dict
    mesh: object


def load_tokenizer(cfg, own: bool = True):
    """The student's tokenizer: student.tokenizer (its own vocabulary) if set and ``own``, else
    the tokenizer of the model the student comes from (the teacher's when sliced from it)."""
    s, t_path = cfg.student, teachers.first_path(cfg)
    if s.init == "slice" and not t_path:  # before the tokenizer: the first thing missing
        raise ValueError("student.init='slice' needs teacher.path (the model to slice)")
    if own and s.get("tokenizer"):
        return text_pipeline.load_tokenizer(hf.resolve(s.tokenizer))
    path = t_path if s.init == "slice" or not s.path else s.path
    if not path:
        raise ValueError("set teacher.path or student.path: no model to take the tokenizer from")
    return text_pipeline.load_tokenizer(hf.resolve(path))


def load_teachers(cfg, head: str, **head_fields) -> list[teachers.Teacher]:
    """``teacher.path`` or every entry of ``teachers``, each with a trained ``head``; [] if none."""
    return teachers.load(cfg, head, **head_fields)


def _layers(layers):
    if isinstance(layers, str) and not layers.replace(",", "").replace(" ", "").isdigit():
        return layers
    items = layers.split(",") if isinstance(layers, str) else layers
    return [int(i) for i in items]


def build_student(cfg, teacher, head: str, rng, **head_fields):
    """(params, config, where they came from). ``teacher``: the first teacher's hf.Pretrained or
    None. init 'slice': teacher layers (head included);
    'pretrained': student.path (a missing head initialised), sliced if student.layers is set;
    'random': a TextBrewer shape (student.preset) and/or HF fields on the teacher's config."""
    s = cfg.student
    if s.init == "slice":
        if teacher is None:
            raise ValueError("student.init='slice' needs teacher.path (the model to slice)")
        params, config, origin = teacher.params, teacher.config, f"teacher {teacher.path}"
        layers = s.layers or "every_other"
    elif s.init == "pretrained":
        if not s.path:
            raise ValueError("student.init='pretrained' needs student.path")
        pre = hf.load_pretrained(s.path, head, rng=rng, **head_fields)
        params, config, origin = pre.params, pre.config, f"{s.path} ({pre.report})"
        layers = s.layers
    elif s.init == "random":
        # Only the base config is needed: read config.json, not the weights.
        base = (
            teacher.config if teacher else ModelConfig.from_hf(hf.read_config(hf.resolve(s.path)))
        )
        config = students.student_config(base, s.preset or None, **dict(s.fields))
        config = config.replace(**_config_fields(head_fields))
        if s.get("tokenizer"):  # a random student with its own vocabulary: only the size
            own = load_tokenizer(cfg)
            config = config.replace(vocab_size=len(own), pad_token_id=own.pad_token_id)
        params = students.init_student(config, head, rng)
        return params, config, f"random {s.preset or ''} {dict(s.fields) or ''}".strip()
    else:
        raise ValueError(f"student.init must be 'slice', 'pretrained' or 'random', got {s.init!r}")
    if s.get("tokenizer"):
        params, config, report = vocab.own_vocabulary(
            params, config, load_tokenizer(cfg, own=False), load_tokenizer(cfg)
        )
        origin += f", own vocabulary {s.tokenizer} ({report})"
    if layers:
        params, config, ids = students.derive_student(
            params,
            config,
            layers=_layers(layers),
            num_layers=s.num_layers or None,
            distilbert_style=s.distilbert_style,
        )
        origin += f", layers {ids}"
        if cfg.export.hf:  # refuse a student transformers cannot rebuild now, not after training
            config.to_hf()
    return params, config, origin


def _config_fields(head_fields: dict) -> dict:
    return {k: v for k, v in head_fields.items() if v is not None}


def teacher_tokenizers(teacher_list, s_cfg, tokenizer, task: str) -> None:
    """Each teacher's tokenizer against the student's (flaxdistil.teachers.resolve_tokenizers):
    ``own_tokenizer`` set where it differs, a pair that cannot be distilled for ``task`` refused;
    then each model's vocab_size against the tokenizer it reads."""
    teachers.resolve_tokenizers(teacher_list, s_cfg, tokenizer, task)
    check_vocab(tokenizer, s_cfg)
    for t in teacher_list:
        check_vocab(t.own_tokenizer or tokenizer, t.config)


def check_vocab(tokenizer, *configs) -> None:
    for c in configs:
        if len(tokenizer) > c.vocab_size:
            raise ValueError(
                f"vocab mismatch: the tokenizer has {len(tokenizer)} tokens but the model's "
                f"vocab_size is {c.vocab_size}"
            )


def trainable_filter(prefixes: str):
    if not prefixes:
        return None
    keep = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    return lambda path: path.startswith(keep)


def distill_fields(cfg, job: str, s_cfg, t_cfg) -> dict:
    """cfg.distill with every unset field filled (config > preset > the job's default)."""
    if cfg.distill.preset and t_cfg is None:
        raise ValueError(f"distill.preset {cfg.distill.preset!r} needs a teacher: set teacher.path")
    d, source = matches.distill_fields(dict(cfg.distill), job, s_cfg, t_cfg)
    _check_distill(d)
    if t_cfg is not None:
        shown = ", ".join(
            f"{k}={d[k]!r} ({source[k]})" for k in source if k != "intermediate_matches"
        )
        n = len(d["intermediate_matches"])
        print(f"distill: {shown}; {n} intermediate matches ({source['intermediate_matches']})")
    return d


def _check_distill(d: dict) -> None:
    """Unset (None) fields have no type for the runner to check an override against: here."""
    for k in ("temperature", "hard_label_weight", "kd_loss_weight", "mlm_probability"):
        if isinstance(d[k], bool) or not isinstance(d[k], int | float):
            raise ValueError(f"distill.{k} expects a number, got {d[k]!r}")
    if not isinstance(d["kd_loss_type"], str):
        raise ValueError(
            f"distill.kd_loss_type expects a name such as 'kl_t2', got {d['kd_loss_type']!r}"
        )
    ims = d["intermediate_matches"]
    if hasattr(ims, "items") or not isinstance(ims, list | tuple):
        kind = "dict" if hasattr(ims, "items") else type(ims).__name__
        raise ValueError(
            f"distill.intermediate_matches expects a list of dicts [{{...}}, ...], got a {kind}"
        )
    bad = [m for m in ims if not hasattr(m, "items")]
    if bad:
        raise ValueError(f"distill.intermediate_matches expects dicts, found {bad[0]!r}")


def build_objective(cfg, task: str, s_cfg, teacher_list, tokenizer, total_steps: int):
    """(Objective, hparams) for the student and ``teacher_list`` (teachers.Teacher, maybe [])."""
    job = "general" if task == "mlm" else "task"
    t_cfgs = [t.config for t in teacher_list]
    d = distill_fields(cfg, job, s_cfg, t_cfgs[0] if t_cfgs else None)
    has_teacher = bool(t_cfgs)
    matched = _teacher_matches(cfg, job, d, s_cfg, teacher_list)
    sched = d["temperature_scheduler"] or "constant"
    sched = (sched,) if isinstance(sched, str) else tuple(sched)
    mlm = {}
    if task == "mlm":
        mlm = dict(
            mlm_probability=d["mlm_probability"],
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=s_cfg.vocab_size,
            special_ids=tuple(int(i) for i in tokenizer.all_special_ids),
            restrict_ce_to_mask=d["restrict_ce_to_mask"],
            gather_masked=d["gather_masked"],
        )
    obj = objective.Objective(
        task=task,
        use_hard=d["hard_label_weight"] != 0 or d["hard_label_weight_scheduler"] != "constant",
        use_kd=has_teacher and d["kd_loss_weight"] != 0,
        kd_loss_type=d["kd_loss_type"],
        matches=matched,
        temperature_scheduler=sched,
        hard_label_weight_scheduler=d["hard_label_weight_scheduler"] or "constant",
        kd_loss_weight_scheduler=d["kd_loss_weight_scheduler"] or "constant",
        total_steps=total_steps,
        teacher_weights=tuple(t.weight for t in teacher_list) or (1.0,),
        teacher_average=cfg.distill.teacher_average,
        **mlm,
    )
    return obj, objective.hparams(d, obj)


def _teacher_matches(cfg, job, d, s_cfg, teacher_list) -> tuple:
    """Every teacher's matches, numbered in one sequence: a teacher's own intermediate_matches,
    else the distill fields' (config > preset > default), resolved for that teacher."""
    out = []
    for k, t in enumerate(teacher_list):
        raw = t.intermediate_matches
        if raw is None:
            mine = d if k == 0 else matches.distill_fields(dict(cfg.distill), job, s_cfg, t.config)
            raw = (mine if k == 0 else mine[0])["intermediate_matches"]
        where = "" if len(teacher_list) == 1 else f"teacher {k} ({t.path}): "
        if where:
            own = "its own" if t.intermediate_matches is not None else "the distill fields'"
            print(f"{where}{len(raw)} intermediate matches ({own})", flush=True)
        if raw and t.own_tokenizer is not None:
            m = dict(raw[0])
            raise ValueError(
                f"{where}intermediate match {m} reads teacher {t.path}'s per-token features, but "
                "its tokenizer differs from the student's: the tokens do not correspond one to "
                "one; distil its logits only (intermediate_matches=[] for it)"
            )
        for m in raw:
            try:
                parsed = matches.parse_match(len(out), dict(m), s_cfg, t.config)
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
            out.append(dataclasses.replace(parsed, teacher=k))
    return tuple(out)


def build_engine(
    cfg, head: str, params, s_cfg, teacher_list, obj, hparams, total_steps, cached=False
) -> Engine:
    """Optimizer, state (with projections), placement over the mesh, the compiled step. With
    ``cached`` the teachers stay out of the step: their outputs come in the batches."""
    t = cfg.train
    mesh = sharding.make_mesh(cfg.mesh.fsdp)
    if t.batch_size % mesh.devices.size:
        raise ValueError(
            f"train.batch_size {t.batch_size} does not divide over {mesh.devices.size} devices"
        )
    trainable = trainable_filter(t.trainable)
    proj_lrs = {f"m{i}": m.proj_lr for i, m in enumerate(obj.matches) if m.proj_lr}
    optim_steps = max(total_steps // t.accumulate, 1)
    tx = train.make_optimizer(
        learning_rate=t.learning_rate,
        total_steps=optim_steps,
        warmup_steps=int(t.warmup_ratio * optim_steps),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        accumulate=t.accumulate,
        trainable=trainable,
        proj_lrs=proj_lrs,
        prune_sparsity=prune.check_sparsity(cfg.prune.sparsity, "prune.sparsity"),
        prune_rounds=cfg.prune.rounds,
        prune_scope=cfg.prune.scope,
    )
    proj = objective.init_projections(obj, jax.random.key(t.seed + 1))
    state = train.create_state(params, tx, proj)
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    student = Model(s_cfg, head, jnp.dtype(t.dtype), t.remat or None, t.attention_impl)
    in_step = teacher_list if obj.needs_teacher and not cached else []
    models, t_params, t_sh = place_teachers(in_step, head, t.attention_impl, mesh)
    step_fn = train.jit_train_step(
        obj, student, models, tx, mesh, state_sh, t_sh, trainable, qat=quantize.qat_scheme(t)
    )
    return Engine(state, step_fn, t_params, hparams, mesh)


def place_teachers(teacher_list, head: str, attention_impl: str, mesh) -> tuple:
    """(models, params, shardings), tuples with one entry per teacher: each teacher's Model and
    its params placed over the mesh in its compute dtype (the step's teacher arguments)."""
    models, t_params, t_sh = [], [], []
    for teacher in teacher_list:
        models.append(teacher.model(head, attention_impl))
        t_sh.append(sharding.tree_shardings(teacher.params, mesh))
        t_params.append(jax.device_put(teacher.run_params(), t_sh[-1]))
    return tuple(models), tuple(t_params), tuple(t_sh)


def export_hf(out_dir, params, s_cfg, head: str, tokenizer, data, pad_id: int, check: bool):
    """Save ``params`` as a Hugging Face directory ``out_dir`` and, with ``check`` (and torch
    installed), compare its logits in transformers with ours on 8 validation rows of ``data``:
    {'exported_to', 'transformers_max_abs_diff', 'transformers_check_ok'}."""
    out = hf.save_pretrained(out_dir, params, s_cfg, head, tokenizer_from=tokenizer)
    res = {"exported_to": str(out)}
    print(f"best model exported to {out}", flush=True)
    if not check:
        return res
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: skipped the transformers check of the export", flush=True)
        return res
    import numpy as np

    from flaxdistil.data.tasks import collate
    from flaxdistil.parity import compare_with_transformers

    encoded = data.splits["validation"]
    idx = np.arange(min(8, len(encoded)))
    batch = collate(encoded, idx, pad_id, 16)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    diffs = compare_with_transformers(out, params, s_cfg, head, batch)
    res["transformers_max_abs_diff"] = diffs
    res["transformers_check_ok"] = bool(max(diffs.values()) < 1e-3)
    print(f"transformers check of the export: max |diff| {diffs}", flush=True)
    return res


def train_batches(cfg, rows, pad_id: int, teacher_list, obj, head: str):
    """(the training batches, cached): with teacher.cache the batches carry the teachers'
    cached outputs (built on the first run) and the step runs no teacher."""
    t = cfg.train
    caches = teacher_cache.prepare(cfg, teacher_list, obj, head, rows, pad_id)
    args = (rows, t.batch_size, t.seed, pad_id, t.pad_multiple)
    # Teachers with their own tokenizer: the same examples in their tokens, in every batch.
    own = {
        k: (x.rows, x.own_tokenizer.pad_token_id)
        for k, x in enumerate(teacher_list)
        if x.own_tokenizer is not None
    }
    kw = dict(group_by_length=t.group_by_length, teacher_rows=own)
    if caches is None:
        return Batches(*args, **kw), False
    return teacher_cache.CachedBatches(*args, caches, **kw), True


def total_steps(cfg, n_train: int) -> int:
    """train.steps, or train.epochs full passes over n_train examples when it is 0."""
    t = cfg.train
    total = t.steps or t.epochs * (n_train // t.batch_size)
    if total <= 0:
        raise ValueError(
            f"no training steps: train.steps={t.steps}, train.epochs={t.epochs} over "
            f"{n_train} examples at batch size {t.batch_size}"
        )
    return total


def save_projections(path, proj: dict) -> None:
    """The trained match projections beside the HF export (transformers has no place for them):
    an .npz of '<match key>/kernel' and '/bias' arrays."""
    if not proj:
        return
    import numpy as np

    flat = {
        f"{k}/{name}": np.asarray(v)
        for k, d in jax.device_get(proj).items()
        for name, v in d.items()
    }
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path)
