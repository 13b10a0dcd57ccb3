"""Peak memory of the training data path against corpus size: in memory vs streamed (grain).

    python scripts/bench_stream.py --out reports/bench_stream [--scales 1,10] [--batches 300] \
        [--train --steps 20]

Tokenises the BBC News corpus (flaxdistil.assets, 2,225 real English articles) once with the
MiniLM tokenizer (max_length 128), then builds it replicated ``scale`` times both ways the general
job reads a corpus: the tokenised sequences as text_pipeline's npz cache (what
text_pipeline.tokenize_corpus returns on a cache hit: the in-memory path's input) and as
scripts/prepare_data.py's ArrayRecord directory. Each case runs in a fresh process that imports
JAX, builds the job's batches (in memory: load_sequences -> tasks.from_rows -> Batches + the MLM
token counts; streamed: general.streamed's StreamBatches + held-out rows + stored counts), takes
--batches training batches, and reports the peak RSS of that phase (the kernel's VmHWM, reset
after the imports) and of the whole process (ru_maxrss). The in-memory
case leaves out the corpus text itself, which the job holds while tokenising: its figure is a
lower bound. ``--train`` then runs the whole general job (scripts/distill.py, configs/minilm_l3.py
at max_length 128) for --steps steps on each corpus, in memory (the text file) and streamed (the
ArrayRecord directory), each in a fresh process, and reports its peak RSS: model, optimiser state,
XLA buffers and the data path together. Writes <out>.json and prints a markdown table.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Restart the kernel's peak-RSS count (Linux >= 4.0): the imports' own peak (JAX, TFDS)
    would otherwise hide what the data path adds."""
    Path("/proc/self/clear_refs").write_text("5")


def build(work: Path, scales: list[int], max_length: int) -> dict:
    """The base tokenisation (cached) and, per scale, the npz and ArrayRecord forms."""
    from flaxdistil import assets
    from flaxdistil.data import array_records, corpora, text_pipeline

    tok_dir = assets.minilm_dir()
    texts = [t for _, t in corpora.bbc_documents()]
    n_held = corpora.heldout_count(len(texts))
    parts = {"train": texts[:-n_held], "heldout": texts[-n_held:]}
    cache = work / "tokenized"
    seqs = {
        s: text_pipeline.tokenize_corpus(t, tok_dir, max_length, f"bbc-{s}", cache)
        for s, t in parts.items()
    }
    tokenizer = text_pipeline.load_tokenizer(tok_dir)
    out = {}
    for scale in scales:
        npz, ar = work / f"bbc_x{scale}.npz", work / f"bbc_x{scale}_ar"
        if not npz.exists():
            text_pipeline.save_sequences(npz, seqs["train"] * scale)
        if not (ar / array_records.MANIFEST).exists():
            write_replicated(ar, seqs, scale, tokenizer, max_length)
        n = len(seqs["train"]) * scale
        tokens = int(sum(len(s) for s in seqs["train"])) * scale
        out[scale] = {"npz": str(npz), "array_record": str(ar), "sequences": n, "tokens": tokens}
        disk = sum(f.stat().st_size for f in ar.iterdir())
        out[scale]["array_record_mb"] = round(disk / 2**20, 1)
    return out


def write_replicated(ar: Path, seqs: dict, scale: int, tokenizer, max_length: int) -> None:
    """prepare_data's directory for the train split repeated ``scale`` times (the same
    records as tokenising the repeated text: tokenisation is per document)."""
    from flaxdistil.data import array_records

    ar.mkdir(parents=True, exist_ok=True)
    entries = {}
    for split, rows in seqs.items():
        w = array_records.SplitWriter(ar, split, len(tokenizer), shard_size=20_000)
        for _ in range(scale if split == "train" else 1):
            w.add_documents([[r] for r in rows])
        entries[split] = w.close()
    source = f"bbc x{scale} (scripts/bench_stream.py)"
    array_records.write_manifest(ar, entries, tokenizer, max_length, source)


def case(path: str, mode: str, batches: int, batch_size: int) -> dict:
    """One measurement, in this (fresh) process: what the job has loaded before it reads the
    corpus (JAX, the job's modules, the tokenizer) is the baseline."""
    import gc

    import ml_collections
    import numpy as np

    from flaxdistil import assets
    from flaxdistil.data import array_records, batching, tasks, text_pipeline
    from flaxdistil.jobs import general

    tokenizer = text_pipeline.load_tokenizer(assets.minilm_dir())
    gc.collect()
    reset_peak()
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    if mode == "memory":  # general.sequences after tokenize_corpus's cache hit, then Batches
        rows = text_pipeline.load_sequences(path)
        enc = tasks.from_rows(rows, None, np.zeros(len(rows), np.int32))
        counts = text_pipeline.token_counts(enc.input_ids, len(tokenizer))
        it = batching.Batches(enc, batch_size, seed=0, pad_id=0, pad_multiple=32)
    else:
        data = dict(array_record=path, max_length=128, max_train_docs=0, max_heldout_docs=0)
        data.update(read_threads=2, prefetch=8, workers=0)
        train = dict(batch_size=batch_size, seed=0, pad_multiple=32, group_by_length=True)
        cfg = ml_collections.ConfigDict({"data": data, "train": train, "teacher": {"cache": None}})
        it, _held = general.streamed(cfg, tokenizer)
        counts = array_records.token_counts(path, "train")
    ready = status_mb("VmHWM")
    tokens = 0
    for _ in range(batches):
        tokens += int(next(it)["attention_mask"].sum())
    del counts
    if hasattr(it, "close"):
        it.close()
    return {
        "baseline_mb": round(base, 1),
        "ready_mb": round(ready, 1),
        "peak_mb": round(status_mb("VmHWM"), 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "tokens": tokens,
    }


def write_text(path: Path, scale: int) -> Path:
    """The BBC articles repeated ``scale`` times, one paragraph each: the in-memory job's corpus
    (general.load_texts splits held-out documents off the end, as it does for any text file)."""
    from flaxdistil.data import corpora

    if not path.exists():
        texts = [" ".join(t.split()) for _, t in corpora.bbc_documents()]
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(scale):
                f.write("\n\n".join(texts) + "\n\n")
    return path


def train_case(path: str, mode: str, steps: int, batch_size: int, work: Path) -> dict:
    """The whole general job (scripts/distill.py: MiniLM-L6 teacher -> 3-layer student, DistilBERT's
    triple loss) for ``steps`` steps on the corpus, in this fresh process: its peak RSS."""
    import shutil

    from flaxdistil import runner
    from flaxdistil.jobs import general

    workdir = work / f"train_{mode}_{Path(path).stem}"
    shutil.rmtree(workdir, ignore_errors=True)
    argv = ["--config", str(ROOT / "configs" / "minilm_l3.py"), "--workdir", str(workdir)]
    argv += [f"--config.teacher.path={teacher(work)}", f"--config.train.steps={steps}"]
    argv += [f"--config.train.batch_size={batch_size}", "--config.data.max_length=128"]
    argv += ["--config.train.checkpoint_every=0", "--config.export.hf=False"]
    if mode == "memory":  # held out: BBC x1's 44 documents, as the ArrayRecord split holds
        argv += [f"--config.data.corpus={path}", "--config.data.max_train_docs=0"]
        argv += ["--config.data.max_heldout_docs=44"]
    else:
        argv += ["--config.data.max_heldout_docs=0"]
        argv += [f"--config.data.array_record={path}"]
    t0 = time.perf_counter()
    runner.run(general.run, argv)
    return {
        "peak_mb": round(status_mb("VmHWM"), 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "steps": steps,
    }


def teacher(work: Path) -> str:
    """`make teacher`'s MLM teacher if it is there, else all-MiniLM-L6-v2 with a randomly
    initialised MLM head (saved once under ``work``): memory, not quality, is measured."""
    from flaxdistil import assets, hf

    if (assets.minilm_mlm_teacher_path() / "config.json").exists():
        return "minilm-mlm"
    out = work / "minilm_random_mlm_head"
    if not (out / "config.json").exists():
        import jax

        pre = hf.load_pretrained("minilm", "mlm", rng=jax.random.key(0))
        hf.save_pretrained(out, pre.params, pre.config, "mlm", tokenizer_from=pre.path)
    return str(out)


def child(flag: str, path: str, mode: str, extra: list[str], what: str) -> dict:
    """One case in a fresh process (its peak RSS is its own): the JSON line it prints."""
    cmd = [sys.executable, __file__, flag, path, mode, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        sys.exit(f"{what} case {mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def rows_for(work: Path, corpora: dict, scales: list[int], args, train: bool) -> list[dict]:
    """Per scale, in memory and streamed: the data path alone, or the whole training job."""
    rows = []
    what = "training job" if train else "data path"
    for scale in scales:
        c = corpora[scale]
        if train:
            memory = str(write_text(work / f"bbc_x{scale}.txt", scale))
            flag, extra = "--train-case", ["--work", str(work), "--steps", str(args.steps)]
        else:
            memory, flag, extra = c["npz"], "--case", ["--batches", str(args.batches)]
        extra += ["--batch_size", str(args.batch_size)]
        for mode, path in (("memory", memory), ("stream", c["array_record"])):
            m = child(flag, path, mode, extra, f"{what} x{scale}")
            rows.append({"scale": scale, "mode": mode, "what": what, **c, **m})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_stream"))
    ap.add_argument("--work", default="/tmp/flaxdistil_bench_stream", help="corpus files")
    ap.add_argument("--scales", default="1,10")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--train", action="store_true", help="also the whole training job, peak RSS")
    ap.add_argument("--steps", type=int, default=20, help="training steps of --train")
    ap.add_argument("--case", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--train-case", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:  # a child: one measurement, one JSON line
        print(json.dumps(case(*args.case, args.batches, args.batch_size)), flush=True)
        return
    if args.train_case:
        m = train_case(*args.train_case, args.steps, args.batch_size, Path(args.work))
        print(json.dumps(m), flush=True)
        return
    scales = [int(s) for s in args.scales.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpora = build(work, scales, 128)
    rows = rows_for(work, corpora, scales, args, train=False)
    if args.train:
        rows += rows_for(work, corpora, scales, args, train=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print("| what | corpus | sequences | path | peak RSS MB | over the RSS before, MB | s |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        extra = f"{r['peak_mb'] - r['baseline_mb']:.0f}" if "baseline_mb" in r else ""
        print(
            f"| {r['what']} | BBC x{r['scale']} | {r['sequences']:,} | {r['mode']} | "
            f"{r['peak_mb']:.0f} | {extra} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
