"""The general-distillation job (DistilBERT's recipe): data, teacher, student, loop, eval, export.

``run(config, workdir)`` is what ``scripts/distill.py`` calls; see configs/ for the fields.
Resumes automatically from the newest checkpoint in ``workdir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import hf, sharding, train
from flaxdistil import student as students
from flaxdistil.checkpoint import Checkpointer
from flaxdistil.data import text_pipeline, tfds_builders
from flaxdistil.data.batching import LengthGroupedBatches
from flaxdistil.logger import MetricsLogger, Progress, check_finite
from flaxdistil.models import Model

# ---------------------------------------------------------------- set-up pieces


def load_texts(corpus: str, split: str, limit: int = 0) -> list[str]:
    """A TFDS name (ours or the catalog's), a plain-text file (one document per paragraph), or
    'antibody_germlines' (flaxdistil.assets)."""
    from flaxdistil import assets

    path = Path(assets.antibody_germlines_file() if corpus == "antibody_germlines" else corpus)
    path = path.expanduser()
    if path.suffix == ".txt" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        from flaxdistil.data.corpora import text_file_documents

        texts = [t for _, t in text_file_documents(path)]
        n_held = max(1, len(texts) // 50)  # a fixed 2% tail is the held-out part
        texts = texts[:-n_held] if split == "train" else texts[-n_held:]
    else:
        texts = [ex["text"] for ex in tfds_builders.load(corpus, split)]
    texts = texts[:limit] if limit else texts
    if not texts:
        raise ValueError(f"corpus {corpus!r} split {split!r} has no documents")
    return texts


def load_teacher(cfg) -> hf.Pretrained | None:
    if not cfg.teacher.path:
        return None
    teacher = hf.load_pretrained(cfg.teacher.path, head="mlm")
    if teacher.report.new_init:
        raise ValueError(
            f"teacher {cfg.teacher.path} has no masked-LM head ({teacher.report.new_init} would be "
            "random); fit one first, e.g. scripts/fit_mlm_head.py"
        )
    return teacher


def build_student(cfg, teacher: hf.Pretrained | None, rng) -> tuple[dict, object, str]:
    s = cfg.student
    if s.init == "slice":
        params, config, ids = students.derive_student(
            teacher.params,
            teacher.config,
            layers=_layers(s.layers),
            num_layers=s.num_layers or None,
            distilbert_style=s.distilbert_style,
        )
        return params, config, f"teacher layers {ids}"
    if s.init == "pretrained":
        pre = hf.load_pretrained(s.path, head="mlm", rng=rng)
        return pre.params, pre.config, f"{s.path} ({pre.report})"
    if s.init == "random":
        base = teacher.config if teacher else hf.load_pretrained(s.path, head="mlm").config
        config = students.student_config(base, s.preset or None, **dict(s.fields))
        return students.init_student(config, "mlm", rng), config, f"random {s.preset or ''}"
    raise ValueError(f"student.init must be 'slice', 'pretrained' or 'random', got {s.init!r}")


def _layers(layers):
    return layers if isinstance(layers, str) else [int(i) for i in layers]


def check_vocab(tokenizer, *configs) -> None:
    for c in configs:
        if len(tokenizer) > c.vocab_size:
            raise ValueError(
                f"vocab mismatch: the tokenizer has {len(tokenizer)} tokens but the model's "
                f"vocab_size is {c.vocab_size}"
            )


def distill_spec(cfg, tokenizer, vocab_size: int) -> train.DistillSpec:
    d = cfg.distill
    return train.DistillSpec(
        temperature=d.temperature,
        alpha_ce=d.alpha_ce,
        alpha_mlm=d.alpha_mlm,
        alpha_cos=d.alpha_cos,
        alpha_mse=d.alpha_mse,
        restrict_ce_to_mask=d.restrict_ce_to_mask,
        gather_masked=d.gather_masked,
        mlm_probability=d.mlm_probability,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=vocab_size,
        special_ids=tuple(int(i) for i in tokenizer.all_special_ids),
    )


def trainable_filter(prefixes: str):
    if not prefixes:
        return None
    keep = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    return lambda path: path.startswith(keep)


# ---------------------------------------------------------------- evaluation


def evaluate_mlm(model: Model, params, sequences, spec, batch_size: int, pad_id: int) -> dict:
    """Held-out MLM loss / accuracy / perplexity with masks fixed by a seed, so teacher and student
    are scored on identical corruptions."""
    batches = LengthGroupedBatches(sequences, batch_size, seed=0, pad_id=pad_id, drop_last=False)
    step = jax.jit(lambda p, b, r: train.mlm_eval_step(p, b, r, model=model, spec=spec))
    tot = {"nll_sum": 0.0, "hits": 0, "count": 0}
    for i, idx in enumerate(batches.epoch_plan(0)):
        out = jax.device_get(step(params, batches.make_batch(idx), jax.random.key(10_000 + i)))
        for k in tot:
            tot[k] += float(out[k])
    loss = tot["nll_sum"] / max(tot["count"], 1)
    return {
        "mlm_loss": loss,
        "mlm_accuracy": tot["hits"] / max(tot["count"], 1),
        "perplexity": float(np.exp(min(loss, 50.0))),
        "masked_tokens": int(tot["count"]),
    }


# ---------------------------------------------------------------- the job


def run(cfg, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    teacher = load_teacher(cfg)
    tok_dir = cfg.teacher.path or cfg.student.path
    tokenizer = text_pipeline.load_tokenizer(hf.resolve(tok_dir))
    params, s_config, origin = build_student(cfg, teacher, jax.random.key(t.seed))
    check_vocab(tokenizer, s_config, *([teacher.config] if teacher else []))
    spec = distill_spec(cfg, tokenizer, s_config.vocab_size)
    if spec.needs_teacher and teacher is None:
        raise ValueError("alpha_ce/alpha_cos/alpha_mse > 0 need a teacher: set teacher.path")
    print(students.format_param_table(params, 2, f"student: {origin}"), flush=True)

    train_seqs, held_seqs = _sequences(cfg, tok_dir)
    batches = LengthGroupedBatches(
        train_seqs, t.batch_size, seed=t.seed, pad_id=tokenizer.pad_token_id
    )
    weights = None
    if cfg.data.mlm_smoothing:
        counts = text_pipeline.token_counts(train_seqs, s_config.vocab_size)
        weights = jnp.asarray(
            text_pipeline.smoothing_weights(
                counts, tokenizer.all_special_ids, cfg.data.mlm_smoothing
            )
        )

    mesh = sharding.make_mesh(cfg.mesh.fsdp)
    dtype = jnp.dtype(t.dtype)
    student_model = Model(
        s_config, "mlm", dtype=dtype, remat=t.remat or None, attention_impl=t.attention_impl
    )
    teacher_model, t_params = None, None
    if spec.needs_teacher:
        t_dtype = jnp.dtype(cfg.teacher.dtype)
        teacher_model = Model(teacher.config, "mlm", dtype=t_dtype, attention_impl=t.attention_impl)
        # A bf16 teacher stores its weights in bf16 too: half the memory and bandwidth.
        t_params = jax.device_put(
            jax.tree.map(lambda x: jnp.asarray(x, t_dtype), teacher.params),
            sharding.tree_shardings(teacher.params, mesh),
        )
    trainable = trainable_filter(t.trainable)
    tx = train.make_optimizer(
        learning_rate=t.learning_rate,
        total_steps=t.steps // t.accumulate,
        warmup_steps=t.warmup_steps // t.accumulate,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        accumulate=t.accumulate,
        trainable=trainable,
    )
    state = train.create_state(params, tx)
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)

    ckpt = Checkpointer(workdir / "checkpoints", every=t.checkpoint_every)
    log = MetricsLogger(workdir)
    start = 0
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(state)
        batches.load_state_dict(data_state)
        start = int(state.step)
        log.truncate_after(start)
        print(f"resumed from step {start} in {workdir}", flush=True)

    step_fn = train.jit_distill_step(
        student_model,
        teacher_model,
        spec,
        tx,
        mesh,
        state_sh,
        sharding.tree_shardings(t_params, mesh) if t_params else None,
        trainable,
    )
    rng = jax.random.key(t.seed)
    state = _loop(state, t_params, batches, rng, weights, step_fn, mesh, ckpt, log, start, t)
    log.close()
    return _finish(cfg, workdir, state.params, s_config, teacher, held_seqs, spec, tokenizer)


def _sequences(cfg, tok_dir):
    d = cfg.data
    out = []
    for split, limit in ((d.train_split, d.max_train_docs), (d.heldout_split, d.max_heldout_docs)):
        texts = load_texts(d.corpus, split, limit)
        seqs = text_pipeline.tokenize_corpus(
            texts, hf.resolve(tok_dir), d.max_length, name=f"{Path(d.corpus).name}-{split}"
        )
        if not seqs:
            raise ValueError(f"no sequences of >= 12 tokens in {d.corpus!r} split {split!r}")
        out.append(seqs)
    print(
        f"data: {len(out[0]):,} train / {len(out[1]):,} held-out sequences "
        f"(max_length {d.max_length})",
        flush=True,
    )
    return out


def _loop(state, t_params, batches, rng, weights, step_fn, mesh, ckpt, log, start, t):
    progress = Progress(t.steps, start, "distill")
    pending = None  # (step, metrics) of the previous step: fetched after dispatching the next

    def flush(item):
        step, metrics = item
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, host)
        if step % t.log_every == 0 or step == t.steps:
            log.write(step, host)
        progress.update(1, int(host["tokens"]), host)

    try:
        for step in range(start + 1, t.steps + 1):
            batch = sharding.shard_batch(next(batches), mesh)
            state, metrics = step_fn(state, t_params, batch, rng, weights)
            if pending:
                flush(pending)
            pending = (step, metrics)
            if step % t.checkpoint_every == 0 or step == t.steps:
                flush(pending)  # never save a state whose loss is not finite
                pending = None
                ckpt.save(step, state, batches.state_dict(), force=True)
        if pending:
            flush(pending)
    finally:
        progress.close()
    return state


def _finish(cfg, workdir, params, s_config, teacher, held_seqs, spec, tokenizer) -> dict:
    t = cfg.train
    pad = tokenizer.pad_token_id
    t0 = time.perf_counter()
    results = {
        "student": evaluate_mlm(
            Model(s_config, "mlm"), params, held_seqs, spec, t.eval_batch_size, pad
        )
    }
    if teacher is not None:
        results["teacher"] = evaluate_mlm(
            Model(teacher.config, "mlm"), teacher.params, held_seqs, spec, t.eval_batch_size, pad
        )
    for who, r in results.items():
        print(
            f"held-out {who:>7}: MLM loss {r['mlm_loss']:.4f}  accuracy "
            f"{r['mlm_accuracy']:.4f}  perplexity {r['perplexity']:.2f}  "
            f"({r['masked_tokens']:,} masked tokens)",
            flush=True,
        )
    print(f"evaluation took {time.perf_counter() - t0:.1f}s", flush=True)
    if cfg.export:
        out = hf.save_pretrained(
            workdir / "student_hf",
            jax.device_get(params),
            s_config,
            "mlm",
            tokenizer_from=tokenizer,
        )
        results["exported_to"] = str(out)
        print(f"student exported to {out}", flush=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results
