"""Token classification and regression end to end: the per-tag table against scikit-learn's
classification_report, Pearson / Spearman against SciPy on a tiny model's real test
predictions, and the fair-comparison arms of configs/brown_pos_minilm.py and
configs/movie_regression_minilm.py starting from the same weights pairwise."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from flaxdistil import evaluate, hf, metrics
from flaxdistil.jobs import common as job_common
from flaxdistil.jobs import task as task_job
from flaxdistil.models import Model, ModelConfig
from flaxdistil.student import init_student

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/

from configs import brown_pos_minilm, common, movie_regression_minilm, task_tiny  # noqa: E402

TINY = ModelConfig(  # a random 4-layer, hidden-32 BERT with MiniLM's vocabulary
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=128,
)


def _sklearn_report(y_true, y_pred, names):
    """sklearn's per-class rows (its default label set: labels and predictions), by name."""
    ids = sorted(set(y_true) | set(y_pred))
    rep = sklearn.metrics.classification_report(
        y_true,
        y_pred,
        labels=ids,
        target_names=[names[i] for i in ids],
        output_dict=True,
        zero_division=0,
    )
    return {names[i]: rep[names[i]] for i in ids}


def _assert_same_report(ours, theirs):
    assert set(ours) == set(theirs)
    for name, row in theirs.items():
        for k in ("precision", "recall", "f1-score"):
            assert ours[name][k] == pytest.approx(row[k]), (name, k)
        assert ours[name]["support"] == row["support"]


def test_per_label_report_by_hand_and_against_sklearn():
    names = ["DET", "NOUN", "VERB", "ADJ", "X"]
    gold = [0, 1, 2, 1, 1, 3, 0, 2]
    pred = [0, 1, 1, 1, 4, 1, 0, 2]  # ADJ never predicted; X predicted, never gold
    ours = metrics.per_label_report(pred, gold, names)
    # NOUN: TP 2 (positions 1, 3), predicted 4 times (1, 2, 3, 5), gold 3 times (1, 3, 4)
    assert ours["NOUN"] == pytest.approx(
        {"precision": 0.5, "recall": 2 / 3, "f1-score": 4 / 7, "support": 3}
    )
    assert ours["X"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    _assert_same_report(ours, _sklearn_report(gold, pred, names))
    macro = np.mean([r["f1-score"] for r in ours.values()])
    assert macro == pytest.approx(sklearn.metrics.f1_score(gold, pred, average="macro"))
    assert set(metrics.per_label_report(pred, gold)) == {"0", "1", "2", "3", "4"}  # no names


def test_token_level_report_leaves_out_ignored_positions():
    names = ["a", "b", "c"]
    labels = np.array([[-100, 0, 1, 2, -100], [-100, 2, 2, -100, -100]])
    logits = np.zeros((2, 5, 3))
    pred = np.array([[1, 0, 1, 1, 2], [0, 2, 0, 1, 1]])  # -100 positions predict anything
    np.put_along_axis(logits, pred[..., None], 1.0, axis=-1)
    keep = labels != -100
    theirs = _sklearn_report(labels[keep].tolist(), pred[keep].tolist(), names)
    _assert_same_report(metrics.label_report("token_classification", logits, labels, names), theirs)
    out = metrics.compute("token_classification", logits, labels, names)
    assert out["token_macro_f1"] == pytest.approx(
        sklearn.metrics.f1_score(labels[keep], pred[keep], average="macro")
    )
    assert metrics.label_report("regression", np.zeros(3), np.zeros(3)) is None


# --- tiny end-to-end runs on the real data ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from flaxdistil import assets

    out = tmp_path_factory.mktemp("tiny") / "hf"
    params = init_student(TINY, None, jax.random.key(0))
    return hf.save_pretrained(out, params, TINY, None, tokenizer_from=assets.minilm_dir())


def _tiny_cfg(model_path, tmp_path, dataset, task):
    c = task_tiny.get_config()
    c.student.path = str(model_path)
    c.data.update(dict(dataset=dataset, task=task, max_train_examples=32, max_eval_examples=24))
    c.data.cache_dir = str(tmp_path / "tok")
    c.train.update(dict(epochs=1, steps=3, batch_size=8))
    c.eval.update(dict(every=0, metric="loss"))
    return c


def _test_outputs(cfg, work, head):
    """The exported best model's test outputs and labels, predicted again from best_hf."""
    _, data, *_ = task_job.setup(cfg)
    pre = hf.load_pretrained(work / "best_hf", head)
    fwd = evaluate.make_forward(Model(pre.config, head))
    enc = data.splits["test"]
    outs = evaluate.predict(fwd, pre.params, enc, batch_size=16)
    return data, outs, enc


def test_brown_pos_run_reports_tags_as_sklearn(tiny_dir, tmp_path):
    cfg = _tiny_cfg(tiny_dir, tmp_path, "brown_pos", "token_classification")
    res = task_job.run(cfg, tmp_path / "pos")
    assert {"token_accuracy", "token_macro_f1", "loss"} <= set(res["test"])
    data, outs, enc = _test_outputs(cfg, tmp_path / "pos", "token_cls")
    gold, pred = [], []
    for i, out in enumerate(outs):  # each sentence's labelled tokens, by hand
        y = enc.labels[enc.offsets[i] : enc.offsets[i + 1]]
        keep = y != -100
        gold += y[keep].tolist()
        pred += out[: len(y)].argmax(-1)[keep].tolist()
    names = data.label_names
    _assert_same_report(res["test_per_label"], _sklearn_report(gold, pred, names))
    assert res["test"]["token_accuracy"] == pytest.approx(
        sklearn.metrics.accuracy_score(gold, pred)
    )
    assert res["test"]["token_macro_f1"] == pytest.approx(
        sklearn.metrics.f1_score(gold, pred, average="macro")
    )


def test_movie_regression_run_correlations_as_scipy(tiny_dir, tmp_path):
    cfg = _tiny_cfg(tiny_dir, tmp_path, "movie_snippets", "regression")
    res = task_job.run(cfg, tmp_path / "reg")
    assert res["test_per_label"] is None
    _, outs, enc = _test_outputs(cfg, tmp_path / "reg", "seq_cls")
    y_pred = np.array([o[0] for o in outs])
    y = enc.labels
    assert y.dtype.kind == "f" and y.min() < 0 < y.max()  # the human scores, not the sign
    assert res["test"]["pearson"] == pytest.approx(scipy.stats.pearsonr(y_pred, y)[0], abs=1e-5)
    assert res["test"]["spearman"] == pytest.approx(scipy.stats.spearmanr(y_pred, y)[0], abs=1e-5)
    assert res["test"]["mse"] == pytest.approx(np.mean((y_pred - y) ** 2), rel=1e-5)


# --- the arms of the fair comparison -------------------------------------------------------


@pytest.mark.parametrize("module", [brown_pos_minilm, movie_regression_minilm])
def test_arms_pairwise_share_the_initial_weights(module, tiny_dir, tmp_path):
    """'distill' / 'baseline_ft' start from the same slice of the fine-tuned teacher and
    'distill_pre' / 'baseline' from the same slice of the pretrained model; only the KD differs
    within a pair."""
    task = module.get_config().data.task
    head, fields = (
        ("token_cls", dict(num_labels=5))
        if task != "regression"
        else ("seq_cls", dict(num_labels=1, problem_type="regression"))
    )
    teacher_cfg = TINY.replace(**fields)
    teacher = hf.save_pretrained(
        tmp_path / "teacher",
        init_student(teacher_cfg, head, jax.random.key(1)),
        teacher_cfg,
        head,
        tokenizer_from=tiny_dir,
    )
    built = {}
    for arm in common.STUDENT_ARMS:
        c = module.get_config(arm)
        c.teacher.path, c.student.path = str(teacher), str(tiny_dir)
        teachers = job_common.load_teachers(c, head, **fields)
        rng = jax.random.key(c.train.seed)
        params, s_cfg, origin = job_common.build_student(c, teachers[0].pre, head, rng, **fields)
        assert s_cfg.num_hidden_layers == 2 and origin.endswith("layers [0, 2]"), origin
        built[arm] = (params, c.distill.kd_loss_weight)
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, built[a][0], built[b][0]))
    assert same("distill", "baseline_ft") and same("distill_pre", "baseline")
    assert not same("distill", "distill_pre")
    assert [built[a][1] for a in common.STUDENT_ARMS] == [None, 0.0, None, 0.0]
    with pytest.raises(ValueError, match="unknown argument 'tiny'"):
        module.get_config("tiny")
