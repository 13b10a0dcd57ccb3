"""The teachers' own ensemble (scripts/evaluate_teachers.py): the averaging rules by hand, and a
two-teacher job whose ensemble accuracy is recomputed from transformers' logits."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from flaxdistil import evaluate
from flaxdistil.data.batching import eval_batches
from flaxdistil.jobs import ensemble
from flaxdistil.jobs import task as task_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/
from tests.test_teachers import _save, _tiny, _torch_logits, tiny_task_cfg  # noqa: E402


def _rows(seed, n=6, c=3):
    rng = np.random.RandomState(seed)
    return [rng.randn(c).astype(np.float32) * 2 for _ in range(n)]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_weighted_mean_of_logits_by_hand():
    a, b = _rows(0), _rows(1)
    out = evaluate.ensemble_outputs([a, b], [1.0, 3.0], "logits", "classification")
    for o, x, y in zip(out, a, b):
        np.testing.assert_allclose(o, 0.25 * x + 0.75 * y, rtol=1e-6)


def test_weighted_mean_of_probabilities_by_hand():
    a, b, c = _rows(0), _rows(1), _rows(2)
    out = evaluate.ensemble_outputs([a, b, c], [1, 1, 2], "probs", "classification")
    for o, x, y, z in zip(out, a, b, c):
        want = 0.25 * _softmax(x) + 0.25 * _softmax(y) + 0.5 * _softmax(z)
        np.testing.assert_allclose(_softmax(o), want, rtol=1e-5)
    sig = lambda x: 1 / (1 + np.exp(-x))
    out = evaluate.ensemble_outputs([a, b], [1, 1], "probs", "multilabel")
    for o, x, y in zip(out, a, b):
        np.testing.assert_allclose(sig(o), 0.5 * sig(x) + 0.5 * sig(y), rtol=1e-5)


def test_bad_averages_are_one_line():
    with pytest.raises(ValueError, match="'logits' or 'probs'"):
        evaluate.ensemble_outputs([_rows(0)], [1], "median", "classification")
    with pytest.raises(ValueError, match="no meaning for regression"):
        evaluate.ensemble_outputs([_rows(0)], [1], "probs", "regression")


def test_two_teachers_and_their_ensemble_against_transformers(tmp_path):
    """The job's per-teacher and ensemble test accuracies equal those computed from
    transformers' logits of the same test rows (weighted mean of logits, weights 1 : 3)."""
    pytest.importorskip("torch")
    a = _save(tmp_path / "a", _tiny(), 1)
    b = _save(tmp_path / "b", _tiny(hidden_size=48, num_hidden_layers=3, intermediate_size=50), 2)
    cfg = tiny_task_cfg(a, tmp_path)
    cfg.teachers = [{"path": str(a), "weight": 1.0}, {"path": str(b), "weight": 3.0}]
    res = ensemble.run(cfg, tmp_path / "ens")
    assert json.loads((tmp_path / "ens" / "results.json").read_text())["ensemble"]["weights"] == [
        1.0,
        3.0,
    ]

    _, data, *_ = task_job.setup(cfg)
    test = data.splits["test"]
    logits = {str(a): [], str(b): []}
    labels = []
    for idx, batch in eval_batches(test, 16, 0):
        for path in logits:
            logits[path].append(_torch_logits(path, batch)[: len(idx)])
        labels.append(test.labels[idx])
    labels = np.concatenate(labels)
    la, lb = (np.concatenate(logits[p]) for p in (str(a), str(b)))
    accuracy = lambda x: float((x.argmax(-1) == labels).mean())
    got = [r["test"]["accuracy"] for r in res["teachers"]]
    np.testing.assert_allclose(got, [accuracy(la), accuracy(lb)])
    np.testing.assert_allclose(res["ensemble"]["test"]["accuracy"], accuracy(0.25 * la + 0.75 * lb))
    assert res["teachers_test_mean_std"]["accuracy"][0] == pytest.approx(np.mean(got))


def test_no_teacher_is_one_line(tmp_path):
    from configs import task_tiny

    with pytest.raises(ValueError, match="no teacher to score"):
        ensemble.run(task_tiny.get_config(), tmp_path)
