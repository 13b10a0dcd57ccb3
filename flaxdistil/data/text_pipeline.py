"""Tokenise documents with the teacher's tokenizer into ``[CLS] ... [SEP]`` chunks, cached on disk.

Follows the Hugging Face distillation project (``binarized_data.py``, ``LmSeqsDataset``,
``token_counts.py``): long sequences are cut into chunks of at most ``max_length`` tokens, each
with its own [CLS]/[SEP]; sequences shorter than 12 tokens and those more than half [UNK] are
dropped; token counts give the MLM smoothing weights ``counts ** -0.7``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from flaxdistil import assets

MIN_LENGTH = 12  # LmSeqsDataset.remove_empty_sequences keeps len > 11
MAX_UNK_FRACTION = 0.5  # LmSeqsDataset.remove_unknown_sequences


def load_tokenizer(path: str | Path):
    """The teacher's fast Hugging Face tokenizer from a local directory."""
    from transformers import AutoTokenizer  # imports torch: only when a tokenizer is needed

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.is_fast:
        raise ValueError(
            f"expected a fast tokenizer (tokenizer.json) in {path}, got {type(tokenizer)}"
        )
    return tokenizer


def special_ids(tokenizer) -> np.ndarray:
    """Sorted ids of the tokenizer's special tokens ([PAD], [UNK], [CLS], [SEP], [MASK] ...)."""
    return np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int32)


def chunk_and_filter(
    token_ids: Iterable[Sequence[int]],
    max_length: int,
    cls_id: int,
    sep_id: int,
    unk_id: int,
    min_length: int = MIN_LENGTH,
    max_unk_fraction: float = MAX_UNK_FRACTION,
) -> list[np.ndarray]:
    """``[CLS] chunk [SEP]`` sequences of at most ``max_length`` from documents without specials.

    A document of n tokens gives ceil(n / (max_length - 2)) chunks; chunks shorter than
    ``min_length`` (specials included) or with more than ``max_unk_fraction`` [UNK] are dropped.
    """
    if max_length < 3:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
    body = max_length - 2
    out = []
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int32)
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            if len(piece) + 2 < min_length or np.mean(piece == unk_id) > max_unk_fraction:
                continue
            out.append(np.concatenate([[cls_id], piece, [sep_id]]).astype(np.int32))
    return out


def tokenize_documents(texts: Sequence[str], tokenizer, batch_size: int = 1000) -> list[np.ndarray]:
    """Token ids of each text, without special tokens and without truncation."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]),
            add_special_tokens=False,
            truncation=False,
            verbose=False,
        )
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what a fast tokenizer does (vocabulary, normaliser, specials), not of its
    files: the same tokenizer saved by another transformers version gets the same hash."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None), spec.pop("padding", None)  # call options, not the tokenizer
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprint(texts: Sequence[str], tokenizer_dir: Path, max_length: int, extra: dict) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        f = Path(tokenizer_dir) / name
        if f.exists():
            h.update(name.encode() + f.read_bytes())
    h.update(json.dumps({"max_length": max_length, **extra}, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode("utf-8", "replace") + b"\x00")
    return h.hexdigest()[:16]


def tokenize_corpus(
    texts: Sequence[str],
    tokenizer_dir: str | Path,
    max_length: int = 128,
    name: str = "corpus",
    cache_dir: str | Path | None = None,
    min_length: int = MIN_LENGTH,
    max_unk_fraction: float = MAX_UNK_FRACTION,
) -> list[np.ndarray]:
    """Chunked, filtered ``[CLS] ... [SEP]`` id sequences of ``texts``, cached as npz.

    The cache key hashes the texts, the tokenizer files and the settings, so a second call with
    the same inputs only reads ``<cache_dir>/<name>-<hash>.npz`` (default cache:
    ``cache_dir()/tokenized``).
    """
    texts = list(texts)
    settings = {"min_length": min_length, "max_unk_fraction": max_unk_fraction}
    key = _fingerprint(texts, Path(tokenizer_dir), max_length, settings)
    root = Path(cache_dir) if cache_dir else assets.cache_dir() / "tokenized"
    path = root / f"{name}-{key}.npz"
    if path.exists():
        return load_sequences(path)
    tokenizer = load_tokenizer(tokenizer_dir)
    sequences = chunk_and_filter(
        tokenize_documents(texts, tokenizer),
        max_length,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.unk_token_id,
        min_length,
        max_unk_fraction,
    )
    save_sequences(path, sequences)
    return sequences


def save_sequences(path: str | Path, sequences: Sequence[np.ndarray]) -> None:
    """Flat int32 ids + offsets in one npz, written to a temporary name then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate(sequences).astype(np.int32) if sequences else np.zeros(0, np.int32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # processes may race
    np.savez(tmp, ids=flat, offsets=offsets)
    tmp.replace(path)


def load_sequences(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as data:
        flat, offsets = data["ids"], data["offsets"]
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def token_counts(sequences: Iterable[np.ndarray] | np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each id in ``sequences`` (flat array or iterable of arrays), [V] int64."""
    if isinstance(sequences, np.ndarray):
        flat = sequences.reshape(-1)
    else:
        parts = [np.asarray(s).reshape(-1) for s in sequences]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.bincount(flat.astype(np.int64), minlength=vocab_size)[:vocab_size]


def smoothing_weights(
    counts: np.ndarray, special_ids: Sequence[int], smoothing: float = 0.7
) -> np.ndarray:
    """Per-token MLM selection weights ``max(count, 1) ** -smoothing``; special tokens get 0.

    As HF distillation's ``--mlm_smoothing``: rare tokens are masked more often than their
    frequency, which counters the flood of easy function words.
    """
    weights = np.maximum(np.asarray(counts, dtype=np.float64), 1.0) ** -smoothing
    weights[np.asarray(special_ids, dtype=np.int64)] = 0.0
    return weights.astype(np.float32)
