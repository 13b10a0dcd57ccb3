"""Fine-tuning task data: read, validate, split, tokenise (cached) and batch.

Flow: `read_examples(path, spec)` (or `read_ag_news_csv`, `load_tfds_catalog`) -> `(examples,
report)`; `split_examples` -> train/dev/test; `encode(examples, tokenizer, spec, ...)` ->
`Encoded` (ragged token ids, cached as .npz); `batches(encoded, ...)` -> padded numpy dicts.

Bad rows are skipped and counted per reason in a `DataReport` instead of failing the run: real
CSVs have a few empty or mislabelled lines, and the caller should see how many were dropped.
A file with no usable row at all raises, since that is almost always a wrong column or label set.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flaxdistil.losses import IGNORE_INDEX

TASK_TYPES = ("classification", "regression", "multilabel", "token_classification", "qa")
AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
_CACHE_VERSION = 2  # bump when the Encoded layout changes, so stale caches are not reused


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task's rows look like. Classification-like tasks need label_names or num_labels;
    labels may be given by name or by index. Token classification reads a list of words from
    `text_column` and a list of tags from `label_column`."""

    task_type: str = "classification"
    label_names: tuple[str, ...] | None = None
    num_labels: int | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    multilabel_sep: str = ","  # separates label names in one CSV cell for multilabel tasks

    def __post_init__(self):
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type {self.task_type!r} is not one of {TASK_TYPES}")
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))
        needs_labels = self.task_type in ("classification", "multilabel", "token_classification")
        if needs_labels and self.n_labels is None:
            raise ValueError(f"a {self.task_type} TaskSpec needs label_names or num_labels")

    @property
    def n_labels(self) -> int | None:
        return len(self.label_names) if self.label_names is not None else self.num_labels


@dataclasses.dataclass
class Example:
    text: str | list[str]  # a list of words for token classification
    label: int | float | tuple[int, ...] | list[int]
    text_pair: str | None = None
    row: int = 0  # 1-based row/line number in the source, for error messages


@dataclasses.dataclass
class DataReport:
    source: str
    total: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    first_values: dict[str, list] = dataclasses.field(default_factory=dict)  # what was found

    def skip(self, reason: str, row: int, keep_rows: int = 5, value=None) -> None:
        self.skipped[reason] += 1
        rows = self.first_rows.setdefault(reason, [])
        if len(rows) < keep_rows:
            rows.append(row)
        values = self.first_values.setdefault(reason, [])
        if value is not None and len(values) < keep_rows and value not in values:
            values.append(value)

    def __str__(self) -> str:
        lines = [f"{self.source}: kept {self.kept}/{self.total} rows"]
        for reason, n in self.skipped.most_common():
            found = self.first_values.get(reason)
            found = f", found {', '.join(map(repr, found))}" if found else ""
            lines.append(f"  skipped {n} ({reason}), e.g. rows {self.first_rows[reason]}{found}")
        return "\n".join(lines)


# --- row validation ------------------------------------------------------------------------


class _BadRow(Exception):
    """Raised inside row parsing; the reason string becomes a DataReport counter key."""


def _class_index(value, spec: TaskSpec) -> int:
    """A class given by name (preferred) or by integer index."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _BadRow("missing_label")
    if isinstance(value, str):
        value = value.strip()
        if spec.label_names and value in spec.label_names:
            return spec.label_names.index(value)
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise _BadRow("unknown_label", value) from None
    if isinstance(value, float) and index != value:
        raise _BadRow("unknown_label", value)
    if not 0 <= index < spec.n_labels:
        raise _BadRow("label_out_of_range", value)
    return index


def _regression_target(value) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _BadRow("missing_label")
    try:
        target = float(value)
    except (TypeError, ValueError):
        raise _BadRow("non_numeric_target") from None
    if not math.isfinite(target):
        raise _BadRow("non_numeric_target")
    return target


def _parse_label(value, spec: TaskSpec):
    if spec.task_type == "regression":
        return _regression_target(value)
    if spec.task_type == "multilabel":
        if value is None or (isinstance(value, str) and not value.strip()):
            raise _BadRow("missing_label")
        items = value.split(spec.multilabel_sep) if isinstance(value, str) else value
        return tuple(sorted({_class_index(v, spec) for v in items}))
    if spec.task_type == "token_classification":
        if not isinstance(value, list | tuple) or not value:
            raise _BadRow("missing_label")
        return [_class_index(v, spec) for v in value]
    return _class_index(value, spec)


def _text(value) -> str:
    if isinstance(value, bytes):  # TFDS Text features come back as bytes
        value = value.decode("utf-8")
    if value is None or not str(value).strip():
        raise _BadRow("empty_text")
    return str(value).strip()


def _words(value) -> list[str]:
    words = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in (value or [])]
    if not words or not any(w.strip() for w in words):
        raise _BadRow("empty_text")
    return words


def parse_row(raw: dict, spec: TaskSpec, row: int) -> Example:
    """One source row -> Example, or _BadRow(reason)."""
    if not isinstance(raw, dict):
        raise _BadRow("invalid_json")
    if spec.task_type == "token_classification":
        words = _words(raw.get(spec.text_column))
        tags = _parse_label(raw.get(spec.label_column), spec)
        if len(tags) != len(words):
            raise _BadRow("length_mismatch")
        return Example(words, tags, row=row)
    text = _text(raw.get(spec.text_column))
    pair = _text(raw.get(spec.text_pair_column)) if spec.text_pair_column else None
    return Example(text, _parse_label(raw.get(spec.label_column), spec), pair, row)


def validate_rows(rows, spec: TaskSpec, source: str) -> tuple[list[Example], DataReport]:
    """rows: iterable of (row_number, dict). Skips and counts bad rows; raises if none is kept."""
    report, examples = DataReport(source), []
    for row, raw in rows:
        report.total += 1
        try:
            examples.append(parse_row(raw, spec, row))
        except _BadRow as bad:
            report.skip(bad.args[0], row, value=bad.args[1] if len(bad.args) > 1 else None)
    report.kept = len(examples)
    if not examples:
        raise ValueError(_no_rows_message(spec, report))
    return examples, report


def _expected(spec: TaskSpec) -> str:
    cols = [spec.text_column, spec.text_pair_column, spec.label_column]
    labels = spec.label_names or (f"indices 0..{spec.n_labels - 1}" if spec.n_labels else None)
    if spec.task_type == "regression":
        labels = "numeric targets"
    return f"columns {[c for c in cols if c]} and labels {labels}"


def _no_rows_message(spec: TaskSpec, report: DataReport) -> str:
    if report.total == 0:
        return f"{report.source}: no data rows found; expected {_expected(spec)}."
    return (
        f"{report.source}: all {report.total} rows are invalid; expected {_expected(spec)}.\n"
        f"Found:\n{report}"
    )


# --- readers -------------------------------------------------------------------------------


def _check_columns(path: Path, found: Sequence[str], spec: TaskSpec) -> None:
    wanted = [c for c in (spec.text_column, spec.text_pair_column, spec.label_column) if c]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {_expected(spec)}, "
            f"found columns {list(found)}."
        )


def read_csv(path, spec: TaskSpec, delimiter: str = ",") -> tuple[list[Example], DataReport]:
    """A CSV/TSV file with a header row naming the columns."""
    path = Path(path)
    # GLUE-style TSVs contain unbalanced quotes inside sentences, so TSV is read without quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        if reader.fieldnames is None:
            raise ValueError(
                f"{path}: the file is empty; expected a header with {_expected(spec)}."
            )
        _check_columns(path, reader.fieldnames, spec)
        # Row numbers count the header as row 1, so they match what an editor shows.
        return validate_rows(((i + 2, r) for i, r in enumerate(reader)), spec, str(path))


def read_jsonl(path, spec: TaskSpec) -> tuple[list[Example], DataReport]:
    path = Path(path)

    def rows():
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError:
                    yield line_no, None  # counted as invalid_json, not fatal

    return validate_rows(rows(), spec, str(path))


def read_examples(path, spec: TaskSpec) -> tuple[list[Example], DataReport]:
    """Dispatches on the suffix: .csv, .tsv, .jsonl/.json (one JSON object per line)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path, spec)
    if suffix == ".tsv":
        return read_csv(path, spec, delimiter="\t")
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, spec)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv or .jsonl")


def ag_news_spec() -> TaskSpec:
    return TaskSpec("classification", label_names=AG_NEWS_LABELS)


def read_ag_news_csv(path) -> tuple[list[Example], DataReport]:
    """The original AG News CSV: no header, columns (class 1..4, title, description)."""
    path = Path(path)

    def rows():
        with path.open(newline="", encoding="utf-8") as f:
            for row, cells in enumerate(csv.reader(f), start=1):
                cells = [*cells, "", "", ""][:3]
                title, desc = cells[1].strip(), cells[2].strip()
                text = f"{title}. {desc}" if title and desc else title or desc
                label = cells[0].strip()
                # The file stores 1..4; an unparsable or 0 index stays invalid after the shift.
                label = str(int(label) - 1) if label.lstrip("-").isdigit() else label
                yield row, {"text": text, "label": label}

    return validate_rows(rows(), ag_news_spec(), str(path))


# --- TFDS catalog --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    text_keys: tuple[str, ...]
    label_key: str
    spec: TaskSpec
    join_texts: bool = False  # True: text keys are joined into one text instead of a pair


TFDS_CATALOG = {
    "glue/sst2": CatalogEntry(
        ("sentence",), "label", TaskSpec(label_names=("negative", "positive"))
    ),
    "glue/mrpc": CatalogEntry(
        ("sentence1", "sentence2"),
        "label",
        TaskSpec(label_names=("not_equivalent", "equivalent"), text_pair_column="text_pair"),
    ),
    "ag_news_subset": CatalogEntry(("title", "description"), "label", ag_news_spec(), True),
    "imdb_reviews": CatalogEntry(("text",), "label", TaskSpec(label_names=("neg", "pos"))),
    "conll2003": CatalogEntry(
        ("tokens",),
        "ner",
        TaskSpec(
            "token_classification",
            label_names=(
                "O",
                "B-PER",
                "I-PER",
                "B-ORG",
                "I-ORG",
                "B-LOC",
                "I-LOC",
                "B-MISC",
                "I-MISC",
            ),
        ),
    ),
}


def _decode(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def records_to_examples(records, entry: CatalogEntry, source: str):
    """Maps TFDS records (dicts) onto the TaskSpec columns. Works on any indexable source."""

    def rows():
        for i in range(len(records)):
            rec = records[i]
            texts = [_decode(rec.get(k)) for k in entry.text_keys]
            raw = {"label": rec.get(entry.label_key)}
            if entry.spec.task_type == "token_classification":
                raw = {"text": list(texts[0]), "label": [int(t) for t in rec[entry.label_key]]}
            elif entry.join_texts:
                raw["text"] = ". ".join(t.strip() for t in texts if t and t.strip())
            else:
                raw["text"] = texts[0]
                if len(texts) > 1:
                    raw["text_pair"] = texts[1]
            yield i + 1, raw

    spec = dataclasses.replace(entry.spec, text_column="text", label_column="label")
    return validate_rows(rows(), spec, source)


def load_tfds_catalog(
    name: str,
    split: str,
    text_keys: Sequence[str] | None = None,
    label_key: str | None = None,
    data_dir: str | None = None,
    spec: TaskSpec | None = None,
    download: bool = False,
) -> tuple[list[Example], DataReport, TaskSpec]:
    """A TFDS dataset read through `tfds.data_source` (random access over ArrayRecord files).

    Keys and spec default to TFDS_CATALOG; label names are taken from the dataset's own
    ClassLabel feature when it has one, so they always match the stored indices. GLUE test
    splits carry label -1 and are therefore reported as label_out_of_range.
    `download=False` by default: preparing a dataset is a separate, deliberate step.
    """
    import tensorflow_datasets as tfds  # heavy import, only needed on this path

    entry = TFDS_CATALOG.get(name)
    if entry is None and (text_keys is None or label_key is None or spec is None):
        raise ValueError(
            f"{name!r} is not in TFDS_CATALOG {sorted(TFDS_CATALOG)}; "
            "pass text_keys, label_key and spec for other datasets."
        )
    entry = entry or CatalogEntry(tuple(text_keys), label_key, spec)
    entry = dataclasses.replace(
        entry,
        text_keys=tuple(text_keys or entry.text_keys),
        label_key=label_key or entry.label_key,
        spec=spec or entry.spec,
    )
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    names = _class_names(source, entry.label_key)
    if names:
        entry = dataclasses.replace(entry, spec=dataclasses.replace(entry.spec, label_names=names))
    examples, report = records_to_examples(source, entry, f"tfds:{name}[{split}]")
    return examples, report, entry.spec


def _class_names(source, key: str) -> tuple[str, ...] | None:
    feature = getattr(getattr(source, "dataset_info", None), "features", {}).get(key)
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) wraps the ClassLabel
    names = getattr(feature, "names", None)
    return tuple(names) if names else None


# --- splitting -----------------------------------------------------------------------------


def split_examples(
    examples: Sequence[Example],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool | None = None,
) -> tuple[list[Example], ...]:
    """A fixed, seeded split (same seed -> same split). Stratified by label by default when
    labels are class indices, so small classes are not missing from dev/test by chance.
    Each part keeps the source order."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions.tolist()}")
    if stratify is None:
        stratify = all(type(e.label) is int for e in examples)
    groups = collections.defaultdict(list)
    for i, e in enumerate(examples):
        groups[e.label if stratify else 0].append(i)
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for key in sorted(groups):  # sorted: the rng draws must not depend on dict order
        idx = rng.permutation(groups[key])
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        bounds[-1] = len(idx)
        for part, lo, hi in zip(parts, [0, *bounds[:-1]], bounds):
            part.extend(idx[lo:hi].tolist())
    return tuple([examples[i] for i in sorted(part)] for part in parts)


# --- encoding ------------------------------------------------------------------------------


@dataclasses.dataclass
class Encoded:
    """Ragged token sequences stored flat (all rows concatenated) plus per-row lengths, so a
    dataset is a handful of arrays that save to one .npz and pad per batch.

    labels: [N] (class id or float target), [N, C] multi-hot, [N, 2] QA start/end, or, when
    token_level, [T] aligned with input_ids (-100 on positions without a label).
    word_ids: token classification only, [T] aligned with input_ids: the word index at each
    word's first sub-token, -1 elsewhere (aligns two tokenisations of the same words)."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    token_level: bool = False
    word_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def save(self, path: Path) -> None:
        # Write then rename, so an interrupted run never leaves a truncated cache entry.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # processes may race
        np.savez(tmp, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Encoded:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(**{**arrays, "token_level": bool(arrays["token_level"])})


def from_rows(
    ids: list, type_ids: list | None, labels, token_level: bool = False, word_ids=None
) -> Encoded:
    if type_ids is None:  # tokenizers without segment ids (RoBERTa-like): all zeros
        type_ids = [[0] * len(r) for r in ids]
    flat = lambda rows: np.fromiter((t for r in rows for t in r), np.int32)
    if token_level:
        labels = flat(labels)
    return Encoded(
        flat(ids),
        flat(type_ids),
        np.array([len(r) for r in ids], np.int32),
        np.asarray(labels),
        token_level,
        np.zeros(0, np.int32) if word_ids is None else flat(word_ids),
    )


def first_word_ids(word_ids: Sequence[int | None]) -> list[int]:
    """The word index at each word's FIRST sub-token, -1 on later sub-tokens and specials."""
    out, prev = [], None
    for w in word_ids:
        out.append(-1 if w is None or w == prev else int(w))
        prev = w
    return out


def align_word_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Each word's label goes on its FIRST sub-token; later sub-tokens and specials get -100, so
    the loss and metrics count every word exactly once."""
    return [IGNORE_INDEX if w < 0 else int(word_labels[w]) for w in first_word_ids(word_ids)]


def _labels_array(examples: Sequence[Example], spec: TaskSpec) -> np.ndarray:
    if spec.task_type == "regression":
        return np.array([e.label for e in examples], np.float32)
    if spec.task_type == "multilabel":
        hot = np.zeros((len(examples), spec.n_labels), np.float32)
        for i, e in enumerate(examples):
            hot[i, list(e.label)] = 1.0
        return hot
    return np.array([e.label for e in examples], np.int32)


def _tokenize(examples: Sequence[Example], tokenizer, spec: TaskSpec, max_length: int) -> Encoded:
    if spec.task_type == "token_classification":
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("token classification needs a fast tokenizer (for word_ids())")
        tok = tokenizer(
            [e.text for e in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
        )
        labels = [align_word_labels(tok.word_ids(i), e.label) for i, e in enumerate(examples)]
        words = [first_word_ids(tok.word_ids(i)) for i in range(len(examples))]
        ids, types = tok["input_ids"], tok.get("token_type_ids")
        return from_rows(ids, types, labels, token_level=True, word_ids=words)
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    tok = tokenizer([e.text for e in examples], pairs, truncation=True, max_length=max_length)
    return from_rows(tok["input_ids"], tok.get("token_type_ids"), _labels_array(examples, spec))


def cache_key(examples: Sequence[Example], tokenizer, spec: TaskSpec, max_length: int) -> str:
    """Hashes the parsed examples (hence the file content that produced them) with everything
    that changes the token ids: tokenizer identity and vocab size, max_length, task."""
    h = hashlib.sha256()
    meta = [
        _CACHE_VERSION,
        type(tokenizer).__name__,
        str(tokenizer.name_or_path),
        len(tokenizer),
        max_length,
        spec.task_type,
        spec.n_labels,
    ]
    h.update(json.dumps(meta).encode())
    for e in examples:
        h.update(json.dumps([e.text, e.text_pair, e.label], ensure_ascii=False).encode())
    return h.hexdigest()[:24]


def encode(
    examples: Sequence[Example], tokenizer, spec: TaskSpec, max_length: int = 128, cache_dir=None
) -> Encoded:
    """Tokenises examples (pairs when they have text_pair); with cache_dir, the result is stored
    as <cache_dir>/<key>.npz and a later call with the same inputs only loads it."""
    if not examples:
        raise ValueError("encode() got no examples")
    if cache_dir is None:
        return _tokenize(examples, tokenizer, spec, max_length)
    path = Path(cache_dir) / f"{cache_key(examples, tokenizer, spec, max_length)}.npz"
    if path.exists():
        return Encoded.load(path)
    encoded = _tokenize(examples, tokenizer, spec, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded.save(path)
    return encoded


# --- batching ------------------------------------------------------------------------------


def padded_width(lengths: np.ndarray, pad_multiple: int) -> int:
    """The longest of ``lengths`` rounded up to pad_multiple: a few distinct widths keep jit
    recompilations bounded while short batches stay cheap."""
    return max(pad_multiple, -(-int(lengths.max()) // pad_multiple) * pad_multiple)


def collate(
    encoded: Encoded, idx: np.ndarray, pad_id: int = 0, pad_multiple: int = 32, width=None
) -> dict:
    """Rows idx padded to ``width`` (default ``padded_width`` of their lengths; a process that
    builds its share of a global batch passes the global batch's)."""
    offsets = encoded.offsets
    width = padded_width(encoded.lengths[idx], pad_multiple) if width is None else width
    ids_BxL = np.full((len(idx), width), pad_id, np.int32)
    types_BxL = np.zeros((len(idx), width), np.int32)
    mask_BxL = np.zeros((len(idx), width), np.int32)
    labels = np.full((len(idx), width), IGNORE_INDEX, np.int32) if encoded.token_level else None
    for r, i in enumerate(idx):
        lo, hi = offsets[i], offsets[i + 1]
        ids_BxL[r, : hi - lo] = encoded.input_ids[lo:hi]
        types_BxL[r, : hi - lo] = encoded.token_type_ids[lo:hi]
        mask_BxL[r, : hi - lo] = 1
        if labels is not None:
            labels[r, : hi - lo] = encoded.labels[lo:hi]
    return {
        "input_ids": ids_BxL,
        "attention_mask": mask_BxL,
        "token_type_ids": types_BxL,
        "labels": labels if labels is not None else encoded.labels[idx],
    }
