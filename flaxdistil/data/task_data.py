"""Task data: a named dataset or local files -> tokenised train/validation/test splits.

``load_task_data(data_cfg, tokenizer)`` reads one of
 - our offline TFDS builders: 'movie_snippets' (task 'classification' by sign, or 'regression' on
   the score), 'bbc_news' (5 topics), 'brown_pos' (POS tags, token classification);
 - a TFDS catalog name from ``tasks.TFDS_CATALOG`` (glue/sst2, ag_news_subset, imdb_reviews, ...);
 - local files: ``train_file`` (+ optional ``validation_file`` / ``test_file``; what is missing is
   carved from the train file with a fixed seeded split), CSV/TSV/JSONL, the AG News CSV layout
   (format 'ag_news') or SQuAD JSON (format 'squad', task 'qa').
Bad rows are counted in ``DataReport``s (printed by the job), never silently dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flaxdistil import assets
from flaxdistil.data import tasks, tfds_builders
from flaxdistil.data.tasks import CatalogEntry, Encoded, TaskSpec

SPLITS = ("train", "validation", "test")
HEADS = {
    "classification": "seq_cls",
    "regression": "seq_cls",
    "multilabel": "seq_cls",
    "token_classification": "token_cls",
    "qa": "qa",
}
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "regression": "regression",
    "multilabel": "multi_label_classification",
}


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Encoded]
    reports: list  # DataReport per source read
    qa_eval: dict | None = None  # split -> (examples, QAEvalFeatures) for task 'qa'
    examples: dict | None = None  # split -> the Examples before tokenisation
    streamed: str = ""  # a prepared directory whose training split streams (no splits['train'])
    manifest: dict | None = None  # that directory's manifest

    @property
    def label_names(self):
        return self.spec.label_names


def _builder_entry(name: str, task: str, info) -> CatalogEntry:
    """How our builders' records map onto a TaskSpec (label names from the ClassLabel feature)."""
    if name == "movie_snippets" and task == "regression":
        return CatalogEntry(("text",), "score", TaskSpec("regression"))
    if name == "brown_pos":
        names = tuple(info.features["tags"].feature.names)
        return CatalogEntry(("tokens",), "tags", TaskSpec("token_classification", names))
    if task != "classification":
        raise ValueError(f"dataset {name!r} supports task 'classification', not {task!r}")
    return CatalogEntry(("text",), "label", TaskSpec(label_names=info.features["label"].names))


class _Head:
    """The first n records of a random-access source (reading the rest would be wasted)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source)) if n else len(source)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.source[i]


def _from_builder(d, name: str):
    out, reports, spec = {}, [], None
    for split in SPLITS:
        source = tfds_builders.load(name, split)
        entry = _builder_entry(name, d.task, source.info)
        limit = d.max_train_examples if split == "train" else d.max_eval_examples
        source = _Head(source, limit)
        examples, report = tasks.records_to_examples(source, entry, f"{name}[{split}]")
        out[split], spec = examples, entry.spec
        reports.append(report)
    return out, reports, spec


def _from_catalog(d, name: str):
    out, reports, spec = {}, [], None
    for split, tfds_split in zip(SPLITS, (d.train_split, d.validation_split, d.test_split)):
        examples, report, spec = tasks.load_tfds_catalog(name, tfds_split)
        out[split] = examples
        reports.append(report)
    return out, reports, spec


def file_spec(d) -> TaskSpec:
    names = tuple(n.strip() for n in d.label_names.split(",") if n.strip()) or None
    return TaskSpec(
        d.task,
        label_names=names,
        num_labels=d.num_labels or None,
        text_column=d.text_column,
        text_pair_column=d.text_pair_column or None,
        label_column=d.label_column,
    )


def _read(path: str, d, spec: TaskSpec):
    if d.format == "ag_news":
        return tasks.read_ag_news_csv(path)
    if d.format == "squad":
        from flaxdistil.data.qa import read_squad_json

        return read_squad_json(path), tasks.DataReport(str(path))
    return tasks.read_examples(path, spec)


def _from_files(d):
    spec = tasks.ag_news_spec() if d.format == "ag_news" else file_spec(d)
    if d.format == "squad" and spec.task_type != "qa":
        raise ValueError(f"format 'squad' is for task 'qa', not {spec.task_type!r}")
    files = {"train": d.train_file, "validation": d.validation_file, "test": d.test_file}
    out, reports = {}, []
    for split, path in files.items():
        if path and not Path(path).expanduser().is_file():
            found = "a directory" if Path(path).expanduser().is_dir() else "nothing"
            raise FileNotFoundError(f"data.{split}_file {path}: expected a file, found {found}")
        if path:
            out[split], report = _read(Path(path).expanduser(), d, spec)
            reports.append(report)
    missing = [s for s in ("validation", "test") if s not in out]
    if missing:  # carve what is missing out of the train file, fixed by the seed
        f = d.heldout_fraction
        fractions = [1.0 - f * len(missing)] + [f] * len(missing)
        parts = tasks.split_examples(
            out["train"],
            fractions,
            seed=d.split_seed,
            stratify=None if spec.task_type != "qa" else False,
        )
        out["train"] = parts[0]
        out.update(zip(missing, parts[1:]))
    return out, reports, spec


def read_splits(d):
    """(examples by split, reports, spec) from the data config, before tokenisation."""
    if d.train_file:
        return _from_files(d)
    if d.dataset in tfds_builders.BUILDERS:
        return _from_builder(d, d.dataset)
    if d.dataset in tasks.TFDS_CATALOG:
        return _from_catalog(d, d.dataset)
    raise ValueError(
        f"data.dataset {d.dataset!r} is neither one of flaxdistil's datasets "
        f"{sorted(tfds_builders.BUILDERS)} nor in the TFDS catalog table "
        f"{sorted(tasks.TFDS_CATALOG)}; for local files set data.train_file"
    )


def load_task_data(d, tokenizer, cache_dir=None) -> TaskData:
    """Reads, limits (``max_train_examples`` / ``max_eval_examples``, 0 = all) and tokenises
    (cached as .npz under ``cache_dir``, default <flaxdistil cache>/task_tokens); with
    ``array_record``, the prepared examples (``load_prepared``)."""
    if d.get("array_record"):
        return load_prepared(d, tokenizer)
    examples, reports, spec = read_splits(d)
    if d.max_train_examples:
        examples["train"] = examples["train"][: d.max_train_examples]
    for split in ("validation", "test"):
        if d.max_eval_examples:
            examples[split] = examples[split][: d.max_eval_examples]
    cache_dir = Path(cache_dir) if cache_dir else assets.cache_dir() / "task_tokens"
    if spec.task_type == "qa":
        return _qa_data(examples, spec, reports, tokenizer, d)
    splits = {
        s: tasks.encode(examples[s], tokenizer, spec, d.max_length, cache_dir) for s in SPLITS
    }
    return TaskData(spec, splits, reports, examples=examples)


def load_prepared(d, tokenizer) -> TaskData:
    """A task prepared by scripts/prepare_data.py --task: validation and test in memory, the
    training split left on disk (``streamed``: its directory) for stream.StreamBatches."""
    from flaxdistil.data import array_records

    for key in ("max_train_examples", "max_eval_examples"):
        if d[key]:
            raise ValueError(
                f"data.{key}={d[key]} limits tokenisation; with data.array_record pass "
                f"--{key} to scripts/prepare_data.py --task and leave data.{key}=0"
            )
    manifest = array_records.read_manifest(d.array_record, (array_records.TASK_FORMAT,))
    array_records.check_manifest(manifest, d.array_record, tokenizer, d.max_length)
    t = manifest["task"]
    if t["task_type"] != d.task:
        raise ValueError(
            f"data.array_record {d.array_record} holds a {t['task_type']!r} task, the config "
            f"says data.task={d.task!r}: set data.task={t['task_type']!r}"
        )
    names = tuple(t["label_names"]) if t["label_names"] else None
    spec = TaskSpec(t["task_type"], names, None if names else t["num_labels"])
    splits = {s: array_records.load_task_split(d.array_record, s, manifest) for s in SPLITS[1:]}
    return TaskData(spec, splits, [], streamed=str(d.array_record), manifest=manifest)


def encode_split(data: TaskData, split: str, tokenizer, d) -> tasks.Encoded:
    """The same examples of ``split`` in another tokenizer's tokens (a teacher's own), row for
    row, with the data config's max_length and token cache."""
    cache_dir = Path(d.cache_dir) if d.cache_dir else assets.cache_dir() / "task_tokens"
    return tasks.encode(data.examples[split], tokenizer, data.spec, d.max_length, cache_dir)


def _qa_data(examples, spec, reports, tokenizer, d) -> TaskData:
    from flaxdistil.data import qa

    splits = {
        "train": qa.prepare_train_features(examples["train"], tokenizer, d.max_length, d.doc_stride)
    }
    qa_eval = {}
    for s in ("validation", "test"):
        features = qa.prepare_eval_features(examples[s], tokenizer, d.max_length, d.doc_stride)
        splits[s], qa_eval[s] = features.encoded, (examples[s], features)
    return TaskData(spec, splits, reports, qa_eval)


def head_fields(data: TaskData) -> dict:
    """num_labels / problem_type / id2label of the head a task needs (HF config fields)."""
    spec, task = data.spec, data.spec.task_type
    if task == "qa":
        return {}
    fields = {"num_labels": 1 if task == "regression" else spec.n_labels}
    fields["problem_type"] = PROBLEM_TYPES.get(task)
    names = spec.label_names or [f"LABEL_{i}" for i in range(fields["num_labels"])]
    fields["id2label"] = tuple(enumerate(names)) if task != "regression" else None
    return fields
