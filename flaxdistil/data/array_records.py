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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from flaxdistil.data import text_pipeline

FORMAT = "flaxdistil-token-ids-1"
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")
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
        from array_record.python.array_record_module import ArrayRecordWriter

        if self.sequences % self.shard_size == 0:
            self._close_shard()
            self.tmp_files.append(self.out / f"{self.split}-{len(self.tmp_files):05d}.tmp")
            self.writer = ArrayRecordWriter(str(self.tmp_files[-1]), "group_size:1")
        self.writer.write(seq.astype("<i4").tobytes())
        self.lengths.write(np.uint16(len(seq)).tobytes())
        self.sequences, self.tokens = self.sequences + 1, self.tokens + len(seq)

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
    if not 3 <= max_length <= MAX_LENGTH:
        raise ValueError(f"max_length must be in [3, {MAX_LENGTH}], got {max_length}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest = not a finished directory
    entries = {}
    for split, texts in splits.items():
        for stale in out.glob(f"{split}-*-of-*.array_record"):  # an earlier run's shards
            stale.unlink()
        writer = SplitWriter(out, split, len(tokenizer), shard_size)
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


def write_manifest(out: Path, entries: dict, tokenizer, max_length: int, source: str) -> dict:
    """The manifest of the splits ``entries`` (SplitWriter.close's), written last: a directory
    with a manifest is complete."""
    manifest = {
        "format": FORMAT,
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


def read_manifest(directory: str | Path) -> dict:
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
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, found {manifest.get('format')!r}")
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
    info = split_info(manifest or read_manifest(d), d, split)
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
