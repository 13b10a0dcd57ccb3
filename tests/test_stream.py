"""Streamed input: scripts/prepare_data.py's ArrayRecord shards against the tokenizer itself,
the grain pipeline's epochs, exact resume, per-process shares, a general-distillation run from
ArrayRecord resuming exactly through the Loop, and user errors in one line."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flaxdistil.data.stream import StreamBatches

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 32
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "distillation",
    "keeps",
    "most",
    "of",
    "what",
    "the",
    "teacher",
    "knows",
    "and",
    "students",
    "learn",
    "from",
    "soft",
    "targets",
    "over",
    "many",
    "short",
    "and",
    "long",
    "english",
    "sentences",
]


def paragraphs(n: int = 60, seed: int = 0) -> list[str]:
    """English-word paragraphs of 2 to 90 words: some shorter than 12 tokens (dropped), some
    longer than one chunk (cut)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 90))) for _ in range(n)]


def tokenizer_dir() -> Path:
    from flaxdistil import assets

    return assets.minilm_dir()


def prepare(tmp_path, docs, *extra) -> Path:
    from scripts import prepare_data

    corpus, out = tmp_path / "corpus.txt", tmp_path / "ar"
    corpus.write_text("\n\n".join(docs) + "\n")
    args = ["--tokenizer", str(tokenizer_dir()), "--text", str(corpus), "--out", str(out)]
    prepare_data.main([*args, "--max_length", str(MAX_LENGTH), "--shard_size", "50", *extra])
    return out


def reference(docs: list[str]) -> list[np.ndarray]:
    """[CLS] chunk [SEP] of each document straight from the tokenizer (HF distillation's rule:
    chunks of max_length - 2 ids, shorter than 12 with specials or over half [UNK] dropped)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    out, body = [], MAX_LENGTH - 2
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), body):
            piece = ids[i : i + body]
            if len(piece) + 2 >= 12 and sum(t == tok.unk_token_id for t in piece) <= len(piece) / 2:
                out.append(np.array([tok.cls_token_id, *piece, tok.sep_token_id], np.int32))
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    docs = paragraphs()
    return prepare(tmp_path_factory.mktemp("stream"), docs), docs


def read_all(directory: Path, split: str) -> list[np.ndarray]:
    import grain

    m = json.loads((directory / "manifest.json").read_text())
    src = grain.sources.ArrayRecordDataSource(
        [str(directory / f) for f in m["splits"][split]["files"]]
    )
    return [np.frombuffer(src[i], "<i4") for i in range(len(src))]


def test_prepare_round_trip_equals_the_tokenizer(prepared):
    out, docs = prepared
    n_held = max(1, len(docs) // 50)  # the general job's 2% tail
    for split, part in (("train", docs[:-n_held]), ("heldout", docs[-n_held:])):
        want, got = reference(part), read_all(out, split)
        assert len(got) == len(want) > 0
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        lengths = np.fromfile(out / f"{split}.lengths", np.uint16)
        np.testing.assert_array_equal(lengths, [len(s) for s in want])
        counts = np.bincount(np.concatenate(want), minlength=30522)
        np.testing.assert_array_equal(np.load(out / f"{split}.counts.npy"), counts)
    m = json.loads((out / "manifest.json").read_text())
    assert m["max_length"] == MAX_LENGTH and m["splits"]["train"]["documents"] == len(docs) - 1
    assert len(m["splits"]["train"]["files"]) == -(-len(reference(docs[:-1])) // 50)
    assert sum(m["splits"]["train"]["records"]) == m["splits"]["train"]["sequences"]


def stream(out, **kw) -> StreamBatches:
    args = dict(batch_size=4, seed=7, pad_id=0, pad_multiple=8, group_batches=3)
    return StreamBatches(out, **{**args, **kw})


def rows_of(batch) -> list[tuple]:
    return [
        tuple(ids[m.astype(bool)]) for ids, m in zip(batch["input_ids"], batch["attention_mask"])
    ]


def test_an_epoch_sees_every_sequence_once_in_length_grouped_padded_batches(prepared):
    out, docs = prepared
    want = Counter(tuple(s) for s in reference(docs[:-1]))
    b = stream(out, threads=0, prefetch=0)
    seen, widths = Counter(), set()
    for _ in range(len(b)):
        batch = next(b)
        rows = rows_of(batch)
        seen.update(rows)
        longest = max(len(r) for r in rows)
        assert batch["input_ids"].shape == (4, -(-longest // 8) * 8)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
        widths.add(batch["input_ids"].shape[1])
    assert b.epoch_done and b.epoch == 0
    assert sum(seen.values()) == len(b) * 4 and not seen - want  # the last partial batch dropped
    assert len(want - seen) == sum(want.values()) % 4
    assert len(widths) > 1  # short batches stay short
    second = rows_of(next(b))
    assert b.epoch == 1 and b.index == 1 and second  # epoch 1 reshuffles
    assert [rows_of(next(b)) for _ in range(3)] != [rows_of(next(stream(out))) for _ in range(3)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("where", ["early", "across an epoch end"])
def test_resume_from_the_state_gives_the_remaining_batches(prepared, where):
    out, _ = prepared
    whole = stream(out)
    k = 3 if where == "early" else len(whole) - 2
    ref = [next(whole) for _ in range(k + 6)]
    first = stream(out)
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # what the checkpoint stores
    first.close()
    resumed = stream(out, seed=0, threads=1)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.index) == (first.epoch, first.index)
    assert same([next(resumed) for _ in range(6)], ref[k:])
    whole.close(), resumed.close()


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shares_are_disjoint_and_make_the_global_batch(prepared, processes):
    out, _ = prepared
    one = stream(out)
    glob = [next(one) for _ in range(5)]
    shares = []
    for p in range(processes):
        s = stream(out)
        s.select_rows(p * 4 // processes, (p + 1) * 4 // processes)
        shares.append([next(s) for _ in range(5)])
    for i, g in enumerate(glob):
        parts = [share[i] for share in shares]
        joined = {k: np.concatenate([x[k] for x in parts]) for k in g}
        assert same([joined], [g])
        rows = [r for x in parts for r in rows_of(x)]
        assert len(rows) == 4 and all(len(rows_of(x)) == 4 // processes for x in parts)
    # a process of a 2-process run resumes at a 1-process run's position
    s = stream(out)
    s.select_rows(2, 4)
    s.load_state_dict(json.loads(json.dumps(one.state_dict())))
    g = next(one)
    assert same([next(s)], [{k: v[2:4] for k, v in g.items()}])


def test_worker_processes_give_the_same_batches_and_resume(prepared):
    out, _ = prepared
    plain = stream(out)
    ref = [next(plain) for _ in range(6)]
    w = stream(out, workers=2)
    try:
        got = [next(w) for _ in range(3)]
        state = json.loads(json.dumps(w.state_dict()))
    finally:
        w.close()
    r = stream(out, workers=2)
    try:
        r.load_state_dict(state)
        got += [next(r) for _ in range(3)]
    finally:
        r.close()
    assert same(got, ref)


# ----------------------------------------------------------------------------- the job


ENV_JOB = ["--config.data.max_train_docs=0", "--config.data.max_heldout_docs=0"]


def distill_cmd(workdir, teacher, data, *extra) -> list[str]:
    return [
        str(ROOT / "scripts" / "distill.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.teacher.path={teacher}",
        f"--config.data.array_record={data}",
        "--config.data.max_length=32",
        "--config.train.steps=6",
        "--config.train.checkpoint_every=3",
        "--config.eval.batch_size=16",
        *ENV_JOB,
        *extra,
    ]


def run(*cmd: str) -> subprocess.CompletedProcess:
    from tests.test_distill_job import ENV

    return subprocess.run(
        [sys.executable, *cmd], env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=600
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.test_distill_job import save_tiny

    return save_tiny(tmp_path_factory.mktemp("teacher") / "t")


def losses(workdir: Path) -> list[tuple]:
    import csv

    with (workdir / "train.csv").open() as f:
        return [(r["step"], r["loss"], r["loss_hard"], r["loss_kd"]) for r in csv.DictReader(f)]


# Runs scripts/distill.py but SIGKILLs the process when the 4th batch is asked for (by the
# prefetching thread, ahead of the step) once the step-3 checkpoint is on disk (saves are
# asynchronous); train.steps=3 would change the LR schedule of a 6-step run.
KILL_AT_4TH_BATCH = """
import os, runpy, signal, sys, time
from flaxdistil.data import stream
take = stream.StreamBatches.__next__
done = os.path.join(sys.argv[sys.argv.index("--workdir") + 1], "checkpoints", "3")
def killing(self):
    if self.k == 3:
        while not os.path.isdir(done):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
    return take(self)
stream.StreamBatches.__next__ = killing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_from_array_record_resumes_exactly_through_the_loop(prepared, teacher, tmp_path):
    out, _ = prepared
    whole = run(*distill_cmd(tmp_path / "a", teacher, out))
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "streamed from" in whole.stdout
    (tmp_path / "kill.py").write_text(KILL_AT_4TH_BATCH)
    killed = run(str(tmp_path / "kill.py"), *distill_cmd(tmp_path / "b", teacher, out))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "b" / "checkpoints" / "3").is_dir()
    again = run(*distill_cmd(tmp_path / "b", teacher, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step 3" in again.stdout
    assert len(losses(tmp_path / "a")) == 6
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


# ----------------------------------------------------------------------------- user errors


def prepare_error(tmp_path, *args) -> str:
    r = run(str(ROOT / "scripts" / "prepare_data.py"), "--out", str(tmp_path / "o"), *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_prepare_data_mistakes_end_in_one_line(tmp_path):
    tok = ["--tokenizer", str(tokenizer_dir())]
    assert "does not exist" in prepare_error(tmp_path, *tok, "--text", str(tmp_path / "no.txt"))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    assert "0 documents" in prepare_error(tmp_path, *tok, "--text", str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("a cat\n\nthe mat\n")
    assert "no sequences of >= 12" in prepare_error(
        tmp_path, *tok, "--text", str(tmp_path / "short.txt")
    )
    (tmp_path / "ok.txt").write_text("\n\n".join(paragraphs(4)))
    ok = str(tmp_path / "ok.txt")
    missing = prepare_error(tmp_path, "--tokenizer", str(tmp_path / "nope"), "--text", ok)
    assert "nope" in missing


def test_stream_mistakes_name_what_was_expected(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(FileNotFoundError, match="not a directory"):
        StreamBatches(tmp_path / "missing", 4)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        StreamBatches(tmp_path, 4)
    with pytest.raises(ValueError, match="make no full batch of 100000"):
        StreamBatches(out, 100_000)
    b = stream(out)
    state = {**b.state_dict(), "sequences": 5}
    with pytest.raises(ValueError, match="over 5 sequences"):
        stream(out).load_state_dict(state)
    b.close()


def test_a_run_on_data_of_another_tokenizer_or_length_stops_in_one_line(
    prepared, teacher, tmp_path
):
    import shutil

    out, _ = prepared
    other = tmp_path / "other"
    shutil.copytree(out, other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer"]["fingerprint"] = "0123456789abcdef"
    (other / "manifest.json").write_text(json.dumps(m))
    for data, extra, expect in (
        (other, [], "re-run scripts/prepare_data.py with --tokenizer"),
        (out, ["--config.data.max_length=64"], "holds sequences of max_length 32"),
        (out, ["--config.data.max_train_docs=5"], "pass --max_train_docs to scripts/prepare"),
    ):
        r = run(*distill_cmd(tmp_path / "w", teacher, data, *extra))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and expect in lines[-1], r.stderr[-2000:]
        assert "Traceback" not in r.stderr and lines[-1].startswith("error: ")
