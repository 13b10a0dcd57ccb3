"""Mistakes a new user makes, each through the real script in a subprocess: every one must end
in exactly one ``error: ...`` line naming what was expected and what was found, exit status != 0,
and no traceback.

The subprocesses all run from one session fixture, several at a time (each is mostly interpreter
start-up and imports), shared by pytest-xdist workers through ``once``; each case is then its own
test, so a failure names the mistake.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_distill_job import ENV, once, save_tiny

ROOT = Path(__file__).resolve().parents[1]
DISTILL, FINETUNE, TASK = "distill.py", "finetune.py", "distill_task.py"
TINY, TASK_TINY = "configs/tiny.py", "configs/task_tiny.py"
# The least data a run reads before it fails (the fail-early mistakes read none); a small local
# corpus, since the TFDS one is read whole before it is cut to max_train_docs.
GENERAL_LEAN = ["--config.data.corpus={A}/corpus.txt", "--config.data.max_heldout_docs=4"]
TASK_LEAN = ["--config.data.max_train_examples=16", "--config.data.max_eval_examples=8"]
HIDDEN_MSE = "[{'layer_T': -1, 'layer_S': -1, 'feature': 'hidden', 'loss': 'hidden_mse'}]"


@dataclasses.dataclass(frozen=True)
class Case:
    script: str
    args: tuple[str, ...]  # {T}: tiny MLM teacher, {A}: the assets dir, {W}: a fresh workdir
    expect: tuple[str, ...]  # fragments of the error line


def distill(*args, expect, teacher="{T}", config=TINY) -> Case:
    cfg = ("--config", config) if config else ()
    t = (f"--config.teacher.path={teacher}",) if teacher else ()
    return Case(DISTILL, (*cfg, "--workdir", "{W}", *t, *GENERAL_LEAN, *args), tuple(expect))


def finetune(*args, expect, script=FINETUNE) -> Case:
    base = ("--config", TASK_TINY, "--workdir", "{W}", "--config.student.path={T}", *TASK_LEAN)
    return Case(script, (*base, *args), tuple(expect))


def local_csv(name: str, *args, expect) -> Case:
    return finetune(f"--config.data.train_file={{A}}/{name}", *args, expect=expect)


CASES = {
    # ---- the command line and the config file
    "missing --config": Case(DISTILL, ("--workdir", "{W}"), ("missing --config",)),
    "config file does not exist": distill(
        expect=["configs/tni.py", "does not exist"], config="configs/tni.py"
    ),
    "config without get_config": distill(
        expect=["no_get_config.py", "get_config"], config="{A}/no_get_config.py"
    ),
    "config file with a syntax error": distill(
        expect=["syntax_error.py", "line 2", "never closed"], config="{A}/syntax_error.py"
    ),
    "config argument it does not take": distill(
        expect=["tiny.py", "takes no argument", "'big'"], config=TINY + ":big"
    ),
    "unknown config key": distill("--config.train.step=3", expect=["closest: 'train.steps'"]),
    "number expected": distill("--config.train.steps=abc", expect=["train.steps", "'abc'"]),
    "unknown flag": distill("--steps=3", expect=["unknown flag --steps", "--workdir"]),
    "missing --workdir": Case(DISTILL, ("--config", TINY), ("missing --workdir",)),
    # ---- multi-host flags
    "process count not a number": distill(
        "--num_processes=two", expect=["--num_processes", "'two'"]
    ),
    "process id out of range": distill(
        "--num_processes=2", "--process_id=2", expect=["--process_id 2", "0..1"]
    ),
    "several processes without a coordinator": distill(
        "--num_processes=2", "--process_id=0", expect=["coordinator_address", "failed"]
    ),
    "workdir is a file": Case(
        DISTILL, ("--config", TINY, "--workdir", "{A}/a_file.txt"), ("a_file.txt", "directory")
    ),
    # ---- checkpoints
    "teacher path does not exist": distill(
        teacher="{A}/no_such_teacher", expect=["no_such_teacher"]
    ),
    "teacher without config.json": distill(teacher="{A}/no_config", expect=["config.json"]),
    "corrupt model.safetensors": distill(
        teacher="{A}/bad_weights", expect=["model.safetensors", "could not read"]
    ),
    "corrupt config.json": distill(teacher="{A}/bad_json", expect=["config.json", "JSON"]),
    "teacher without an MLM head": distill(teacher="{A}/no_head", expect=["no_head", "mlm head"]),
    "vocab smaller than the tokenizer": distill(
        teacher="{A}/vocab99", expect=["vocab mismatch", "30522", "99"]
    ),
    "no teacher for general distillation": distill(
        teacher="", expect=["student.init='slice'", "teacher.path"]
    ),
    # ---- data
    "unknown dataset name": finetune(
        "--config.data.dataset=movie_snipets", expect=["'movie_snipets'", "movie_snippets"]
    ),
    "unknown task type": local_csv(
        "good.csv", "--config.data.task=clasification", expect=["'clasification'", "classification"]
    ),
    "label column missing in a CSV": local_csv(
        "no_label.csv", "--config.data.label_names=neg,pos", expect=["no_label.csv", "'label'"]
    ),
    "empty CSV": local_csv("empty.csv", "--config.data.label_names=neg,pos", expect=["empty.csv"]),
    "train file does not exist": local_csv(
        "no_such.csv",
        "--config.data.label_names=neg,pos",
        expect=["data.train_file", "no_such.csv", "expected a file"],
    ),
    "labels out of range": local_csv(
        "label7.csv",
        "--config.data.label_names=neg,pos",
        expect=["label7.csv", "label_out_of_range", "'7'", "('neg', 'pos')"],
    ),
    "a corpus directory as task data": finetune(
        "--config.data.array_record={A}/corpus_ar",
        "--config.data.max_train_examples=0",
        "--config.data.max_eval_examples=0",
        expect=["task-examples", "found 'flaxdistil-token-ids-1'", "a corpus"],
    ),
    "prepare_data --task of a missing file": Case(
        "prepare_data.py",
        ("--tokenizer", "minilm", "--task", "{A}/no_such.csv", "--out", "{W}"),
        ("no_such.csv",),
    ),
    "batch larger than the data": finetune(
        "--config.train.batch_size=1000", expect=["batch size 1000", "examples"]
    ),
    # ---- the objective
    "unknown distill.kd_loss_type": distill(
        "--config.distill.kd_loss_type=kl", expect=["kd_loss_type 'kl'", "kl_t2"]
    ),
    "a number for an unset field": distill(
        "--config.distill.temperature=hot", expect=["distill.temperature", "number", "'hot'"]
    ),
    "unknown distill.preset": distill(
        "--config.distill.preset=tinybrt", expect=["'tinybrt'", "tinybert"]
    ),
    "match with an unknown loss": distill(
        "--config.distill.intermediate_matches="
        "[{'layer_T': -1, 'layer_S': -1, 'feature': 'hidden', 'loss': 'mse'}]",
        expect=["unknown loss 'mse'", "hidden_mse"],
    ),
    "match layer out of range": distill(
        "--config.distill.intermediate_matches="
        "[{'layer_T': 9, 'layer_S': 1, 'feature': 'hidden', 'loss': 'cos'}]",
        expect=["layer_T=9", "4-layer teacher"],
    ),
    "matches given as one dict": distill(
        "--config.distill.intermediate_matches="
        "{'layer_T': 4, 'layer_S': 2, 'feature': 'hidden', 'loss': 'cos'}",
        expect=["intermediate_matches", "expects a list", "got a dict"],
    ),
    "width mismatch without proj": distill(
        "--config.student.init=random",
        "--config.student.fields={'hidden_size': 48, 'num_hidden_layers': 2}",
        f"--config.distill.intermediate_matches={HIDDEN_MSE}",
        expect=["student 48", "teacher 32", "proj"],
    ),
    "gather_masked without restrict_ce_to_mask": distill(
        "--config.distill.gather_masked=true", expect=["restrict_ce_to_mask=True"]
    ),
    "preset needing a teacher, without teacher.path": finetune(
        "--config.distill.preset=tinybert", expect=["'tinybert'", "teacher.path"]
    ),
    "distill_task without teacher.path": finetune(script=TASK, expect=["teacher.path"]),
    "teacher.path and teachers together": finetune(
        "--config.teacher.path={T}",
        "--config.teachers=[{'path': '{T}'}]",
        script=TASK,
        expect=["teacher.path (one teacher) or teachers (a list), not both"],
    ),
    # ---- the other scripts
    "fit_mlm_head flag without a value": Case(
        "fit_mlm_head.py",
        ("--config", TINY, "--workdir", "{W}", "--install_to"),
        ("--install_to", "value"),
    ),
    "compare_models with a malformed compare.models": Case(
        "compare_models.py",
        ("--config", TASK_TINY, "--workdir", "{W}", "--config.compare.models=L6:{T}"),
        ("compare.models", "'L6:", "name=path"),
    ),
    "convert without --src": Case("convert.py", ("to-flax", "--out", "{W}/p.msgpack"), ("--src",)),
    "convert from a missing checkpoint": Case(
        "convert.py", ("to-flax", "--src", "{A}/nowhere", "--out", "{W}/p"), ("nowhere",)
    ),
    "demo with a workdir that is a file": Case(
        "demo.py", ("--workdir", "{A}/a_file.txt"), ("a_file.txt", "directory")
    ),
}


def make_assets(out: Path) -> None:
    """The broken inputs the cases point at, around one tiny random BERT MLM teacher."""
    import shutil

    teacher = save_tiny(out / "teacher")
    save_tiny(out / "no_head", cls="BertModel")
    save_tiny(out / "vocab99", vocab_size=99)
    for name in ("no_config", "bad_weights", "bad_json"):
        shutil.copytree(teacher, out / name)
    (out / "no_config" / "config.json").unlink()
    (out / "bad_weights" / "model.safetensors").write_bytes(b"not a safetensors file " * 200)
    (out / "bad_json" / "config.json").write_text('{"hidden_size": 32,\n "vocab_size": }\n')
    (out / "a_file.txt").write_text("not a directory\n")
    (out / "no_get_config.py").write_text("CONFIG = {'train': {'steps': 1}}\n")
    (out / "syntax_error.py").write_text("def get_config():\n    c = dict(\n    return c\n")
    rows = [f"a {w} film,{i % 2}" for i, w in enumerate(["good", "bad", "fine", "dull"] * 8)]
    (out / "good.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (out / "no_label.csv").write_text("text,sentiment\n" + "\n".join(rows) + "\n")
    (out / "label7.csv").write_text("text,label\n" + "\n".join(r[:-1] + "7" for r in rows) + "\n")
    (out / "empty.csv").write_text("")
    docs = [
        f"document {i}: the student learns to imitate its teacher on every token" for i in range(60)
    ]
    (out / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    from flaxdistil import hf
    from flaxdistil.data import array_records, text_pipeline

    tok = text_pipeline.load_tokenizer(hf.resolve("minilm"))
    array_records.write(out / "corpus_ar", {"train": docs, "heldout": docs[:4]}, tok, 32, "test")


def _argv(case: Case, assets: Path, workdir: Path) -> list[str]:
    fill = lambda a: a.replace("{T}", str(assets / "teacher")).replace("{A}", str(assets))
    args = [fill(a).replace("{W}", str(workdir)) for a in case.args]
    return [sys.executable, str(ROOT / "scripts" / case.script), *args]


def _run_one(item) -> dict:
    name, argv = item
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), f"{e.stderr or ''}\ntimed out after 300 s"
    return {"rc": rc, "stdout": out, "stderr": err, "argv": argv, "s": time.monotonic() - t0}


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory) -> dict:
    assets = once(tmp_path_factory, "user_error_assets", make_assets)

    def make(out: Path):
        out.mkdir()
        items = [(n, _argv(c, assets, out / f"w{i}")) for i, (n, c) in enumerate(CASES.items())]
        # Mostly start-up and imports, which wait on the disk as much as on the CPU.
        with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 2))) as pool:
            results = dict(zip(CASES, pool.map(_run_one, items)))
        (out / "outcomes.json").write_text(json.dumps(results))

    done = once(tmp_path_factory, "user_error_outcomes", make)
    return json.loads((done / "outcomes.json").read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_ends_in_one_error_line(name, outcomes):
    r, case = outcomes[name], CASES[name]
    everything = r["stdout"] + r["stderr"]
    where = f"{' '.join(r['argv'][1:])}\n--- stderr:\n{r['stderr'][-3000:]}"
    assert r["rc"] not in (0, None), f"exit status {r['rc']}: {where}"
    assert "Traceback" not in everything, where
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), where
    for want in case.expect:
        assert want in lines[-1], f"{want!r} not in the error line: {where}"


def test_at_least_25_distinct_mistakes():
    assert len(CASES) >= 25
    assert len({c.args for c in CASES.values()}) == len(CASES)
