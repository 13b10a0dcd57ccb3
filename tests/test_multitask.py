"""Multi-task distillation (flaxdistil/multitask.py, jobs/multitask.py): TextBrewer's sampling
rule (its own code on small inputs and a hand computation) and the empirical task frequencies,
the optimizer against PyTorch's AdamW with the heads of the tasks not drawn left without grads,
a 2-task run (classification + token classification, tiny random teachers) through the script
whose exported heads score in transformers what results.json reports, exact resume, and the
config mistakes that end in one line."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import hf, multitask, runner, train
from flaxdistil.data.batching import Batches
from flaxdistil.data.tasks import Encoded
from flaxdistil.models import ModelConfig
from flaxdistil.student import init_student

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for configs/
ENV = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_cpu_multi_thread_eigen=false",
    TF_CPP_MIN_LOG_LEVEL="3",
)
CFG = ModelConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TAGS = ("DET", "NOUN", "VERB")


# ---------------------------------------------------------------- sampling


def test_sampling_weights_are_textbrewers(monkeypatch, tmp_path):
    """TextBrewer's MultiTaskDistiller.train draws each task with np.random.choice(tasknames,
    p=sampling_weights): the p it passes for dataloaders of 3, 12 and 48 batches at tau 0.5 is
    ours, and both are the hand computation sqrt(n) / sum sqrt(n) = (1, 2, 4) / 7."""
    torch = pytest.importorskip("torch")
    textbrewer = pytest.importorskip("textbrewer")
    from textbrewer import distiller_multitask

    seen = {}

    class Drawn(Exception):
        pass

    def choice(names, p=None):
        seen["names"], seen["p"] = list(names), np.asarray(p)
        raise Drawn

    monkeypatch.setattr(distiller_multitask.np.random, "choice", choice)
    student = torch.nn.Linear(2, 2)
    distiller = textbrewer.MultiTaskDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(tmp_path), ckpt_steps=1),
        textbrewer.DistillationConfig(),
        {n: student for n in "abc"},
        student,
        {n: (lambda b, o: {"logits": o}) for n in "abc"},
        {n: (lambda b, o: {"logits": o}) for n in "abc"},
    )
    loaders = {"a": [0] * 3, "b": [0] * 12, "c": [0] * 48}
    with pytest.raises(Drawn):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), loaders, 1, tau=0.5)
    assert seen["names"] == ["a", "b", "c"]
    ours = multitask.sampling_weights([3, 12, 48], 0.5)
    np.testing.assert_allclose(ours, seen["p"], rtol=1e-12)
    np.testing.assert_allclose(ours, np.array([1, 2, 4]) / 7, rtol=1e-12)
    np.testing.assert_allclose(multitask.sampling_weights([3, 12, 48], 0), [1 / 3] * 3)


def _encoded(n: int, width: int = 5, start: int = 0) -> Encoded:
    """n rows of ``width`` ids; row i's first id is start + i (tells the rows apart)."""
    ids = np.tile(np.arange(width), n) + np.repeat(start + np.arange(n) * width, width)
    return Encoded(
        ids.astype(np.int32),
        np.zeros(n * width, np.int32),
        np.full(n, width, np.int32),
        np.zeros(n, np.int32),
    )


def _task_batches(sizes, tau, seed=0, batch_size=2):
    parts = {
        f"t{k}": Batches(_encoded(n * batch_size, start=10_000 * k), batch_size, seed + k)
        for k, n in enumerate(sizes)
    }
    return multitask.TaskBatches(parts, tau, seed)


def test_task_frequencies_follow_the_weights_and_batches_resume_exactly():
    sizes, tau = [4, 16, 64], 0.5
    tb = _task_batches(sizes, tau)
    assert len(tb) == 84  # an epoch: the tasks' batches summed (TextBrewer's total_size)
    steps = 84 * 25
    drawn = np.array([next(tb)[multitask.TASK_ID][0] for _ in range(steps)])
    freq = np.bincount(drawn, minlength=3) / steps
    want = np.array([2, 4, 8]) / 14  # sqrt(n) / sum sqrt(n)
    sigma = np.sqrt(want * (1 - want) / steps)
    assert np.all(np.abs(freq - want) < 4 * sigma), (freq, want)
    assert tb.task_counts(steps) == {f"t{k}": int((drawn == k).sum()) for k in range(3)}
    # Each task's batches are its own, in its own order, none skipped.
    tb = _task_batches(sizes, tau)
    for _ in range(30):
        next(tb)
    state = json.loads(json.dumps(tb.state_dict()))  # what the checkpoint stores
    after = [next(tb) for _ in range(100)]
    again = _task_batches(sizes, tau)
    again.load_state_dict(state)
    for a, b in zip(after, [next(again) for _ in range(100)]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- params and optimizer


def test_task_params_are_the_single_task_trees():
    """Splitting each task's student and merging again gives that task's own tree back (the
    pooler goes with the sequence classifier, which alone has one)."""
    cls = init_student(CFG.replace(num_labels=2), "seq_cls", jax.random.key(0))
    tok = init_student(CFG.replace(num_labels=3), "token_cls", jax.random.key(0))
    assert "pooler" in cls["encoder"] and "pooler" not in tok["encoder"]
    shared, head_c = multitask.split_params(cls)
    _, head_t = multitask.split_params(tok)
    tree = multitask.combine(shared, {"c": head_c, "t": head_t})
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
    assert same(multitask.task_params(tree, "c"), cls)
    assert jax.tree.structure(multitask.task_params(tree, "t")) == jax.tree.structure(tok)


def test_optimizer_is_torch_adamw_with_the_other_heads_gradless():
    """Three steps of tasks a, b, a: our optimizer against torch.optim.AdamW (decay on kernels
    only, global-norm clipping, linear decay of the learning rate by global step) where the head
    of the task not drawn has grad None, so PyTorch leaves it and its moments alone."""
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    leaf = lambda *s: rng.randn(*s).astype(np.float32)
    params = {
        "encoder": {"dense": {"kernel": leaf(3, 4), "bias": leaf(4)}},
        "heads": {n: {"classifier": {"kernel": leaf(4, 2), "bias": leaf(2)}} for n in "ab"},
    }
    lr, total, wd, clip = 0.1, 3, 0.1, 1.0
    kw = dict(learning_rate=lr, total_steps=total, weight_decay=wd, max_grad_norm=clip)
    txs = {n: multitask.make_optimizer(["a", "b"], n, **kw) for n in "ab"}
    state = train.create_state(jax.tree.map(jnp.asarray, params), txs["a"], {})
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(k.key) for k in path) for path, _ in flat]
    tparams = {n: torch.nn.Parameter(torch.tensor(x)) for n, (_, x) in zip(names, flat)}
    groups = [
        {"params": [p for n, p in tparams.items() if n.endswith(s)], "weight_decay": d}
        for s, d in (("kernel", wd), ("bias", 0.0))
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched_fn = train.lr_schedule(lr, total, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(sched_fn(s)) / lr)
    for task in "aba":
        g = {n: leaf(*tparams[n].shape) for n in names}
        for n in names:
            if n.startswith("heads/") and not n.startswith(f"heads/{task}/"):
                g[n] = np.zeros_like(g[n])  # ours: a zero gradient; PyTorch's: none
        for n, p in tparams.items():
            p.grad = None if not np.any(g[n]) else torch.tensor(g[n])
        torch.nn.utils.clip_grad_norm_(list(tparams.values()), clip)
        opt.step()
        sched.step()
        grads = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g[n]) for n in names])
        trained = {"params": state.params, "proj": {}}
        updates, opt_state = txs[task].update({"params": grads, "proj": {}}, state.opt_state,
                                              trained)  # fmt: skip
        new = jax.tree.map(lambda p, u: p + u, trained, updates)
        state = train.TrainState(state.step + 1, new["params"], {}, opt_state)
    got = dict(zip(names, jax.tree.leaves(state.params)))
    for n in names:
        np.testing.assert_allclose(got[n], tparams[n].detach().numpy(), rtol=2e-5, atol=1e-6)
    b_bias = params["heads"]["b"]["classifier"]["bias"]
    assert not np.allclose(got["heads/b/classifier/bias"], b_bias)  # b's one step moved it


# ---------------------------------------------------------------- the job


def _save_model(out: Path, head: str, num_labels: int, seed: int, labels=None) -> str:
    from flaxdistil import assets

    cfg = CFG.replace(num_labels=num_labels)
    if labels:
        cfg = cfg.replace(id2label=tuple(enumerate(labels)))
    params = init_student(cfg, head, jax.random.key(seed))
    hf.save_pretrained(out, params, cfg, head, tokenizer_from=assets.minilm_dir())
    return str(out)


def _write_data(root: Path) -> tuple[str, str]:
    rng = np.random.RandomState(0)
    words = ["the", "a", "cat", "dog", "runs", "sees", "good", "bad", "film", "park"]
    cls, pos = root / "cls.jsonl", root / "pos.jsonl"
    with cls.open("w") as f:
        for i in range(60):
            text = " ".join(rng.choice(words, rng.randint(3, 9)))
            f.write(json.dumps({"text": text, "label": ["neg", "pos"][i % 2]}) + "\n")
    with pos.open("w") as f:
        for _ in range(60):
            n = rng.randint(2, 7)
            f.write(json.dumps({"text": list(rng.choice(words, n)),
                                "label": list(rng.choice(TAGS, n))}) + "\n")  # fmt: skip
    return str(cls), str(pos)


CONFIG = """
from configs import common


def get_config():
    c = common.base("multitask")
    c.student.init = "pretrained"
    c.student.path = {student!r}
    c.student.layers = "0"  # one of the two layers: slicing as the real config does
    c.data.cache_dir = {cache!r}
    c.data.max_length = 32
    c.tasks = [
        dict(name="cls", train_file={cls!r}, label_names="neg,pos", teacher={t_cls!r}),
        dict(name="pos", train_file={pos!r}, task="token_classification",
             label_names="{tags}", teacher={t_pos!r}, distill=dict(temperature=1.0)),
    ]
    c.multitask.tau = 0.5
    c.train.steps = 8
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.0
    c.train.log_every = 1
    c.train.checkpoint_every = 4
    c.eval.every = 4
    c.eval.batch_size = 16
    c.eval.patience = 0
    return c
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    cls, pos = _write_data(root)
    path = root / "mt_tiny.py"
    path.write_text(
        CONFIG.format(
            student=_save_model(root / "student", None, 2, 0),
            t_cls=_save_model(root / "t_cls", "seq_cls", 2, 1, ("neg", "pos")),
            t_pos=_save_model(root / "t_pos", "token_cls", 3, 2, TAGS),
            cls=cls,
            pos=pos,
            tags=",".join(TAGS),
            cache=str(root / "tok"),
        )
    )
    return path


@pytest.fixture(scope="module")
def script_run(config_file, tmp_path_factory):
    work = tmp_path_factory.mktemp("run") / "w"
    cmd = [sys.executable, str(ROOT / "scripts" / "distill_multitask.py"),
           f"--config={config_file}", f"--workdir={work}"]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_two_tasks_from_a_config_logs_per_task_and_exports_each_head(script_run):
    work, stdout = script_run
    assert "task sampling (tau 0.5)" in stdout
    res = json.loads((work / "results.json").read_text())
    assert set(res["tasks"]) == {"cls", "pos"} and res["steps_run"] == 8
    assert sum(t["steps"] for t in res["tasks"].values()) == 8
    ev = _rows(work / "eval.csv")
    assert [int(r["step"]) for r in ev] == [4, 8]
    for r in ev:  # the mean of the tasks' metrics (accuracy, token_accuracy by default)
        want = (float(r["eval_cls/accuracy"]) + float(r["eval_pos/token_accuracy"])) / 2
        assert float(r["eval_mean"]) == pytest.approx(want, abs=1e-12)
    assert res["best_value"] == pytest.approx(max(float(r["eval_mean"]) for r in ev))
    tr = _rows(work / "train.csv")
    assert [int(r["step"]) for r in tr] == list(range(1, 9))
    for r in tr:  # one task per step: its loss columns filled, the other task's empty
        filled = [n for n in ("cls", "pos") if r[f"{n}/loss"] != ""]
        assert len(filled) == 1 and float(r[f"{filled[0]}/loss"]) == float(r["loss"])
    steps = {n: sum(r[f"{n}/loss"] != "" for r in tr) for n in ("cls", "pos")}
    assert steps == {n: t["steps"] for n, t in res["tasks"].items()}
    for name in ("cls", "pos"):
        assert res["tasks"][name]["transformers_check_ok"], res["tasks"][name]
        assert (work / "best_hf" / name / "config.json").exists()


def test_each_exported_head_scores_in_transformers_what_results_report(script_run, config_file):
    """The test split through transformers' AutoModelFor{Sequence,Token}Classification loaded
    from best_hf/<task>: accuracy and token accuracy equal results.json's."""
    torch = pytest.importorskip("torch")
    import transformers

    from flaxdistil.data import task_data
    from flaxdistil.jobs import multitask as job

    work, _ = script_run
    res = json.loads((work / "results.json").read_text())
    cfg = runner.load_config(str(config_file))
    tokenizer = transformers.AutoTokenizer.from_pretrained(work / "best_hf" / "cls")
    autos = {"cls": transformers.AutoModelForSequenceClassification,
             "pos": transformers.AutoModelForTokenClassification}  # fmt: skip
    for e in job.entries(cfg):
        data = task_data.load_task_data(job.task_config(cfg, e).data, tokenizer)
        enc = data.splits["test"]
        model = autos[e["name"]].from_pretrained(work / "best_hf" / e["name"]).eval()
        hits, count = 0, 0
        for i in range(len(enc)):
            lo, hi = enc.offsets[i], enc.offsets[i + 1]
            ids = torch.tensor(enc.input_ids[lo:hi][None].astype(np.int64))
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].numpy()
            if enc.token_level:
                gold = enc.labels[lo:hi]
                keep = gold != -100
                hits += int((logits.argmax(-1)[keep] == gold[keep]).sum())
                count += int(keep.sum())
            else:
                hits, count = hits + int(logits.argmax() == enc.labels[i]), count + 1
        metric = "token_accuracy" if enc.token_level else "accuracy"
        assert hits / count == pytest.approx(res["tasks"][e["name"]]["test"][metric], abs=1e-9)


@pytest.fixture
def compile_cache(tmp_path_factory):
    """The three runs below compile the same programs: XLA's persistent cache serves them."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(keys[1], 0.0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def test_exact_resume(config_file, tmp_path, monkeypatch, compile_cache):
    """A run that dies right after its step-4 checkpoint, then resumes: the same training and
    eval rows, results and final params as the uninterrupted run (in this process too: the same
    XLA flags)."""
    from flaxdistil.jobs import multitask as job
    from flaxdistil.loop import Loop

    full, work = tmp_path / "full", tmp_path / "w"
    job.run(runner.load_config(str(config_file)), full)
    save = Loop._save

    class Died(Exception):
        pass

    def save_then_die(self, step, state, batches):
        save(self, step, state, batches)
        if step == 4:
            raise Died

    monkeypatch.setattr(Loop, "_save", save_then_die)
    with pytest.raises(Died):
        job.run(runner.load_config(str(config_file)), work)
    monkeypatch.setattr(Loop, "_save", save)
    saved = {p.name for p in (work / "checkpoints").iterdir()}
    assert "4" in saved and "8" not in saved, saved
    res = job.run(runner.load_config(str(config_file)), work)
    want = json.loads((full / "results.json").read_text())
    for k in ("best_value", "best_step", "test_mean"):
        assert res[k] == want[k]
    assert (want["resumed_at_step"], res["resumed_at_step"]) == (0, 4)
    assert res["wall_time_s"] >= res["train_time_s"]  # the first process's training counts too
    for name in ("train.csv", "eval.csv"):
        got, ref = _rows(work / name), _rows(full / name)
        drop = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]
        assert drop(got) == drop(ref), name
    for task in ("cls", "pos"):
        a = hf.load_pretrained(full / "best_hf" / task, None).params
        b = hf.load_pretrained(work / "best_hf" / task, None).params
        assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


# ---------------------------------------------------------------- config mistakes


@pytest.mark.parametrize(
    "override, says",
    [
        ("--config.tasks=[{'name': 'a', 'dataset': 'bbc_news', 'lable_names': 'x'}]",
         "unknown key 'lable_names' (closest: 'label_names')"),
        ("--config.tasks=[{'name': 'a', 'max_length': 32}]",
         "has no data: set 'dataset' or 'train_file'"),
        ("--config.tasks=[{'name': 'a', 'dataset': 'x'}, {'name': 'a', 'dataset': 'y'}]",
         "the task name 'a' is used twice"),
        ("--config.tasks=[]", "tasks is empty"),
        ("--config.teacher.path=somewhere", "set each task's 'teacher'"),
        ("--config.tasks.nosuch.teacher=x", "unknown config key 'tasks.nosuch.teacher'"),
    ],
)  # fmt: skip
def test_config_mistakes_end_in_one_line(override, says, config_file, tmp_path, capsys):
    from flaxdistil.jobs import multitask as job

    argv = [f"--config={config_file}", f"--workdir={tmp_path / 'w'}", override]
    with pytest.raises(SystemExit) as e:
        runner.run(job.run, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1 and says in err, err


def test_a_task_field_from_the_command_line(config_file):
    argv = ["--config.tasks.pos.teacher=/x", "--config.tasks.0.teacher=/y"]
    cfg, _, _ = runner.parse([f"--config={config_file}", "--workdir=w", *argv])
    assert cfg.tasks[1]["teacher"] == "/x" and cfg.tasks[0]["teacher"] == "/y"


# ---------------------------------------------------------------- seeds and one-task arms


def test_seeds_script_summarises_per_task_metrics_of_a_one_task_arm(
    config_file, tmp_path, compile_cache
):
    """scripts/seeds.py --job multitask: a one-task arm (how configs/multitask_minilm.py makes
    the single-task students) over two seeds; seeds.json's mean / std are NumPy's over the
    seeds' results.json, which hold the same numbers as their per-task test scores."""
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "seeds.py"))["main"]
    cfg = runner.load_config(str(config_file))
    cfg.tasks = [t for t in cfg.tasks if t["name"] == "cls"]
    cfg.train.steps, cfg.eval.every, cfg.export.hf = 2, 2, False
    summary = main(cfg, tmp_path, "0,1", "multitask")
    runs = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [set(r["tasks"]) for r in runs] == [{"cls"}, {"cls"}]
    for r in runs:
        assert r["test"]["cls/accuracy"] == r["tasks"]["cls"]["test"]["accuracy"]
        assert r["test"]["mean"] == r["test"]["cls/accuracy"]  # one task: its own metric
    x = np.array([r["test"]["cls/accuracy"] for r in runs])
    mean, std = summary["test"]["cls/accuracy"]
    assert mean == pytest.approx(x.mean()) and std == pytest.approx(x.std(ddof=1))
    assert json.loads((tmp_path / "seeds.json").read_text())["seeds"] == [0, 1]


def test_real_config_arms_keep_one_task_and_its_cadence():
    from configs import multitask_minilm as m

    full = m.get_config()
    assert [t["name"] for t in full.tasks] == list(m.TASKS) and full.eval.every == 631 // 3
    for name in m.TASKS:
        c = m.get_config(name)
        assert [t["name"] for t in c.tasks] == [name] and c.eval.every == m.STEPS[name] // 3
        assert c.train.learning_rate == full.train.learning_rate  # the arms differ in tasks only
    with pytest.raises(ValueError, match="unknown argument"):
        m.get_config("movie")
