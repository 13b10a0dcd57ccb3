"""Both jobs through their scripts in subprocesses: general distillation (scripts/distill.py,
configs/tiny.py, a tiny random BERT teacher) and task fine-tuning (scripts/finetune.py,
configs/task_tiny.py): exact resume after SIGKILL, NaN handling, user errors, the files a run
writes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
# Small held-out set and single-threaded XLA: the machine running the tests is shared.
LEAN = ["--config.data.max_heldout_docs=4", "--config.eval.batch_size=16"]
ENV = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_cpu_multi_thread_eigen=false",
    TF_CPP_MIN_LOG_LEVEL="3",
)


def save_tiny(out: Path, cls: str = "BertForMaskedLM", vocab_size: int = 30522) -> Path:
    """A random 4-layer BERT (hidden 32) with the real MiniLM tokenizer (30,522 tokens)."""
    import torch
    import transformers

    from flaxdistil import assets

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    getattr(transformers, cls)(config).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(assets.minilm_dir()).save_pretrained(out)
    return out


def once(tmp_path_factory, name: str, make) -> Path:
    """``make(dir)`` once per test session, even under pytest-xdist: the workers share the
    directory, and the one that comes second waits for it instead of doing the work again."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            make(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return once(tmp_path_factory, "tiny_teacher", save_tiny)


def command(workdir, teacher, *overrides) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "scripts" / "distill.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.teacher.path={teacher}",
        *LEAN,
        *overrides,
    ]


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=600)


def resumable(workdir, teacher):
    return command(
        workdir,
        teacher,
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=4",
        "--config.train.log_every=1",
        "--config.eval.every=4",  # periodic held-out evaluation, early stopping's input
        "--config.eval.patience=5",
        "--config.export.hf=True",
    )


def task_command(workdir, model, *overrides) -> list[str]:
    """A tiny fine-tuning run that evaluates and checkpoints every 4 steps."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "finetune.py"),
        "--config",
        str(ROOT / "configs" / "task_tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.student.path={model}",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=4",
        "--config.eval.every=4",
        *overrides,
    ]


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def checkpoint_steps(workdir: Path) -> list[int]:
    """The finished checkpoints' steps (orbax renames a save's temporary directory when done)."""
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def restore_params(workdir: Path, step: int):
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")[
        "params"
    ]


@pytest.fixture(scope="session")
def run_a(teacher_dir, tmp_path_factory):
    """An uninterrupted run: the reference for the resume test and the subject of the outputs
    test."""

    def make(workdir):
        proc = run(resumable(workdir, teacher_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]

    return once(tmp_path_factory, "run_a", make)


# ---------------------------------------------------------------- resume


@pytest.fixture(scope="session")
def task_run_a(teacher_dir, tmp_path_factory):
    """An uninterrupted tiny fine-tuning run (the tiny teacher as the model to fine-tune)."""

    def make(workdir):
        proc = run(task_command(workdir, teacher_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]

    return once(tmp_path_factory, "task_run_a", make)


def kill_then_resume(cmd, workdir):
    """Start ``cmd``, SIGKILL it once 6 steps are logged and a checkpoint >= 4 is written, leave
    a half-written checkpoint as a kill during a save would, run ``cmd`` again to the end;
    returns the resumed process."""
    proc = subprocess.Popen(
        cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    csv_path, deadline = workdir / "train.csv", time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # a finished checkpoint too: saves are asynchronous, so 6 logged steps do not yet
            # mean that the step-4 checkpoint is on disk
            rows = len(read_csv(csv_path)) if csv_path.exists() else 0
            if rows >= 6 and any(s >= 4 for s in checkpoint_steps(workdir)):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_rows = len(read_csv(csv_path))
    assert 6 <= killed_rows < STEPS
    assert 4 <= max(checkpoint_steps(workdir)) < STEPS
    # what a kill in the middle of a save leaves: orbax's temporary directory, never finalised
    partial = workdir / "checkpoints" / f"{STEPS}.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)

    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    return resumed


def assert_same_rows(csv_a: Path, csv_b: Path, skip=("elapsed_s",)) -> None:
    rows_a, rows_b = read_csv(csv_a), read_csv(csv_b)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k in set(ra) - set(skip):
            np.testing.assert_allclose(float(rb[k]), float(ra[k]), rtol=1e-6, atol=1e-6, err_msg=k)


def test_sigkill_then_resume_reproduces_the_run(run_a, teacher_dir, tmp_path):
    workdir_a = run_a
    workdir = tmp_path / "run_b"
    kill_then_resume(resumable(workdir, teacher_dir), workdir)
    csv_path = workdir / "train.csv"
    assert [r["step"] for r in read_csv(csv_path)] == [str(s) for s in range(1, STEPS + 1)]
    assert_same_rows(workdir_a / "train.csv", csv_path)
    assert [int(r["step"]) for r in read_csv(workdir / "eval.csv")] == [4, 8, 12]
    assert_same_rows(workdir_a / "eval.csv", workdir / "eval.csv")

    res_a = json.loads((workdir_a / "results.json").read_text())
    res_b = json.loads((workdir / "results.json").read_text())
    for who in ("student", "teacher"):
        for k, v in res_a[who].items():
            assert res_b[who][k] == pytest.approx(v, rel=1e-6), (who, k)
    from safetensors.numpy import load_file

    exp_a = load_file(workdir_a / "student_hf" / "model.safetensors")
    exp_b = load_file(workdir / "student_hf" / "model.safetensors")
    assert exp_a.keys() == exp_b.keys()
    for k in exp_a:
        np.testing.assert_allclose(exp_b[k], exp_a[k], rtol=1e-6, atol=1e-7, err_msg=k)

    # only finished checkpoints remain: no temporary directory of an interrupted save
    entries = {p.name for p in (workdir / "checkpoints").iterdir()}
    assert entries == {str(s) for s in checkpoint_steps(workdir)}, entries
    assert checkpoint_steps(workdir)[-1] == STEPS
    for s in checkpoint_steps(workdir):
        assert (workdir / "checkpoints" / str(s) / "_CHECKPOINT_METADATA").exists()


def test_task_job_sigkill_then_resume_reproduces_the_run(task_run_a, teacher_dir, tmp_path):
    """The fine-tuning job resumes as exactly: every logged metric, every eval, the best step
    and the test metrics of the best model."""
    workdir = tmp_path / "task_b"
    kill_then_resume(task_command(workdir, teacher_dir), workdir)
    assert_same_rows(task_run_a / "train.csv", workdir / "train.csv")
    assert_same_rows(task_run_a / "eval.csv", workdir / "eval.csv")
    res_a = json.loads((task_run_a / "results.json").read_text())
    res_b = json.loads((workdir / "results.json").read_text())
    assert res_b["best_step"] == res_a["best_step"] and res_b["steps_run"] == STEPS
    for k, v in res_a["test"].items():
        assert res_b["test"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


# ---------------------------------------------------------------- NaN


def test_non_finite_loss_stops_and_keeps_a_finite_checkpoint(teacher_dir, tmp_path):
    import jax

    proc = run(
        command(
            tmp_path,
            teacher_dir,
            "--config.train.learning_rate=1e30",
            "--config.train.checkpoint_every=1",
            "--config.train.log_every=1",
        )
    )
    assert proc.returncode != 0
    assert "non-finite metrics at step" in proc.stderr, proc.stderr[-3000:]
    bad_step = int(proc.stderr.split("non-finite metrics at step ")[-1].split(":")[0])
    steps = checkpoint_steps(tmp_path)
    assert steps and steps[-1] == bad_step - 1  # every step before the bad one was saved
    params = restore_params(tmp_path, steps[-1])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert not (tmp_path / "results.json").exists()
    rows = read_csv(tmp_path / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, bad_step))
    assert all(np.isfinite(float(v)) for r in rows for v in r.values())


# ---------------------------------------------------------------- user errors


def test_user_errors_name_the_problem(teacher_dir, tmp_path):
    no_head = save_tiny(tmp_path / "no_head", cls="BertModel")
    small_vocab = save_tiny(tmp_path / "small_vocab", vocab_size=1000)
    missing = tmp_path / "does_not_exist"
    cases = {
        "bogus key": (command(tmp_path / "w0", teacher_dir, "--config.train.bogus=1"), ["bogus"]),
        "missing teacher": (command(tmp_path / "w1", missing), [str(missing)]),
        "no MLM head": (command(tmp_path / "w2", no_head), [str(no_head), "no trained mlm head"]),
        "vocab": (command(tmp_path / "w3", small_vocab), ["vocab mismatch", "30522", "1000"]),
    }
    # All four at once: each is mostly interpreter start-up and imports.
    procs = {
        name: subprocess.Popen(
            cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (cmd, _) in cases.items()
    }
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode != 0, name
        for want in cases[name][1]:
            assert want in err, f"{name}: {want!r} not in\n{err[-2000:]}"
        assert "distill:" not in err, f"{name}: training started"


# ---------------------------------------------------------------- outputs


def test_run_writes_metrics_results_and_a_loadable_export(run_a, teacher_dir):
    import jax
    import torch
    import transformers

    from flaxdistil import hf
    from flaxdistil.models import Model

    workdir = run_a
    rows = read_csv(workdir / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    cos = "loss_m0_cos_s2_t4"  # DistilBERT's cosine: the last hidden states of both
    terms = ("loss", "loss_kd", "loss_hard", cos, "grad_norm", "param_norm", "temperature")
    for k in terms:
        assert k in rows[0], k
        assert all(np.isfinite(float(r[k])) for r in rows), k
    assert all(float(r["loss_kd"]) > 0 and float(r["loss_hard"]) > 0 for r in rows)
    for r in rows:  # the logged total is the weighted sum of the logged terms (5 / 2 / 1)
        want = 5 * float(r["loss_kd"]) + 2 * float(r["loss_hard"]) + float(r[cos])
        assert float(r["loss"]) == pytest.approx(want, rel=1e-5)
    assert list((workdir / "tb" / "train").glob("events.out.tfevents.*"))

    results = json.loads((workdir / "results.json").read_text())
    for who in ("student", "teacher"):
        r = results[who]
        assert r["masked_tokens"] > 0
        assert np.isfinite(r["mlm_loss"]) and 0 <= r["mlm_accuracy"] <= 1
        assert r["perplexity"] == pytest.approx(np.exp(r["mlm_loss"]), rel=1e-6)

    export = Path(results["exported_to"])
    assert export == (workdir / "student_hf").resolve()
    torch_model = transformers.AutoModelForMaskedLM.from_pretrained(export).eval()
    assert torch_model.config.num_hidden_layers == 2
    tok = transformers.AutoTokenizer.from_pretrained(export)
    enc = tok(["the cat sat on the mat.", "a short one"], padding=True, return_tensors="np")
    with torch.no_grad():
        want = torch_model(
            input_ids=torch.as_tensor(enc["input_ids"]),
            attention_mask=torch.as_tensor(enc["attention_mask"]),
        ).logits.numpy()

    # flaxdistil's logits from the final checkpoint itself, not from the export
    t_cfg = hf.load_pretrained(teacher_dir, head="mlm").config
    params = restore_params(workdir, STEPS)
    got, _ = Model(t_cfg.replace(num_hidden_layers=2), "mlm").apply(
        {"params": params}, enc["input_ids"], enc["attention_mask"]
    )
    got = np.asarray(jax.device_get(got))
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
