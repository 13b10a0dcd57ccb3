"""Tokenised corpora on disk as ArrayRecord shards: written once by scripts/prepare_data.py,
streamed by flaxdistil/data/stream.py without holding the corpus in memory.

A prepared directory holds, per split (``train``, ``heldout``):

- ``<split>-NNNNN-of-MMMMM.array_record``: one record per sequence, its token ids as
  little-endian int32 bytes (``[CLS] chunk [SEP]``, exactly what text_pipeline.tokenize_corpus
  gives), written with ``group_size:1`` (what grain's random access needs);
- ``<split>.lengths``: every sequence's length as raw uint16, so the stream can plan
  length-grouped batches (and their padded width) without reading the records;
- ``<split>.counts.npy``: token counts over the split (the MLM smoothing weights);

and one ``manifest.json``: the format, the tokenizer's fingerprint, max_length and the filter
settings, and per split the shard files and the document / sequence / token counts.

Task data (``scripts/prepare_data.py --task``, format ``flaxdistil-task-examples-1``) uses the
same layout for the splits ``train``, ``validation``, ``test``; a record is one tokenised
example: int32 little-endian ``[L, K, token_level, float_labels]`` then its L input ids, L token
type ids, K labels (int32, or float32 when float_labels: a class id, a regression target, a
multi-hot row; token level: L tag ids, -100 off first sub-tokens) and, token level, L word ids.
The manifest's ``task`` says the task type, label names and the shape of one example's labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from flaxdistil.data import text_pipeline

FORMAT = "flaxdistil-token-ids-1"
TASK_FORMAT = "flaxdistil-task-examples-1"
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")
TASK_SPLITS = ("train", "validation", "test")
MAX_LENGTH = np.iinfo(np.uint16).max  # the lengths file is uint16


class SplitWriter:
    """Appends sequences to ``<split>-*.array_record`` shards of ``shard_size`` records."""

    def __init__(self, out_dir: Path, split: str, vocab_size: int, shard_size: int = 100_000):
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.out, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.counts = np.zeros(vocab_size, np.int64)
        self.sequences = self.tokens = self.documents = 0
        self.tmp_files: list[Path] = []
        self.lengths = open(self.out / f"{split}.lengths.tmp", "wb")  # noqa: SIM115 - closed in close()
        self.writer = None

    def add_documents(self, documents: list[list[np.ndarray]]) -> None:
        """Each document's sequences, in order; counted in one bincount per call."""
        seqs = [np.asarray(s, np.int32) for doc in documents for s in doc]
        for seq in seqs:
            self._add(seq)
        self.documents += len(documents)
        if seqs:
            counts = np.bincount(np.concatenate(seqs), minlength=len(self.counts))
            self.counts += counts[: len(self.counts)]

    def _add(self, seq: np.ndarray) -> None:
        self.add_record(seq.astype("<i4").tobytes(), len(seq))

    def add_record(self, record: bytes, length: int) -> None:
        """One record of a sequence of ``length`` tokens (the lengths file plans batches)."""
        from array_record.python.array_record_module import ArrayRecordWriter

        if self.sequences % self.shard_size == 0:
            self._close_shard()
            self.tmp_files.append(self.out / f"{self.split}-{len(self.tmp_files):05d}.tmp")
            self.writer = ArrayRecordWriter(str(self.tmp_files[-1]), "group_size:1")
        self.writer.write(record)
        self.lengths.write(np.uint16(length).tobytes())
        self.sequences, self.tokens = self.sequences + 1, self.tokens + length

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> dict:
        """Rename the shards to their final ``-of-`` names; this split's manifest entry."""
        self._close_shard()
        self.lengths.close()
        n, files = len(self.tmp_files), []
        for i, tmp in enumerate(self.tmp_files):
            files.append(f"{self.split}-{i:05d}-of-{n:05d}.array_record")
            tmp.replace(self.out / files[-1])
        (self.out / f"{self.split}.lengths.tmp").replace(self.out / f"{self.split}.lengths")
        np.save(self.out / f"{self.split}.counts.npy", self.counts)
        per_file = [self.shard_size] * (n - 1) + [self.sequences - self.shard_size * (n - 1)]
        return {
            "files": files,
            "records": per_file if n else [],
            "documents": self.documents,
            "sequences": self.sequences,
            "tokens": self.tokens,
        }


def _start(out_dir, max_length: int) -> Path:
    """The output directory, made, without a manifest until it is complete again."""
    if not 3 <= max_length <= MAX_LENGTH:
        raise ValueError(f"max_length must be in [3, {MAX_LENGTH}], got {max_length}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest = not a finished directory
    return out


def _split_writer(out: Path, split: str, vocab_size: int, shard_size: int) -> SplitWriter:
    for stale in out.glob(f"{split}-*-of-*.array_record"):  # an earlier run's shards
        stale.unlink()
    return SplitWriter(out, split, vocab_size, shard_size)


def write(
    out_dir: str | Path,
    splits: dict[str, Iterable[str]],
    tokenizer,
    max_length: int,
    source: str,
    shard_size: int = 100_000,
    batch_docs: int = 1000,
) -> dict:
    """Tokenise the documents of each split (``{'train': texts, 'heldout': texts}``) into
    ``out_dir`` as text_pipeline.tokenize_corpus does, ``batch_docs`` at a time; the manifest."""
    out = _start(out_dir, max_length)
    entries = {}
    for split, texts in splits.items():
        writer = _split_writer(out, split, len(tokenizer), shard_size)
        for docs in _chunks(texts, batch_docs):
            ids = text_pipeline.tokenize_documents(docs, tokenizer, batch_docs)
            writer.add_documents([_chunk(x, tokenizer, max_length) for x in ids])
        entries[split] = writer.close()
        if not entries[split]["sequences"]:
            raise ValueError(
                f"{source} split {split!r}: no sequences of >= {text_pipeline.MIN_LENGTH} "
                f"tokens in {entries[split]['documents']} documents"
            )
    return write_manifest(out, entries, tokenizer, max_length, source)


def write_manifest(
    out: Path, entries: dict, tokenizer, max_length: int, source: str, fmt: str = FORMAT, **extra
) -> dict:
    """The manifest of the splits ``entries`` (SplitWriter.close's), written last: a directory
    with a manifest is complete."""
    manifest = {
        "format": fmt,
        "source": source,
        "tokenizer": {
            "fingerprint": text_pipeline.tokenizer_fingerprint(tokenizer),
            "name_or_path": str(tokenizer.name_or_path),
            "vocab_size": len(tokenizer),
        },
        "max_length": max_length,
        "min_length": text_pipeline.MIN_LENGTH,
        "max_unk_fraction": text_pipeline.MAX_UNK_FRACTION,
        "splits": entries,
        **extra,
    }
    tmp = out / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    return manifest


def _chunks(texts: Iterable[str], n: int):
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunk(ids: np.ndarray, tokenizer, max_length: int) -> list[np.ndarray]:
    t = tokenizer
    return text_pipeline.chunk_and_filter(
        [ids], max_length, t.cls_token_id, t.sep_token_id, t.unk_token_id
    )


# ---------------------------------------------------------------------------- reading


def read_manifest(directory: str | Path, formats: tuple[str, ...] = (FORMAT,)) -> dict:
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(
            f"data.array_record {d} is not a directory (expected the --out of "
            "scripts/prepare_data.py)"
        )
    path = d / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{d} has no {MANIFEST}: not a finished scripts/prepare_data.py output"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in formats:
        want = " or ".join(map(repr, formats))
        hint = {
            FORMAT: " (a corpus: the general job's data)",
            TASK_FORMAT: " (task examples: a task job's data)",
        }.get(manifest.get("format"), "")
        raise ValueError(f"{path}: expected format {want}, found {manifest.get('format')!r}{hint}")
    return manifest


def check_manifest(manifest: dict, directory, tokenizer, max_length: int) -> None:
    """The prepared data must come from the run's tokenizer and fit its max_length."""
    want = text_pipeline.tokenizer_fingerprint(tokenizer)
    have = manifest["tokenizer"]
    if have["fingerprint"] != want:
        raise ValueError(
            f"data.array_record {directory} was tokenised with {have['name_or_path']} "
            f"(fingerprint {have['fingerprint']}), the run's tokenizer {tokenizer.name_or_path} "
            f"has fingerprint {want}: re-run scripts/prepare_data.py with --tokenizer set to it"
        )
    if manifest["max_length"] != max_length:
        raise ValueError(
            f"data.array_record {directory} holds sequences of max_length "
            f"{manifest['max_length']}, the config asks data.max_length={max_length}: set it to "
            f"{manifest['max_length']} or re-run scripts/prepare_data.py --max_length {max_length}"
        )


def split_info(manifest: dict, directory, split: str) -> dict:
    if split not in manifest["splits"]:
        raise ValueError(f"{directory} has splits {sorted(manifest['splits'])}, not {split!r}")
    return manifest["splits"][split]


def source(directory, split: str, manifest: dict | None = None):
    """The split as a grain ArrayRecordDataSource (record i: bytes of sequence i); its index
    stays on disk (``index_storage_option: offloaded``), so memory does not grow with it."""
    import grain

    d = Path(directory)
    info = split_info(manifest or read_manifest(d, (FORMAT, TASK_FORMAT)), d, split)
    # "file[0:n]" with the counts from the manifest: without them the source opens every file
    # with a full in-memory index just to count its records (memory that grows with the shards)
    paths = [f"{d / f}[0:{n}]" for f, n in zip(info["files"], info["records"])]
    return grain.sources.ArrayRecordDataSource(
        paths, {"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"}
    )


def lengths(directory, split: str) -> np.ndarray:
    """The split's sequence lengths, memory-mapped (2 bytes per sequence, read on demand)."""
    return np.memmap(Path(directory) / f"{split}.lengths", dtype=np.uint16, mode="r")


def decode(record: bytes) -> np.ndarray:
    return np.frombuffer(record, dtype="<i4").astype(np.int32)


def token_counts(directory, split: str) -> np.ndarray:
    return np.load(Path(directory) / f"{split}.counts.npy")


def load_encoded(directory, split: str, limit: int = 0):
    """A (small) split whole in memory as tasks.Encoded rows: the held-out set for evaluation."""
    from flaxdistil.data import tasks

    src = source(directory, split)
    n = min(limit, len(src)) if limit else len(src)
    rows = [decode(r) for r in src.__getitems__(range(n))]
    return tasks.from_rows(rows, None, np.zeros(len(rows), np.int32))


# ---------------------------------------------------------------------------- task examples


def encode_example(ids, types, labels, word_ids=None) -> bytes:
    """One task example as a record (the layout in the module docstring)."""
    labels = np.asarray(labels).reshape(-1)
    is_float = labels.dtype.kind == "f"
    token_level = word_ids is not None
    head = np.array([len(ids), len(labels), token_level, is_float], "<i4")
    parts = [head, np.asarray(ids, "<i4"), np.asarray(types, "<i4")]
    parts.append(labels.astype("<f4" if is_float else "<i4"))
    if token_level:
        parts.append(np.asarray(word_ids, "<i4"))
    return b"".join(p.tobytes() for p in parts)


def decode_examples(records, label_shape=()):
    """Task records -> tasks.Encoded rows (row-level labels reshaped to ``label_shape`` each)."""
    from flaxdistil.data import tasks

    ids, types, labels, words, token_level = [], [], [], [], False
    for r in records:
        length, k, token_level, is_float = np.frombuffer(r, "<i4", 4)
        body = np.frombuffer(r, "<i4", offset=16)
        ids.append(body[:length])
        types.append(body[length : 2 * length])
        lab = body[2 * length : 2 * length + k]
        labels.append(lab.view("<f4").astype(np.float32) if is_float else lab.astype(np.int32))
        if token_level:
            words.append(body[2 * length + k : 3 * length + k])
    flat = lambda xs: np.concatenate(xs).astype(np.int32) if xs else np.zeros(0, np.int32)
    lengths = np.array([len(x) for x in ids], np.int32)
    if token_level:
        return tasks.Encoded(flat(ids), flat(types), lengths, flat(labels), True, flat(words))
    rows = np.stack(labels) if labels else np.zeros((0, 1), np.int32)
    return tasks.Encoded(
        flat(ids), flat(types), lengths, rows.reshape(len(rows), *label_shape), False
    )


def write_task(out_dir, data, tokenizer, max_length: int, source: str, shard_size: int = 100_000):
    """A task's tokenised splits (task_data.TaskData, not QA) as records; the manifest."""
    spec = data.spec
    if spec.task_type == "qa":
        raise ValueError(
            "QA features (doc-stride windows, span post-processing) are not "
            "prepared as records: train QA from data.dataset or data.train_file"
        )
    out = _start(out_dir, max_length)
    entries, label_shape = {}, ()
    for split in TASK_SPLITS:
        enc = data.splits[split]
        writer = _split_writer(out, split, len(tokenizer), shard_size)
        offsets = enc.offsets
        label_shape = tuple(enc.labels.shape[1:]) if not enc.token_level else ()
        for i in range(len(enc)):
            lo, hi = offsets[i], offsets[i + 1]
            labels = enc.labels[lo:hi] if enc.token_level else enc.labels[i]
            words = enc.word_ids[lo:hi] if enc.token_level else None
            writer.add_record(
                encode_example(enc.input_ids[lo:hi], enc.token_type_ids[lo:hi], labels, words),
                int(hi - lo),
            )
        writer.documents = len(enc)
        entries[split] = writer.close()
    task = {
        "task_type": spec.task_type,
        "label_names": list(spec.label_names) if spec.label_names else None,
        "num_labels": spec.n_labels,
        "label_shape": list(label_shape),
        "skipped_rows": [str(r) for r in data.reports if r.skipped],
    }
    return write_manifest(out, entries, tokenizer, max_length, source, TASK_FORMAT, task=task)


def load_task_split(directory, split: str, manifest: dict):
    """A (small) task split whole in memory as tasks.Encoded: validation and test."""
    src = source(directory, split, manifest)
    shape = tuple(manifest["task"]["label_shape"])
    return decode_examples(src.__getitems__(range(len(src))), shape)
