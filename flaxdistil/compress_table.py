"""The compression pipeline in one table, as TextPruner shows it: teacher -> distilled student ->
structured pruning (heads / FFN neurons) -> vocabulary pruning -> int8, with parameters, size on
disk, CPU latency at batch 1 and test metrics at each step. The int8 model gets two rows, one per
forward of quantized_forward: dequantising the weights on the fly (float activations, so scored
on the dequantised weights) and int8 x int8 matmuls (activations quantised per token too, so
scored through that forward).

``table(cfg, teacher_dir, student_dir, workdir, heads_keep=8, ffn_keep=1024)``: the structured
and vocabulary steps are ``compress.compress`` (heads / FFN ranked label-free on the first
``max_examples`` training texts; the vocabulary kept is the tokens of the task's training texts,
so test texts may tokenise differently: an honest loss); int8 is ``quantize.quantize_params`` of
the vocabulary-pruned model at 8 bits per output channel with the embedding table at 8 bits too,
``quantize.save_compact`` (the int8 file holds the pruned, physically smaller matrices; its
config.json the padded HF view). No step fine-tunes. Sizes
are the one weights file each step writes
(teacher / student: model.safetensors; structured / vocabulary: flaxdistil/params.safetensors,
the physically smaller matrices; int8: model.quant.safetensors). Latency is the median of
``runs`` calls of ``flaxdistil.inference_fn`` (int8: ``quantize.inference_fn`` with each
matmul) on the first test text, the steps taking turns run by run.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from flaxdistil import compress, evaluate, quantize
from flaxdistil import quantized_forward as qf
from flaxdistil import student as students
from flaxdistil.data import task_data
from flaxdistil.data.tasks import collate
from flaxdistil.data.text_pipeline import load_tokenizer
from flaxdistil.models import Model, inference_fn

STEPS = (
    "teacher",
    "distilled student",
    "structured pruning",
    "vocabulary pruning",
    "int8, dequantised on the fly",
    "int8, int8 matmuls",
)
INT8_MATMUL = {STEPS[4]: "dequant", STEPS[5]: "int8"}


def _write_texts(texts, path: Path) -> Path:
    # vocab.read_corpus reads one text a line: newlines inside a text would split it
    path.write_text("\n".join(" ".join(t.split()) for t in texts) + "\n")
    return path


def build(teacher_dir, student_dir, workdir: Path, train_texts, heads_keep, ffn_keep, n: int):
    """{step: (directory, weights file)} after writing the three compressed steps."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = _write_texts(train_texts[:n], workdir / "importance_texts.txt")
    corpus = _write_texts(train_texts, workdir / "vocab_corpus.txt")
    s, v, q = workdir / "structured", workdir / "vocab", workdir / "int8"
    rep = compress.compress(
        student_dir, s, heads_keep=heads_keep, ffn_keep=ffn_keep, data=data, max_examples=n
    )
    print(rep, flush=True)
    rep = compress.compress(s, v, vocab_from=corpus)
    print(rep, flush=True)
    params, cfg, head, _ = compress.load_source(v)
    qp = quantize.quantize_params(params, bits=8, embeddings=8)
    quantize.save_compact(qp, cfg, q, head, tokenizer_from=v)
    compact = compress.COMPACT
    return {
        STEPS[0]: (Path(teacher_dir), Path(teacher_dir) / "model.safetensors"),
        STEPS[1]: (Path(student_dir), Path(student_dir) / "model.safetensors"),
        STEPS[2]: (s, s / compact / "params.safetensors"),
        STEPS[3]: (v, v / compact / "params.safetensors"),
        STEPS[4]: (q, q / quantize.COMPACT_FILE),
        STEPS[5]: (q, q / quantize.COMPACT_FILE),
    }


def _load(step: str, path: Path):
    """(params to score, their forward, config, head, latency forward and its params)."""
    if step in INT8_MATMUL:
        matmul = INT8_MATMUL[step]
        qp, cfg, head = quantize.load_compact(path)
        fwd, p = quantize.inference_fn(path, head=head, matmul=matmul)
        model = Model(cfg, head)
        score = jax.jit(lambda p, *a: qf.apply(model, p, *a, matmul=matmul)[0])
        return qp, score, cfg, head, fwd, p
    params, cfg, head, _ = compress.load_source(path)
    fwd, p = inference_fn(cfg, head, params)
    return params, evaluate.make_forward(Model(cfg, head)), cfg, head, fwd, p


def measure(cfg, steps: dict, runs: int = 50) -> list[dict]:
    """One row per step: params, size, latency (ms), test metrics."""
    rows, calls = [], {}
    for step, (path, weights) in steps.items():
        params, forward, mcfg, head, fwd, p = _load(step, path)
        tok = load_tokenizer(path)
        data = task_data.load_task_data(cfg.data, tok, cfg.data.cache_dir or None)
        test = evaluate.evaluate_task(
            forward, params, data, "test", batch_size=cfg.eval.batch_size, pad_id=tok.pad_token_id
        )
        one = collate(data.splits["test"], np.arange(1), tok.pad_token_id, 1)
        args = [one[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
        fwd(p, *args).block_until_ready()  # compile outside the timing
        calls[step] = functools.partial(fwd, p, *args)
        rows.append(
            {
                "step": step,
                "path": str(path),
                "file": str(weights),
                "params": students.count_params(
                    quantize.dequantize_params(params) if step in INT8_MATMUL else params
                ),
                "size_mb": os.path.getsize(weights) / 2**20,
                "test": test,
                "heads": mcfg.num_attention_heads,
                "ffn": mcfg.intermediate_size,
                "vocab": mcfg.vocab_size,
                "layers": mcfg.num_hidden_layers,
            }
        )
        print(f"{step}: test {test}", flush=True)
    times = {s: [] for s in calls}
    for _ in range(runs):
        for s, call in calls.items():
            t0 = time.perf_counter()
            call().block_until_ready()
            times[s].append(time.perf_counter() - t0)
    for r in rows:
        r["latency_ms"] = float(np.median(times[r["step"]]) * 1000)
        r["latency_runs"] = runs
    return rows


def markdown(rows: list[dict], metric: str = "accuracy") -> str:
    head = (
        f"| step | layers | heads | FFN | vocab | params | size on disk (MB) | "
        f"CPU latency, batch 1 (ms) | test {metric} |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['layers']} | {r['heads']} | {r['ffn']} | {r['vocab']:,} "
            f"| {r['params'] / 1e6:.2f}M | {r['size_mb']:.2f} | {r['latency_ms']:.1f} "
            f"| {r['test'][metric]:.4f} |"
        )
    return "\n".join(lines)


def table(
    cfg,
    teacher_dir,
    student_dir,
    workdir,
    *,
    heads_keep=8,
    ffn_keep=1024,
    max_examples=256,
    runs=50,
    metric="accuracy",
) -> dict:
    workdir = Path(workdir).resolve()
    for name, d in (("teacher", teacher_dir), ("student", student_dir)):
        if not (Path(d) / "model.safetensors").is_file():
            raise FileNotFoundError(f"{name}: no model.safetensors in {d} (a fine-tuned HF dir)")
    examples, _, _ = task_data.read_splits(cfg.data)
    texts = [e.text for e in examples["train"]]
    steps = build(teacher_dir, student_dir, workdir, texts, heads_keep, ffn_keep, max_examples)
    rows = measure(cfg, steps, runs)
    out = {
        "dataset": cfg.data.train_file or cfg.data.dataset,
        "rows": rows,
        "heads_keep": heads_keep,
        "ffn_keep": ffn_keep,
        "notes": __doc__.split("\n\n", 1)[1],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (workdir / "pipeline.json").write_text(json.dumps(out, indent=2))
    md = markdown(rows, metric)
    (workdir / "pipeline.md").write_text(md + "\n")
    print(md, flush=True)
    return out
