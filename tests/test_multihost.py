"""Multi-host data parallelism on one machine: JAX's multi-controller runtime with 2 processes on
localhost, 2 fake CPU devices each (cross-process collectives over gloo, jax's CPU default),
against 1 process on 4 fake devices, the same global batch of 8: scripts/distill.py with
configs/tiny.py (teacher, MLM masking in the step, evaluation, checkpoints, export).

The two are equal to float tolerance, not bit for bit: the first step's metrics are identical,
later ones differ in the last bits (~1e-7 relative) because gloo's cross-process all-reduce of the
gradients sums in another order than XLA's in-process one. A SIGKILL of both processes then a
restart resumes exactly (same process count: the same reductions, bit-identical), and a restart
with one process on 4 devices continues the same run to float tolerance (the data position is
global)."""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_distill_job import LEAN, ROOT, STEPS, once, read_csv, save_tiny

# The subprocess tests are marked slow: ~4 tiny runs, minutes on a shared 2-core CPU.
CACHE = Path(os.environ.get("FLAXDISTIL_TEST_JAX_CACHE", "/tmp/flaxdistil-test-jax-cache"))
LAUNCHES = itertools.count()  # names each launch's logs (a restart keeps the killed run's)
DEVICES = 4  # in all: 2 processes x 2, or 1 x 4
FLAGS = [
    f"--config.train.steps={STEPS}",
    "--config.train.checkpoint_every=4",
    "--config.eval.every=6",  # the in-loop evaluation runs on the global params, every process
    "--config.eval.patience=5",
    "--config.export.hf=True",
]


def env(devices_per_process: int) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        # the runs compile the same programs: a shared persistent cache saves most of it
        JAX_COMPILATION_CACHE_DIR=str(CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # Not the tests' fast-compile flags (conftest.py): the first step of 2 processes equals
        # 1 process's bit for bit with XLA's default code generation, which is what is tested.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process} "
        "--xla_cpu_multi_thread_eigen=false",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(workdir: Path, teacher: Path, processes: int) -> list[tuple[list[str], dict]]:
    base = [
        sys.executable,
        str(ROOT / "scripts" / "distill.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.teacher.path={teacher}",
        *LEAN,
        *FLAGS,
    ]
    if processes == 1:
        return [(base, env(DEVICES))]
    port = free_port()
    dist = [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}"]
    per_process = env(DEVICES // processes)
    return [(base + dist + [f"--process_id={i}"], per_process) for i in range(processes)]


def start(workdir, teacher, processes) -> list[subprocess.Popen]:
    """The processes of one run, their logs beside ``workdir``."""
    name = f"{workdir.name}.launch{next(LAUNCHES)}"
    return launch(commands(workdir, teacher, processes), workdir.parent, name)


def launch(cmds, log_dir: Path, name: str) -> list[subprocess.Popen]:
    """One process per (command, env), its output in ``log_dir/name.p<i>.log`` (a pipe nobody
    reads while they run would fill up and block them)."""
    procs = []
    for i, (cmd, e) in enumerate(cmds):
        log = log_dir / f"{name}.p{i}.log"
        with log.open("w") as f:
            p = subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        p.log = log
        procs.append(p)
    return procs


def kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def finish(procs, timeout: float = 900) -> list[tuple[int, str]]:
    """(return code, output) of each; once one fails the others are killed (they would wait)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        kill(procs)
    return [(p.returncode, p.log.read_text()) for p in procs]


def run(workdir, teacher, processes):
    """Run to the end; a port taken between free_port() and the coordinator's bind retries."""
    for _ in range(3):
        out = finish(start(workdir, teacher, processes))
        if all(rc == 0 for rc, _ in out):
            return out
        if not any("address already in use" in log.lower() for _, log in out):
            break
    raise AssertionError("\n".join(f"rc {rc}: {log[-3000:]}" for rc, log in out))


def assert_same_rows(csv_a: Path, csv_b: Path, rtol: float) -> None:
    """Every logged metric of every step (the wall-clock column aside) within ``rtol`` (and 1e-6
    absolute for the near-zero ones, e.g. the KD loss of a barely trained student), or equal."""
    rows_a, rows_b = read_csv(csv_a), read_csv(csv_b)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k in set(ra) - {"elapsed_s"}:
            a, b = float(ra[k]), float(rb[k])
            np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol and 1e-6, err_msg=k)


def final_params(workdir: Path, step: int = STEPS):
    """The checkpointed student params as NumPy, whatever topology saved them."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    ckpt = ocp.PyTreeCheckpointer()
    tree = ckpt.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckpt.restore(path, restore_args=args)["params"]


def assert_params_close(a, b, exact: bool = False) -> None:
    import jax

    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        if exact:
            np.testing.assert_array_equal(flat_b[path], x, err_msg=str(path))
        else:
            np.testing.assert_allclose(flat_b[path], x, rtol=1e-5, atol=1e-6, err_msg=str(path))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return once(tmp_path_factory, "tiny_teacher", save_tiny)  # test_distill_job's, made once


@pytest.fixture(scope="session")
def one_process(teacher_dir, tmp_path_factory):
    return once(tmp_path_factory, "mh_one", lambda w: run(w, teacher_dir, 1))


@pytest.fixture(scope="session")
def two_processes(teacher_dir, tmp_path_factory):
    return once(tmp_path_factory, "mh_two", lambda w: run(w, teacher_dir, 2))


@pytest.mark.slow
def test_two_processes_equal_one_process_on_as_many_devices(one_process, two_processes):
    rows = read_csv(two_processes / "train.csv")
    assert [r["step"] for r in rows] == [str(s) for s in range(1, STEPS + 1)]  # written once
    first = read_csv(one_process / "train.csv")[0]
    assert rows[0] == first  # the first step, before any cross-process reduction fed back
    assert_same_rows(one_process / "train.csv", two_processes / "train.csv", rtol=1e-5)
    assert [int(r["step"]) for r in read_csv(two_processes / "eval.csv")] == [6, 12]
    assert_same_rows(one_process / "eval.csv", two_processes / "eval.csv", rtol=1e-5)
    assert_params_close(final_params(one_process), final_params(two_processes))
    # process 0 alone wrote the logs and the export
    for name in ("train", "eval"):
        assert len(list((two_processes / "tb" / name).iterdir())) == 1
    assert (two_processes / "results.json").exists()
    assert (two_processes / "student_hf" / "model.safetensors").exists()


@pytest.fixture(scope="session")
def killed(teacher_dir, tmp_path_factory):
    """A 2-process run, both processes SIGKILLed once 6 steps are logged (a checkpoint at 4)."""

    def make(workdir):
        procs = start(workdir, teacher_dir, 2)
        csv_path, deadline = workdir / "train.csv", time.monotonic() + 900
        try:
            while time.monotonic() < deadline and all(p.poll() is None for p in procs):
                if csv_path.exists() and len(read_csv(csv_path)) >= 6:
                    break
                time.sleep(0.05)
        finally:
            kill(procs)
        assert all(p.returncode == -signal.SIGKILL for p in procs), "a process ended early"
        assert 6 <= len(read_csv(csv_path)) < STEPS
        assert (workdir / "checkpoints" / "4").is_dir()

    return once(tmp_path_factory, "mh_killed", make)


@pytest.mark.slow
@pytest.mark.parametrize("restart_processes", [2, 1])
def test_sigkill_both_processes_then_restart_resumes(
    restart_processes, killed, one_process, two_processes, teacher_dir, tmp_path
):
    """Restarted with 2 processes: the uninterrupted 2-process run exactly; with 1 process on 4
    devices: the same run to float tolerance (the data position is global)."""
    workdir = tmp_path / "killed"
    shutil.copytree(killed, workdir)  # one kill serves both restarts
    out = run(workdir, teacher_dir, restart_processes)
    assert "resumed from step" in out[0][1]
    rows = read_csv(workdir / "train.csv")
    assert [r["step"] for r in rows] == [str(s) for s in range(1, STEPS + 1)]
    same = restart_processes == 2
    reference = two_processes if same else one_process
    assert_same_rows(two_processes / "train.csv", workdir / "train.csv", rtol=0 if same else 1e-5)
    assert_params_close(final_params(reference), final_params(workdir), exact=same)


# Two async managers (the loop's last and best) saving the same steps at once, in 2 processes.
TWO_MANAGERS = """
import sys, time, jax, numpy as np
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from pathlib import Path
from orbax.checkpoint._src.multihost import multihost
from flaxdistil.checkpoint import Checkpointer
if jax.process_index() == 1:  # a slower host: its writes reach orbax's barrier a second late
    make_sync = multihost.get_barrier_sync_fn
    def get_barrier_sync_fn(**kw):
        sync = make_sync(**kw)
        def late(**args):
            if "async_write_complete" in args["key"]:
                time.sleep(1)
            return sync(**args)
        return late
    multihost.get_barrier_sync_fn = get_barrier_sync_fn
root, SIZE = Path(sys.argv[3]), 1000
ckpts = [Checkpointer(root / name, 1, keep=2, async_save=True) for name in ("checkpoints", "best")]
for step in range(1, 6):
    for i, c in enumerate(ckpts):
        c.save(step, {"w": np.full(SIZE, 10 * step + i, np.float32)}, {"step": step})
for c in ckpts:
    c.wait()
for i, c in enumerate(ckpts):
    state, data = c.restore({"w": np.zeros(SIZE, np.float32)})
    assert c.latest_step() == 5 and data == {"step": 5}, (c.latest_step(), data)
    np.testing.assert_array_equal(state["w"], np.full(SIZE, 50 + i, np.float32))
print("ok", flush=True)
"""


@pytest.mark.slow
def test_two_async_checkpointers_save_the_same_steps_in_two_processes(tmp_path):
    """orbax names its cross-process barriers by step: without a prefix per manager, the last
    and best managers' background writes of one step meet at one barrier ("already ongoing") and
    the run hangs at its final wait (seen in CI on the resumed 2-process run)."""
    address, e = f"localhost:{free_port()}", env(1)
    cmd = [sys.executable, "-c", TWO_MANAGERS, address]
    procs = launch([([*cmd, str(i), str(tmp_path / "run")], e) for i in range(2)], tmp_path, "run")
    out = finish(procs, timeout=240)
    assert all(rc == 0 for rc, _ in out), "\n".join(f"rc {rc}: {log[-3000:]}" for rc, log in out)
    assert all(log.rstrip().endswith("ok") for _, log in out)


# One process fails while the other waits for it: in a collective (gloo) or at a barrier of the
# coordination service (orbax's kind), which process 0 hosts.
ONE_FAILS = """
import sys
import jax
from flaxdistil import runner, sharding

def job(cfg, workdir, failing, kind, wait):
    if jax.process_index() == int(failing):
        raise RuntimeError("a bug") if kind == "bug" else FileNotFoundError("no such file: x")
    if wait == "collective":
        sharding.barrier("waits for the other process")
    else:
        from jax._src import distributed
        distributed.global_state.client.wait_at_barrier("waits for the other process", 200_000)

runner.run(job, sys.argv[1:], flags={"failing": None, "kind": None, "wait": None})
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "failing, kind, wait, says",
    [
        (1, "bug", "collective", "RuntimeError: a bug"),
        (0, "user", "barrier", "error: no such file"),
    ],
)
def test_a_failing_process_ends_the_run_at_once(failing, kind, wait, says, tmp_path):
    """Seconds, not JAX's 5-minute shutdown barrier then an abort on every process: the failing
    process prints its error (one line for a user's mistake) and leaves at once, and its peer's
    wait fails."""
    address, e = f"localhost:{free_port()}", env(1)
    flags = ["--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w")]
    flags += [f"--failing={failing}", f"--kind={kind}", f"--wait={wait}"]
    dist = [f"--coordinator_address={address}", "--num_processes=2"]
    cmds = [
        ([sys.executable, "-c", ONE_FAILS, *flags, *dist, f"--process_id={i}"], e) for i in (0, 1)
    ]
    t0 = time.monotonic()
    procs = launch(cmds, tmp_path, "run")
    try:
        for p in procs:
            p.wait(timeout=120)
    finally:
        kill(procs)
    assert time.monotonic() - t0 < 60
    logs = [p.log.read_text() for p in procs]
    assert procs[failing].returncode == 1, logs[failing]
    # its peer fails in its wait (1), or JAX's client aborts it when the coordinator has gone
    assert procs[1 - failing].returncode in (1, -signal.SIGABRT), logs[1 - failing]
    assert says in logs[failing], logs[failing]
    if kind == "user":
        assert "Traceback" not in logs[failing], logs[failing]


# ---------------------------------------------------------------- in this process


def test_each_process_reads_its_rows_of_the_same_global_batch():
    """Batches split 2 or 4 ways, concatenated, are the 1-process batches (collate of the whole
    planned batch): same rows, same padded width, whatever each share's longest row."""
    from flaxdistil.data.batching import Batches
    from flaxdistil.data.tasks import collate, from_rows

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 70, size=40)
    rows = [rng.integers(5, 99, size=n) for n in lengths]
    enc = from_rows(rows, None, np.arange(40, dtype=np.int32))
    make = lambda: Batches(enc, 8, seed=3, pad_multiple=16, group_batches=2)
    whole = make()
    for processes in (2, 4):
        shares = [make() for _ in range(processes)]
        for i, b in enumerate(shares):
            b.select_rows(i * 8 // processes, (i + 1) * 8 // processes)
        for t in range(12):  # across epoch boundaries (5 batches an epoch)
            plan = whole.epoch_plan(t // len(whole))[t % len(whole)]
            ref = collate(enc, plan, 0, 16)
            got = [next(b) for b in shares]
            for k in ref:
                np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), ref[k])
    with pytest.raises(ValueError, match="not within a batch of 8"):
        whole.select_rows(4, 9)


def test_one_process_holds_every_row_and_starts_no_runtime(monkeypatch):
    import jax

    from flaxdistil import sharding

    mesh = sharding.make_mesh()
    assert sharding.process_rows(mesh, 8 * mesh.devices.size) == (0, 8 * mesh.devices.size)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*a, **k):
        raise AssertionError(f"jax.distributed.initialize{a} called for one process")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    sharding.initialize_distributed()
    sharding.initialize_distributed(num_processes=1, process_id=0)
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a: called.append(a))
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    sharding.initialize_distributed("h:1234", 2)
    assert called == [("h:1234", 2, 1)]  # the environment fills in what the flags leave out


def test_the_runner_takes_the_distributed_flags_and_the_job_does_not(monkeypatch, tmp_path):
    from flaxdistil import runner, sharding

    seen = {}
    monkeypatch.setattr(sharding, "initialize_distributed", lambda **k: seen.update(k))
    argv = ["--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path)]
    dist = ["--coordinator_address=h0:5", "--num_processes=4", "--process_id=3"]
    job_args = runner.run(lambda cfg, workdir, **kw: kw, argv + dist, flags={"extra": "x"})
    assert job_args == {"extra": "x"}
    assert seen == {"coordinator_address": "h0:5", "num_processes": 4, "process_id": 3}
    with pytest.raises(runner.UsageError, match="--process_id 4 is out of range"):
        runner.distributed_args({"num_processes": "4", "process_id": "4"})
