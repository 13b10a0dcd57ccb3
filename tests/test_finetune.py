"""Task fine-tuning / distillation: step losses against transformers, KD against an independent
soft KL, early stopping by hand, and tiny end-to-end runs on real movie-snippet slices."""

import csv
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import evaluate, hf, losses, objective, train
from flaxdistil.data.batching import Batches
from flaxdistil.data.tasks import from_rows
from flaxdistil.jobs import task as task_job
from flaxdistil.loop import EarlyStopping
from flaxdistil.models import Model, ModelConfig
from flaxdistil.student import init_student

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/

# Dropout off, so a step's reported loss is exactly the deterministic forward's.
CFG = ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TASK_SETUP = {  # task -> (head, config fields)
    "classification": ("seq_cls", dict(num_labels=3)),
    "regression": ("seq_cls", dict(num_labels=1, problem_type="regression")),
    "multilabel": ("seq_cls", dict(num_labels=3, problem_type="multi_label_classification")),
    "token_classification": ("token_cls", dict(num_labels=5)),
    "qa": ("qa", {}),
}


def _batch(task, B=4, T=12, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, 99, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    ids[mask == 0] = 0
    labels = {
        "classification": lambda: rng.randint(0, 3, B).astype(np.int32),
        "regression": lambda: rng.randn(B).astype(np.float32),
        "multilabel": lambda: (rng.rand(B, 3) > 0.5).astype(np.float32),
        "token_classification": lambda: np.where(
            (mask == 1) & (rng.rand(B, T) > 0.3), rng.randint(0, 5, (B, T)), -100
        ).astype(np.int32),
        "qa": lambda: np.stack([rng.randint(1, 5, B), rng.randint(3, 7, B)], 1).astype(np.int32),
    }[task]()
    types = np.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def _random_params(cfg, head, seed, noise):
    """Random weights without compiling an init: shapes from eval_shape, then normal(0.02)
    kernels/embeddings, LayerNorm scales 1 and zero biases, each plus ``noise`` x N(0, 1) so that
    every tensor matters and logits are O(1)."""
    shapes = jax.eval_shape(
        lambda: Model(cfg, head).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    )
    rng = np.random.RandomState(seed)

    def init(path, x):
        leaf = str(getattr(path[-1], "key", path[-1]))
        base = {"scale": 1.0, "bias": 0.0}.get(leaf)
        value = rng.standard_normal(x.shape) * (noise if base is not None else 0.02 + noise)
        return (value + (base or 0.0)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(init, shapes)


def _model(task, seed=0, noise=0.0, teacher_seed=None):
    """Tiny model; with ``teacher_seed`` also a teacher of the same architecture (one compile)."""
    head, fields = TASK_SETUP[task]
    cfg = CFG.replace(**fields)
    model = Model(cfg, head)
    params = _random_params(cfg, head, seed, noise)
    if teacher_seed is None:
        return model, params, cfg
    return model, params, cfg, _random_params(cfg, head, teacher_seed, noise)


# The last hidden states, student vs teacher (both 2 layers): DistilBERT's cosine as a match.
COS = objective.Match(layer_T=2, layer_S=2, feature="hidden", loss="cos", weight=0.7)
WEIGHTS = {"temperature": 3.0, "hard_label_weight": 0.5, "kd_loss_weight": 2.0}


def _objective(task):
    kd = {"regression": "mse", "multilabel": "bce"}.get(task, "kl_t2")
    return objective.Objective(task=task, use_kd=True, kd_loss_type=kd, matches=(COS,))


def _step(task, params, model, teacher=None, t_params=None, lr=1e-3):
    obj = _objective(task)
    hp = objective.hparams(WEIGHTS, obj)
    tx = train.make_optimizer(learning_rate=lr, total_steps=100)
    state = train.create_state(params, tx)
    fn = jax.jit(
        lambda s, tp, b, r: train.train_step(
            s, tp, b, r, hp, student=model, teacher=teacher, obj=obj, tx=tx
        )
    )
    return state, fn


# ---------------------------------------------------------------- losses vs references


def _np_log_softmax(x, T):
    x = np.float64(x) / T
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_soft_kl(s, t, T, mask=None):
    """Hinton KD in NumPy: T^2 * mean over selected rows of KL(softmax(t/T) || softmax(s/T))."""
    lp, lq = _np_log_softmax(t, T), _np_log_softmax(s, T)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    sel = np.ones(kl.shape, bool) if mask is None else mask.astype(bool)
    return kl[sel].mean() * T**2


def _np_kd(task, s, t, mask, T):
    if task == "classification":
        return _np_soft_kl(s, t, T)
    if task == "multilabel":
        p = 1 / (1 + np.exp(-np.float64(t) / T))
        z = np.float64(s) / T
        return np.mean(np.maximum(z, 0) - z * p + np.log1p(np.exp(-np.abs(z)))) * T**2
    if task == "token_classification":
        return _np_soft_kl(s, t, T, mask)
    if task == "regression":  # TextBrewer's kd_mse_loss: ((s - t) / T)^2
        return np.mean(((np.float64(s) - t) / T) ** 2)
    # QA: start and end distributions over each example's real tokens, averaged
    return np.mean(
        [
            np.mean(
                [
                    _np_soft_kl(s[b, m == 1, i][None], t[b, m == 1, i][None], T)
                    for b, m in enumerate(mask)
                ]
            )
            for i in (0, 1)
        ]
    )


def _np_cosine(hs, ht, mask):
    hs, ht = np.float64(hs)[mask == 1], np.float64(ht)[mask == 1]
    cos = (hs * ht).sum(-1) / np.sqrt((hs * hs).sum(-1) * (ht * ht).sum(-1))
    return np.mean(1 - cos)


def _torch_loss(task, head, params, cfg, batch, tmp_path):
    """The loss transformers' *For* model computes on the same weights and batch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out_dir = hf.save_pretrained(tmp_path / "m", params, cfg, head)
    auto = {
        "seq_cls": "AutoModelForSequenceClassification",
        "token_cls": "AutoModelForTokenClassification",
        "qa": "AutoModelForQuestionAnswering",
    }[head]
    pt = getattr(transformers, auto).from_pretrained(out_dir).eval()
    kw = {
        k: torch.tensor(batch[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    labels = torch.tensor(batch["labels"])
    if task == "qa":
        kw.update(start_positions=labels[:, 0].long(), end_positions=labels[:, 1].long())
    else:
        kw["labels"] = labels.float() if task in ("regression", "multilabel") else labels.long()
    with torch.no_grad():
        return float(pt(**kw).loss)


@pytest.mark.parametrize("task", ["classification", "regression", "token_classification", "qa"])
def test_step_losses_equal_references(task, tmp_path):
    """One distillation step on a fixed batch reports: loss_hard = transformers' own loss
    (BertFor* on the same weights: CE, regression MSE, token CE with -100, QA start/end CE);
    loss_kd = KD in NumPy (soft KL x T^2; MSE for regression); the cosine match = 1 - cos in
    NumPy; loss = the weighted sum."""
    model, params, cfg, t_params = _model(task, seed=0, noise=0.3, teacher_seed=1)
    batch = _batch(task, seed=3)
    state, step = _step(task, params, model, model, t_params)
    new_state, m = step(state, t_params, batch, jax.random.key(0))
    assert int(new_state.step) == 1

    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    forward = jax.jit(lambda p: model.apply({"params": p}, *inputs))
    (s, s_aux), (t, t_aux) = forward(params), forward(t_params)
    mask = batch["attention_mask"]
    ref_hard = _torch_loss(task, model.head, params, cfg, batch, tmp_path)
    ref_kd = _np_kd(task, np.asarray(s), np.asarray(t), mask, 3.0)
    ref_hid = _np_cosine(s_aux["last_hidden_state"], t_aux["last_hidden_state"], mask)
    np.testing.assert_allclose(float(m["loss_hard"]), ref_hard, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["loss_kd"]), ref_kd, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(m[COS.key(0)]), ref_hid, rtol=2e-4, atol=1e-6)
    total = 0.5 * ref_hard + 2.0 * ref_kd + 0.7 * ref_hid
    np.testing.assert_allclose(float(m["loss"]), total, rtol=2e-4)
    if task == "classification":  # the library's soft_kl agrees with the NumPy one
        np.testing.assert_allclose(float(losses.soft_kl(s, t, None, 3.0)), ref_kd, rtol=2e-4)


def test_multilabel_losses_equal_references():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    s, t = rng.randn(5, 3).astype(np.float32) * 2, rng.randn(5, 3).astype(np.float32) * 2
    labels = (rng.rand(5, 3) > 0.5).astype(np.float32)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want_hard = float(bce(torch.tensor(s), torch.tensor(labels)))
    got = objective.hard_loss(jnp.asarray(s), jnp.asarray(labels), "multilabel")
    np.testing.assert_allclose(float(got), want_hard, rtol=1e-5)
    got_kd = losses.KD_LOSS_MAP["bce"](jnp.asarray(s), jnp.asarray(t), 2.0)
    np.testing.assert_allclose(float(got_kd), _np_kd("multilabel", s, t, None, 2.0), rtol=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    # The classification program of test_step_losses_equal_references: a compile-cache hit.
    model, params, _, t_params = _model("classification", seed=0, noise=0.3, teacher_seed=1)
    batch = _batch("classification", seed=3)
    state, step = _step("classification", params, model, model, t_params)
    seen = []
    for i in range(15):
        state, m = step(state, t_params, batch, jax.random.key(i))
        seen.append(float(m["loss"]))
    assert seen[-1] < 0.6 * seen[0] and max(seen[-5:]) < min(seen[:3]), seen


# ---------------------------------------------------------------- early stopping, batches


def test_early_stopping_by_hand():
    es = EarlyStopping("mcc", patience=3)
    verdicts = []
    for step, value in zip(range(10, 80, 10), [0.1, 0.5, 0.4, 0.5, 0.45, 0.6, 0.2]):
        improved = es.update(step, value)
        verdicts.append((improved, es.should_stop))
        if es.should_stop:
            break
    # 0.5 at step 20 is best; 0.4, 0.5 (equal is no improvement), 0.45 are 3 bad evals: stop.
    assert verdicts == [
        (True, False),
        (True, False),
        (False, False),
        (False, False),
        (False, True),
    ]
    assert (es.best, es.best_step, es.bad_evals) == (0.5, 20, 3)

    loss = EarlyStopping("loss", patience=2, min_delta=0.01)  # auto mode: min for loss
    assert loss.mode == "min"
    assert [loss.update(s, v) for s, v in enumerate([1.0, 0.995, 0.9, 0.95])] == [
        True,
        False,
        True,
        False,
    ]
    assert not loss.should_stop and loss.best_step == 2
    never = EarlyStopping("accuracy", patience=0)
    for s in range(20):
        never.update(s, 0.5)
    assert not never.should_stop
    restored = EarlyStopping("mcc")
    restored.load_state_dict(es.state_dict())
    assert restored.state_dict() == es.state_dict()
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("mcc", mode="up")


def test_epoch_plan_is_seeded_full_and_grouped():
    lengths = np.random.RandomState(0).randint(3, 60, 203)
    rows = from_rows([np.full(n, 7) for n in lengths], None, np.zeros(len(lengths), np.int32))
    plan_of = lambda epoch, **kw: Batches(rows, 8, seed=1, group_batches=5, **kw).epoch_plan(epoch)
    plan = plan_of(0)
    assert plan.shape == (25, 8) and len(set(plan.ravel())) == 200
    np.testing.assert_array_equal(plan, plan_of(0))
    assert not np.array_equal(plan, plan_of(1))
    spread = lambda p: np.mean([np.ptp(lengths[b]) for b in p])
    flat = plan_of(0, group_by_length=False)
    assert spread(plan) < 0.5 * spread(flat)  # grouping cuts the padding


# ---------------------------------------------------------------- tiny jobs on real data


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """The tiny jobs below compile the same programs again and again (each job builds its own
    jitted functions); a persistent cache keyed on the program turns repeats into lookups."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(keys[1], 0.0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer, hidden-32 BERT with MiniLM's tokenizer (vocab 30522)."""
    from flaxdistil import assets

    cfg = CFG.replace(vocab_size=30522)
    out = tmp_path_factory.mktemp("tiny") / "hf"
    params = init_student(cfg, None, jax.random.key(0))
    return hf.save_pretrained(out, params, cfg, None, tokenizer_from=assets.minilm_dir())


def _tiny_cfg(model_path, tmp_path, evals=None, **train):
    evals = evals or {}
    from configs import task_tiny

    c = task_tiny.get_config()
    c.student.path = str(model_path)
    c.data.cache_dir = str(tmp_path / "tok")
    c.data.max_train_examples = 48
    c.data.max_eval_examples = 24
    # One step count for most runs: identical programs hit the persistent compile cache.
    c.train.update(dict(epochs=1, steps=4), **train)
    c.eval.update(dict(every=2, metric="loss"), **evals)
    return c


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    cfg = _tiny_cfg(tiny_dir, work, steps=6)
    return task_job.run(cfg, work / "job"), work / "job", cfg


def test_progress_csv_best_checkpoint_and_export(tiny_run):
    results, work, cfg = tiny_run
    with (work / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "step",
        "epoch",
        "eval_loss",
        "eval_accuracy",
        "eval_macro_f1",
        "eval_mcc",
        "elapsed_s",
    ]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    losses_ = [float(r["eval_loss"]) for r in rows]
    best = int(rows[int(np.argmin(losses_))]["step"])
    assert results["best_step"] == best
    assert best < 6  # this seeded run peaks early: the kept checkpoint is not the last state
    assert results["best_value"] == pytest.approx(min(losses_))
    assert [p.name for p in (work / "best").iterdir() if p.name.isdigit()] == [str(best)]
    # The export is the best model: reloaded, it scores the best eval again.
    pre = hf.load_pretrained(work / "best_hf", "seq_cls")
    assert pre.config.id2label == ((0, "neg"), (1, "pos"))  # the dataset's label names
    assert pre.config.problem_type == "single_label_classification"
    _, data, *_ = task_job.setup(cfg)
    fwd = evaluate.make_forward(Model(pre.config, "seq_cls"))
    again = evaluate.evaluate_task(fwd, pre.params, data, "validation", batch_size=16)
    assert again["loss"] == pytest.approx(min(losses_), rel=1e-5)
    assert (work / "train.csv").exists() and any((work / "tb").rglob("events.*"))
    assert set(results["test"]) == {"loss", "accuracy", "macro_f1", "mcc"}


def test_distill_job_from_a_fine_tuned_teacher(tiny_run, tmp_path):
    _, teacher_work, _ = tiny_run
    cfg = _tiny_cfg("", tmp_path, steps=2)
    cfg.teacher.path = str(teacher_work / "best_hf")
    cfg.student.init, cfg.student.layers = "slice", "0"
    cfg.export.hf = False
    res = task_job.run(cfg, tmp_path / "kd")
    assert res["layers"] == 1 and res["teacher"] == cfg.teacher.path
    with (tmp_path / "kd" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["loss_kd"]) > 0 for r in rows)
    cfg.teacher.path = str(teacher_work.parent.parent / "nope")
    with pytest.raises(FileNotFoundError):
        task_job.run(cfg, tmp_path / "kd2")


def test_compare_models_writes_csv_and_pngs(tiny_dir, tmp_path):
    from flaxdistil import compare

    cfg = _tiny_cfg(tiny_dir, tmp_path, evals={"metric": "mcc"})
    cfg.export.hf = False
    cfg.compare.models = f"tiny-L2={tiny_dir};tiny-L1={tiny_dir}@0"
    rows = compare.compare(cfg, tmp_path / "cmp")
    assert [r["model"] for r in rows] == ["tiny-L2", "tiny-L1"]
    assert rows[0]["params"] > rows[1]["params"]
    with (tmp_path / "cmp" / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["tiny-L2", "tiny-L1"]
    assert {"wall_time_s", "steps_to_best", "test_mcc", "test_accuracy", "params"} <= set(table[0])
    for png in ("mcc_vs_steps.png", "runtime.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="name=path"):
        compare.parse_models("just-a-path")


def test_compare_over_seeds_summarises_each_model(tiny_dir, tmp_path):
    """compare.seeds=0,1: each model per seed (a '{seed}' path reads that seed's checkpoint);
    summary.csv is NumPy's mean / std (ddof 1) of the per-seed results.json, the plotted curve
    is the mean of the seeds' eval.csv, comparison.md the paired difference of the seeds."""
    from flaxdistil import compare

    for s in (0, 1):
        (tmp_path / f"m_{s}").symlink_to(tiny_dir)
    cfg = _tiny_cfg(tiny_dir, tmp_path, evals={"metric": "mcc"})
    cfg.export.hf = False
    cfg.compare.seeds = "0,1"
    cfg.compare.models = f"A={tmp_path}/m_{{seed}};B={tiny_dir}@0"
    work = tmp_path / "cmp"
    rows = compare.compare(cfg, work)
    assert [(r["model"], r["seed"]) for r in rows] == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    res = {
        (m, s): json.loads((work / m / f"seed_{s}" / "results.json").read_text())
        for m in "AB"
        for s in (0, 1)
    }
    assert res["A", 0]["test"] != res["A", 1]["test"]  # the seeds really differ
    with (work / "summary.csv").open() as f:
        summary = {r["model"]: r for r in csv.DictReader(f)}
    for m in "AB":
        x = np.array([res[m, s]["test"]["accuracy"] for s in (0, 1)])
        assert float(summary[m]["test_accuracy_mean"]) == pytest.approx(x.mean(), abs=1e-12)
        assert float(summary[m]["test_accuracy_std"]) == pytest.approx(x.std(ddof=1), abs=1e-12)
        assert summary[m]["seeds"] == "2"
    curves = [compare.read_curve(work / "A" / f"seed_{s}" / "eval.csv", "mcc") for s in (0, 1)]
    steps, mean, _ = compare.mean_curve(curves)
    assert steps == curves[0][0]
    np.testing.assert_allclose(mean, np.mean([c[1] for c in curves], axis=0), atol=1e-12)
    d = [res["B", s]["test"]["mcc"] - res["A", s]["test"]["mcc"] for s in (0, 1)]
    assert f"{np.mean(d):+.4f} [" in (work / "comparison.md").read_text()
    for png in ("mcc_vs_steps.png", "runtime.png"):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_random_students_and_bad_specs():
    from configs import task_tiny
    from flaxdistil import compare

    (e,) = compare.parse_models("T4=random:T4-tiny")
    c = compare.configure(task_tiny.get_config(), e)
    assert (c.student.init, c.student.preset, c.student.layers) == ("random", "T4-tiny", "")
    for bad, expect in (
        ("T4=random:T5-huge", "one of"),
        ("T4=random:T4-tiny@0", "no @layers"),
        ("A=x;A=y", "distinct model names"),
    ):
        with pytest.raises(ValueError, match=expect):
            compare.parse_models(bad)
    for bad in ("0,0", "a", ","):
        with pytest.raises(ValueError, match="compare.seeds: expected distinct integers"):
            compare.parse_seeds(bad)
    assert compare.parse_seeds("") is None and compare.parse_seeds("3,1") == [3, 1]
    from configs import bbc_minilm

    real = bbc_minilm.get_config("compare").compare
    assert len(compare.parse_models(real.models)) == 6 and compare.parse_seeds(real.seeds)


def test_resume_continues_and_a_fresh_run_drops_stale_outputs(tiny_dir, tmp_path):
    cfg = _tiny_cfg(tiny_dir, tmp_path, steps=4)
    cfg.export.hf = False
    first = task_job.run(cfg, tmp_path / "job")
    cfg.train.steps = 6  # a longer run in the same workdir picks up at step 4
    second = task_job.run(cfg, tmp_path / "job")
    with (tmp_path / "job" / "eval.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert (first["steps_run"], second["steps_run"], steps) == (4, 6, [2, 4, 6])
    assert (first["resumed_at_step"], second["resumed_at_step"]) == (0, 4)
    # Training is part of the run: a resumed run's wall time counts the training before the
    # resume too (it once counted only the last process, below its own train_time_s).
    for res in (first, second):
        assert res["wall_time_s"] >= res["train_time_s"] > 0
    # A workdir without checkpoints (here: deleted) starts afresh, with none of the old logs.
    import shutil

    shutil.rmtree(tmp_path / "job" / "checkpoints")
    res = task_job.run(_tiny_cfg(tiny_dir, tmp_path, steps=4), tmp_path / "job")
    with (tmp_path / "job" / "eval.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [2, 4] and res["best_step"] in steps
    best = [p.name for p in (tmp_path / "job" / "best").iterdir() if p.name.isdigit()]
    assert best == [str(res["best_step"])]


def test_token_level_eval_aligns_rows_of_any_length():
    """Batches pad to their widest row (multiples of 16 here), so rows of one example come back
    wider than its labels; evaluation cuts every row to its own length before padding both."""
    lengths = [5, 17, 23, 9]  # not multiples of 16, and different batches get different widths
    rng = np.random.RandomState(0)
    labels = [rng.randint(0, 3, n) for n in lengths]
    for lab in labels:
        lab[0] = -100  # [CLS] carries no label
    enc = from_rows([np.full(n, 7) for n in lengths], None, labels, token_level=True)
    # a fake forward: the logit of class (position % 3), so predictions are known by hand
    forward = lambda p, ids, mask, types: jax.nn.one_hot(jnp.arange(ids.shape[1]) % 3, 3)[
        None
    ].repeat(ids.shape[0], 0)
    outs = evaluate.predict(forward, None, enc, batch_size=2)
    assert [o.shape[0] for o in outs] != lengths  # padded by the batches ...
    logits, lab = evaluate.token_level_arrays(outs, enc)
    assert logits.shape == (4, 23, 3) and lab.shape == (4, 23)  # ... cut and padded together
    hits = total = 0
    for y in labels:
        keep = y != -100
        hits += (np.arange(len(y))[keep] % 3 == y[keep]).sum()
        total += keep.sum()
    got = evaluate.metrics.compute("token_classification", logits, lab)["token_accuracy"]
    assert got == pytest.approx(hits / total)
