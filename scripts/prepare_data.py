"""Tokenise a corpus (general distillation) or a task's examples once into ArrayRecord shards.

    python scripts/prepare_data.py --tokenizer minilm --text corpus.txt --out data/corpus_ar
    python scripts/prepare_data.py --tokenizer minilm --text docs_dir/ --out data/docs_ar
    python scripts/prepare_data.py --tokenizer minilm --tfds english_corpus --out data/english_ar
    python scripts/prepare_data.py --tokenizer bert-base-uncased \\
        --hf wikitext:wikitext-103-raw-v1 --heldout_split validation --out data/wikitext_ar
    python scripts/distill.py --config configs/minilm_l3.py --workdir W \\
        --config.data.array_record=data/corpus_ar

Task data (streamed task fine-tuning / distillation):

    python scripts/prepare_data.py --tokenizer minilm --task movie_snippets --out data/movie_ar
    python scripts/prepare_data.py --tokenizer minilm --task brown_pos \
        --task_type token_classification --out data/pos_ar
    python scripts/prepare_data.py --tokenizer minilm --task reviews.csv --label_names neg,pos \
        --out data/reviews_ar
    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir W \
        --config.data.array_record=data/movie_ar

--task: one of flaxdistil's TFDS builders, a TFDS catalog name or a local CSV / TSV / JSONL file
(read as data.train_file; missing validation / test parts carved from it), read and validated as
the task jobs read data.dataset / data.train_file (bad rows skipped and counted), tokenised with
the task's label alignment, written as one record per example for the splits train, validation
and test. QA is not prepared (its features are doc-stride windows). The examples are read into
memory once here; training then streams them.

--text: a .txt file, one document per blank-line-separated paragraph (--per_line: per line), its
last 2% held out as the general job's in-memory path does; or a directory, one document per
*.txt file. --tfds: one of flaxdistil's TFDS builders or a catalog name; --hf: a Hugging Face
dataset (``name`` or ``name:config``, streamed; needs ``pip install datasets`` and network).
The sequences are text_pipeline.tokenize_corpus's: [CLS] chunk [SEP] of at most --max_length,
shorter than 12 tokens or mostly [UNK] dropped. Writes <out>/{train,heldout}-*.array_record,
lengths, token counts and manifest.json (flaxdistil/data/array_records.py).
"""

import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxdistil.runner import ArgumentParser, UsageError, user_errors  # noqa: E402


def parse(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="HF dir, asset name or Hub id")
    ap.add_argument("--out", required=True, type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, help="a .txt file or a directory of .txt files")
    src.add_argument("--tfds", help="a TFDS name (flaxdistil's builders or the catalog)")
    src.add_argument("--hf", help="a Hugging Face dataset: name or name:config")
    src.add_argument("--task", help="task data: a TFDS name or a local CSV/TSV/JSONL file")
    ap.add_argument("--task_type", default="classification", help="--task: data.task's values")
    ap.add_argument("--label_names", default="", help="--task file: comma-separated labels")
    ap.add_argument("--max_train_examples", type=int, default=0, help="--task: 0 = all")
    ap.add_argument("--max_eval_examples", type=int, default=0, help="--task: 0 = all")
    ap.add_argument("--per_line", action="store_true", help="--text file: a document per line")
    ap.add_argument("--train_split", default="train")
    ap.add_argument("--heldout_split", default="", help="default: heldout (TFDS), validation (HF)")
    ap.add_argument("--text_column", default="text", help="--hf: the text column")
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--max_train_docs", type=int, default=0, help="0 = all")
    ap.add_argument("--max_heldout_docs", type=int, default=0, help="0 = all")
    ap.add_argument("--shard_size", type=int, default=100_000, help="sequences per shard")
    return ap.parse_args(argv)


def text_splits(path: Path, per_line: bool) -> tuple[dict, str]:
    """(train, held-out) documents of a text file (its 2% tail held out) or directory."""
    from flaxdistil.data import corpora

    path = path.expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--text {path} does not exist (expected a .txt file or a dir)")
    if path.is_dir():
        docs = lambda: (t for _, t in corpora.text_dir_documents(path))  # noqa: E731
    else:
        docs = lambda: (t for _, t in corpora.text_file_documents(path, per_line))  # noqa: E731
    n = sum(1 for _ in docs())  # one pass to count, so the documents stream in the next
    if n < 2:
        raise ValueError(f"--text {path} has {n} documents: expected at least 2 (train, held-out)")
    n_train = n - corpora.heldout_count(n)
    splits = {
        "train": itertools.islice(docs(), n_train),
        "heldout": itertools.islice(docs(), n_train, None),
    }
    return splits, str(path)


def dataset_splits(args) -> tuple[dict, str]:
    if args.text is not None:
        return text_splits(args.text, args.per_line)
    if args.tfds:
        from flaxdistil.data import tfds_builders

        held = args.heldout_split or "heldout"
        read = lambda split: (ex["text"] for ex in tfds_builders.load(args.tfds, split))  # noqa: E731
        return {"train": read(args.train_split), "heldout": read(held)}, f"tfds:{args.tfds}"
    from flaxdistil.data import corpora

    held = args.heldout_split or "validation"
    read = lambda s: (t for _, t in corpora.hf_documents(args.hf, s, args.text_column))  # noqa: E731
    return {"train": read(args.train_split), "heldout": read(held)}, f"hf:{args.hf}"


def task_data_config(args):
    """The task jobs' data config (configs/common.py's TASK_DATA) for --task."""
    import ml_collections

    from configs import common

    d = ml_collections.ConfigDict(common.TASK_DATA)
    d.task, d.max_length, d.label_names = args.task_type, args.max_length, args.label_names
    d.max_train_examples, d.max_eval_examples = args.max_train_examples, args.max_eval_examples
    if Path(args.task).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        d.train_file, d.dataset = str(Path(args.task).expanduser()), ""
    else:
        d.dataset = args.task
    return d


def prepare_task(args, tokenizer) -> None:
    from flaxdistil.data import array_records, task_data

    d = task_data_config(args)
    if d.train_file and not Path(d.train_file).is_file():
        raise FileNotFoundError(
            f"--task {d.train_file} does not exist (expected a CSV / TSV / JSONL file or a "
            "TFDS dataset name)"
        )
    if args.task_type == "qa":
        raise UsageError("--task_type qa is not prepared as records: train QA from the dataset")
    t0 = time.perf_counter()
    data = task_data.load_task_data(d, tokenizer)
    for report in data.reports:
        if report.skipped:
            print(report, flush=True)
    manifest = array_records.write_task(
        args.out, data, tokenizer, args.max_length, f"task:{args.task}", args.shard_size
    )
    for split, e in manifest["splits"].items():
        print(f"{split}: {e['sequences']:,} examples, {e['tokens']:,} tokens", flush=True)
    print(f"wrote {args.out} ({manifest['task']['task_type']}) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip


def main(argv=None) -> None:
    args = parse(argv)
    with user_errors():
        from flaxdistil import hf
        from flaxdistil.data import array_records, text_pipeline

        if args.task:
            tokenizer = text_pipeline.load_tokenizer(hf.resolve(args.tokenizer))
            return prepare_task(args, tokenizer)

        if args.shard_size < 1 or args.max_train_docs < 0 or args.max_heldout_docs < 0:
            raise UsageError("--shard_size must be positive and --max_*_docs non-negative")
        splits, source = dataset_splits(args)
        limits = {"train": args.max_train_docs, "heldout": args.max_heldout_docs}
        splits = {k: itertools.islice(v, limits[k] or None) for k, v in splits.items()}
        tokenizer = text_pipeline.load_tokenizer(hf.resolve(args.tokenizer))
        t0 = time.perf_counter()
        manifest = array_records.write(
            args.out, splits, tokenizer, args.max_length, source, args.shard_size
        )
        for split, e in manifest["splits"].items():
            print(
                f"{split}: {e['documents']:,} documents -> {e['sequences']:,} sequences, "
                f"{e['tokens']:,} tokens in {len(e['files'])} shards",
                flush=True,
            )
        print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
