"""General (masked-LM) distillation, DistilBERT's recipe by default: ``run(cfg, workdir)``.

The hard label is the masked token (dynamic masking inside the step), KD runs on the MLM logits
and matches on hidden states / attention; evaluation is the held-out MLM loss. Behind
scripts/distill.py and scripts/fit_mlm_head.py; resumes from the newest checkpoint in workdir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import hf, sharding, teachers
from flaxdistil import student as students
from flaxdistil.data import array_records, stream, tasks, text_pipeline, tfds_builders
from flaxdistil.evaluate import evaluate_mlm
from flaxdistil.jobs import common
from flaxdistil.loop import Loop
from flaxdistil.models import Model


def load_texts(corpus: str, split: str, limit: int = 0) -> list[str]:
    """A TFDS name (ours or the catalog's), a plain-text file (one document per paragraph), or
    'antibody_germlines' (flaxdistil.assets)."""
    from flaxdistil import assets

    path = Path(assets.antibody_germlines_file() if corpus == "antibody_germlines" else corpus)
    path = path.expanduser()
    if path.suffix == ".txt" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        from flaxdistil.data.corpora import heldout_count, text_file_documents

        texts = [t for _, t in text_file_documents(path)]
        n_held = heldout_count(len(texts))
        texts = texts[:-n_held] if split == "train" else texts[-n_held:]
    else:
        texts = [ex["text"] for ex in tfds_builders.load(corpus, split)]
    texts = texts[:limit] if limit else texts
    if not texts:
        raise ValueError(f"corpus {corpus!r} split {split!r} has no documents")
    return texts


def sequences(cfg, tokenizer_dir) -> tuple[tasks.Encoded, tasks.Encoded]:
    """(train, held-out) token sequences of the corpus as Encoded rows."""
    d = cfg.data
    out = []
    for split, limit in ((d.train_split, d.max_train_docs), (d.heldout_split, d.max_heldout_docs)):
        texts = load_texts(d.corpus, split, limit)
        seqs = text_pipeline.tokenize_corpus(
            texts, tokenizer_dir, d.max_length, name=f"{Path(d.corpus).name}-{split}"
        )
        if not seqs:
            raise ValueError(f"no sequences of >= 12 tokens in {d.corpus!r} split {split!r}")
        out.append(tasks.from_rows(seqs, None, np.zeros(len(seqs), np.int32)))
    print(
        f"data: {len(out[0]):,} train / {len(out[1]):,} held-out sequences "
        f"(max_length {d.max_length})",
        flush=True,
    )
    return out[0], out[1]


def streamed(cfg, tokenizer) -> tuple[stream.StreamBatches, tasks.Encoded]:
    """(train batches streamed from data.array_record, held-out rows in memory): the corpus
    tokenised once by scripts/prepare_data.py, never whole in memory."""
    d, t = cfg.data, cfg.train
    for key in ("max_train_docs", "max_heldout_docs"):
        if d[key]:
            raise ValueError(
                f"data.{key}={d[key]} limits tokenisation; with data.array_record pass "
                f"--{key} to scripts/prepare_data.py and leave data.{key}=0"
            )
    if cfg.teacher.cache:
        raise ValueError("teacher.cache needs the in-memory corpus: unset data.array_record")
    manifest = array_records.read_manifest(d.array_record)
    array_records.check_manifest(manifest, d.array_record, tokenizer, d.max_length)
    batches = stream.StreamBatches(
        d.array_record,
        t.batch_size,
        t.seed,
        tokenizer.pad_token_id,
        t.pad_multiple,
        group_by_length=t.group_by_length,
        threads=d.read_threads,
        prefetch=d.prefetch,
        workers=d.workers,
    )
    held = array_records.load_encoded(d.array_record, "heldout")
    print(
        f"data: {batches.n:,} train sequences streamed from {d.array_record} / {len(held):,} "
        f"held-out (max_length {d.max_length})",
        flush=True,
    )
    return batches, held


def _token_weights(cfg, train_rows, tokenizer, vocab_size):
    if not cfg.data.mlm_smoothing:
        return None
    if train_rows is None:  # streamed: counted when the corpus was prepared
        counts = array_records.token_counts(cfg.data.array_record, "train")
        counts = np.pad(counts, (0, max(vocab_size - len(counts), 0)))[:vocab_size]
    else:
        counts = text_pipeline.token_counts(train_rows.input_ids, vocab_size)
    weights = text_pipeline.smoothing_weights(
        counts, tokenizer.all_special_ids, cfg.data.mlm_smoothing
    )
    return jnp.asarray(weights)


def run(cfg, workdir) -> dict:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    teacher_list = common.load_teachers(cfg, "mlm")
    teacher = teacher_list[0].pre if teacher_list else None  # sliced from, evaluated at the end
    tokenizer = common.load_tokenizer(cfg)
    params, s_cfg, origin = common.build_student(cfg, teacher, "mlm", jax.random.key(t.seed))
    common.teacher_tokenizers(teacher_list, s_cfg, tokenizer, "mlm")
    print(students.format_param_table(params, 2, f"student: {origin}"), flush=True)
    # The student's tokens (the teachers share them): its own tokenizer, else its model's.
    tok_dir = hf.resolve(
        cfg.student.get("tokenizer") or teachers.first_path(cfg) or cfg.student.path
    )
    pad = tokenizer.pad_token_id
    if cfg.data.array_record:
        (batches, held_rows), train_rows, cached = streamed(cfg, tokenizer), None, False
    else:
        train_rows, held_rows = sequences(cfg, tok_dir)
    total = common.total_steps(cfg, batches.n if train_rows is None else len(train_rows))
    obj, hparams = common.build_objective(cfg, "mlm", s_cfg, teacher_list, tokenizer, total)
    if train_rows is not None:
        batches, cached = common.train_batches(cfg, train_rows, pad, teacher_list, obj, "mlm")
    engine = common.build_engine(
        cfg, "mlm", params, s_cfg, teacher_list, obj, hparams, total, cached
    )
    eval_model = Model(s_cfg, "mlm")
    evaluate = None
    if cfg.eval.every or cfg.eval.at_epoch_end:
        evaluate = lambda p: evaluate_mlm(eval_model, p, held_rows, obj, cfg.eval.batch_size, pad)
    loop = Loop(cfg, workdir, total, evaluate, desc="distill" if obj.needs_teacher else "mlm")
    weights = _token_weights(cfg, train_rows, tokenizer, s_cfg.vocab_size)
    try:
        out = loop.run(engine, batches, weights)
    finally:
        getattr(batches, "close", lambda: None)()  # a stream's worker threads / processes
    params = jax.device_get(out.best_params(out.state.params))
    return _finish(cfg, workdir, params, out, s_cfg, teacher, held_rows, obj, tokenizer)


def _finish(cfg, workdir, params, out, s_cfg, teacher, held_rows, obj, tokenizer) -> dict:
    pad, bs = tokenizer.pad_token_id, cfg.eval.batch_size
    t0 = time.perf_counter()
    results = {"student": evaluate_mlm(Model(s_cfg, "mlm"), params, held_rows, obj, bs, pad)}
    if teacher is not None:
        t_model = Model(teacher.config, "mlm")
        results["teacher"] = evaluate_mlm(t_model, teacher.params, held_rows, obj, bs, pad)
    for who, r in results.items():
        print(
            f"held-out {who:>7}: MLM loss {r['mlm_loss']:.4f}  accuracy "
            f"{r['mlm_accuracy']:.4f}  perplexity {r['perplexity']:.2f}  "
            f"({r['masked_tokens']:,} masked tokens)",
            flush=True,
        )
    print(f"evaluation took {time.perf_counter() - t0:.1f}s", flush=True)
    results.update(
        steps_run=out.steps_run,
        best_step=out.early.best_step,
        stopped_early=out.early.should_stop,
        train_time_s=out.train_time_s,
        resumed_at_step=out.resumed_at_step,
    )
    if sharding.is_primary():  # process 0 alone exports and writes the results
        if cfg.export.hf:
            dest = hf.save_pretrained(
                workdir / "student_hf", params, s_cfg, "mlm", tokenizer_from=tokenizer
            )
            common.save_projections(workdir / "projections.npz", out.state.proj)
            results["exported_to"] = str(dest)
            print(f"student exported to {dest}", flush=True)
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    sharding.barrier("general job: outputs written")  # what runs next may read them
    return results
