"""Streamed task data: scripts/prepare_data.py --task writes each tokenised example as a record;
the records read back equal the in-memory encoding (tasks.encode, the path every task job uses)
for classification, multi-label, regression and token classification; a streamed epoch holds
every training example once, padded as tasks.collate pads it; a task run from the records
resumes exactly after an interruption; and the user errors end in one line."""

import json
from collections import Counter
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import common
from flaxdistil import hf, runner
from flaxdistil.data import array_records, task_data, tasks, text_pipeline
from flaxdistil.data.stream import StreamBatches
from flaxdistil.jobs import task as task_job
from flaxdistil.loop import Loop

from .test_distill_job import once, save_tiny

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "film",
    "plot",
    "actor",
    "runs",
    "sees",
    "good",
    "bad",
    "long",
    "short",
    "dull",
    "fine",
]
TAGS = ("DET", "NOUN", "VERB", "ADJ")


def _write_files(root: Path) -> dict[str, Path]:
    """One local file per task type (60 rows; a few bad rows the readers skip and count)."""
    rng = np.random.RandomState(0)
    text = lambda: " ".join(rng.choice(WORDS, rng.randint(2, 14)))
    files = {}
    rows = [f"{text()},{['neg', 'pos'][i % 2]}" for i in range(60)] + [",pos", "fine film,maybe"]
    files["classification"] = root / "cls.csv"
    files["classification"].write_text("text,label\n" + "\n".join(rows) + "\n")
    rows = [
        f'{text()},"{",".join(sorted(set(rng.choice(["a", "b", "c"], 2))))}"' for _ in range(60)
    ]
    files["multilabel"] = root / "ml.csv"
    files["multilabel"].write_text("text,label\n" + "\n".join(rows) + "\n")
    rows = [f"{text()},{rng.uniform(0, 1):.4f}" for _ in range(60)]
    files["regression"] = root / "reg.csv"
    files["regression"].write_text("text,label\n" + "\n".join(rows) + "\n")
    files["token_classification"] = root / "pos.jsonl"
    with files["token_classification"].open("w") as f:
        for _ in range(60):
            n = rng.randint(2, 9)
            words = list(rng.choice(WORDS + ["distillation", "unbelievably"], n))
            f.write(json.dumps({"text": words, "label": list(rng.choice(TAGS, n))}) + "\n")
    return files


LABELS = {"classification": "neg,pos", "multilabel": "a,b,c", "regression": "",
          "token_classification": ",".join(TAGS)}  # fmt: skip


def _prepare(files, root: Path, task_type: str) -> Path:
    """scripts/prepare_data.py --task, run in this process (its main(argv))."""
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "prepare_data.py"))["main"]
    out = root / f"{task_type}_ar"
    argv = ["--tokenizer", "minilm", "--task", str(files[task_type]), "--task_type", task_type,
            "--max_length", "16", "--out", str(out)]  # fmt: skip
    if LABELS[task_type]:
        argv += ["--label_names", LABELS[task_type]]
    main(argv)
    return out


def _in_memory(files, task_type: str):
    """The reference: what a task job reads and tokenises from the same file."""
    d = ml_collections.ConfigDict(common.TASK_DATA)
    d.task, d.train_file, d.dataset, d.max_length = task_type, str(files[task_type]), "", 16
    d.label_names, d.cache_dir = LABELS[task_type], ""
    tok = text_pipeline.load_tokenizer(hf.resolve("minilm"))
    return task_data.load_task_data(d, tok), tok


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_ar")
    files = _write_files(root)
    return files, {t: _prepare(files, root, t) for t in LABELS}


def _equal(a: tasks.Encoded, b: tasks.Encoded) -> None:
    for f in ("input_ids", "token_type_ids", "lengths", "labels", "word_ids"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and np.array_equal(x, y), f
        assert x.dtype.kind == y.dtype.kind, (f, x.dtype, y.dtype)
    assert a.token_level == b.token_level


@pytest.mark.parametrize("task_type", list(LABELS))
def test_records_read_back_as_the_in_memory_encoding(prepared, task_type):
    files, dirs = prepared
    want, _ = _in_memory(files, task_type)
    manifest = array_records.read_manifest(dirs[task_type], (array_records.TASK_FORMAT,))
    assert manifest["task"]["task_type"] == task_type
    for split in ("train", "validation", "test"):
        _equal(array_records.load_task_split(dirs[task_type], split, manifest),
               want.splits[split])  # fmt: skip
        assert manifest["splits"][split]["sequences"] == len(want.splits[split])
    if task_type == "classification":  # the two bad rows were skipped, and said so
        assert manifest["task"]["skipped_rows"] and len(want.splits["train"]) < 62


@pytest.mark.parametrize("task_type", ["classification", "token_classification"])
def test_a_streamed_epoch_is_every_example_once_padded_as_collate_pads(prepared, task_type):
    files, dirs = prepared
    want, _ = _in_memory(files, task_type)
    rows = want.splits["train"]
    b = StreamBatches(dirs[task_type], 4, seed=3, pad_id=0, pad_multiple=8, group_batches=2)
    seen = Counter()
    for _ in range(len(b)):
        batch = next(b)
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 and width == tasks.padded_width(batch["attention_mask"].sum(1), 8)
        for r in range(4):
            n = int(batch["attention_mask"][r].sum())
            label = batch["labels"][r][:n] if task_type != "classification" else batch["labels"][r]
            seen[(tuple(batch["input_ids"][r][:n]), tuple(np.atleast_1d(label)))] += 1
            assert not batch["input_ids"][r][n:].any()
    b.close()
    offsets, full = rows.offsets, Counter()
    for i in range(len(rows)):
        lo, hi = offsets[i], offsets[i + 1]
        label = rows.labels[lo:hi] if rows.token_level else rows.labels[i]
        full[(tuple(rows.input_ids[lo:hi]), tuple(np.atleast_1d(label)))] += 1
    assert sum(seen.values()) == len(b) * 4 == (len(rows) // 4) * 4
    assert not seen - full  # each streamed example is one of the file's, no more often


CONFIG = """
from configs import common


def get_config():
    c = common.base("task")
    c.data.array_record = {data!r}
    c.data.task = "token_classification"
    c.data.max_length = 16
    c.student.path = {student!r}
    c.train.steps = 8
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.0
    c.train.log_every = 1
    c.train.checkpoint_every = 4
    c.eval.every = 4
    c.eval.batch_size = 16
    c.eval.patience = 0
    c.eval.metric = "token_accuracy"
    c.export.hf = False
    return c
"""


@pytest.fixture(scope="module")
def config_file(prepared, tmp_path_factory):
    _, dirs = prepared
    student = once(tmp_path_factory, "tiny_teacher", save_tiny)
    path = tmp_path_factory.mktemp("cfg") / "stream_task.py"
    path.write_text(CONFIG.format(data=str(dirs["token_classification"]), student=str(student)))
    return path


def _rows(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)]


def test_a_task_run_from_records_resumes_exactly(config_file, tmp_path, monkeypatch, capsys):
    full, work = tmp_path / "full", tmp_path / "work"
    want = task_job.run(runner.load_config(str(config_file)), full)
    assert want["streamed"] and "streamed from" in capsys.readouterr().out
    save = Loop._save

    class Died(Exception):
        pass

    def save_then_die(self, step, state, batches):
        save(self, step, state, batches)
        if step == 4:
            raise Died

    monkeypatch.setattr(Loop, "_save", save_then_die)
    with pytest.raises(Died):
        task_job.run(runner.load_config(str(config_file)), work)
    monkeypatch.setattr(Loop, "_save", save)
    got = task_job.run(runner.load_config(str(config_file)), work)
    assert got["test"] == want["test"] and got["best_value"] == want["best_value"]
    for name in ("train.csv", "eval.csv"):
        assert _rows(work / name) == _rows(full / name), name
    assert len(_rows(full / "train.csv")) == 8


@pytest.mark.parametrize(
    "override, says",
    [
        ("data.task=classification", "holds a 'token_classification' task"),
        ("data.max_train_examples=4", "pass --max_train_examples to scripts/prepare_data.py"),
    ],
)
def test_config_mistakes_with_records_stop_before_training(override, says, config_file, tmp_path):
    cfg, _, _ = runner.parse([f"--config={config_file}", "--workdir=w", f"--config.{override}"])
    with pytest.raises(ValueError, match=says):
        task_job.run(cfg, tmp_path / "w")
    assert not (tmp_path / "w" / "train.csv").exists()


def test_what_needs_the_examples_in_memory_is_refused(config_file):
    cfg = runner.load_config(str(config_file))
    cfg.teacher.cache = True
    with pytest.raises(ValueError, match="teacher.cache needs the in-memory examples"):
        task_job._refuse_with_stream(cfg, [])


def test_a_corpus_directory_is_not_task_data(tmp_path):
    corpus = tmp_path / "corpus_ar"
    tok = text_pipeline.load_tokenizer(hf.resolve("minilm"))
    texts = [" ".join(["the cat sat on the mat"] * 4)] * 3
    array_records.write(corpus, {"train": texts, "heldout": texts}, tok, 32, "test")
    with pytest.raises(ValueError, match="found 'flaxdistil-token-ids-1' \\(a corpus"):
        array_records.read_manifest(corpus, (array_records.TASK_FORMAT,))
