"""Metrics against hand computations and against scikit-learn / SciPy on random data."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from flaxdistil import metrics

# --- hand-made cases -----------------------------------------------------------------------


def test_binary_mcc_by_hand():
    # labels      1 1 1 0 0 0 0 1
    # predictions 1 1 0 0 0 1 0 1  -> TP=3 FN=1 TN=3 FP=1
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9-1)/sqrt(4*4*4*4) = 0.5
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 1, 0, 0, 0, 1, 0, 1]
    assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(0.5)
    # accuracy 6/8; F1 per class: class1 2*3/(2*3+1+1)=0.75, class0 the same -> macro 0.75
    assert metrics.accuracy(preds, labels) == pytest.approx(0.75)
    assert metrics.macro_f1(preds, labels) == pytest.approx(0.75)


def test_per_class_f1_by_hand():
    # labels 0 0 1 2, preds 0 1 1 1: class0 TP1 FN1 -> 2/3; class1 TP1 FP2 -> 2/4; class2 FN1 -> 0
    f1 = metrics.per_class_f1([0, 1, 1, 1], [0, 0, 1, 2])
    assert f1 == pytest.approx({0: 2 / 3, 1: 0.5, 2: 0.0})
    assert metrics.macro_f1([0, 1, 1, 1], [0, 0, 1, 2]) == pytest.approx((2 / 3 + 0.5) / 3)


def test_degenerate_cases_are_zero_not_nan():
    labels = [0, 1, 1, 0, 1]
    assert metrics.matthews_corrcoef([1] * 5, labels) == 0.0  # constant predictions
    assert metrics.matthews_corrcoef([1] * 5, [1] * 5) == 0.0  # one class everywhere
    assert metrics.pearson([2.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0
    assert metrics.spearman([2.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0
    assert metrics.accuracy([], []) == 0.0


def test_pearson_spearman_by_hand():
    # y = 2x + 1 exactly -> r = 1; y = -x -> r = -1; a monotone non-linear map -> rho = 1
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, -x) == pytest.approx(-1.0)
    assert metrics.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert metrics.mse([1.0, 2.0], [0.0, 4.0]) == pytest.approx((1 + 4) / 2)


def test_rankdata_averages_ties():
    # sorted: 1 (rank 1), 2 2 (ranks 2,3 -> 2.5), 5 (rank 4)
    np.testing.assert_allclose(metrics.rankdata([2, 1, 5, 2]), [2.5, 1, 4, 2.5])


# --- against scikit-learn / SciPy ----------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, 200)
    # Correct about half the time so the scores are neither 0 nor 1.
    preds = np.where(rng.random(200) < 0.5, labels, rng.integers(0, num_classes, 200))
    assert metrics.accuracy(preds, labels) == pytest.approx(
        sklearn.metrics.accuracy_score(labels, preds)
    )
    assert metrics.macro_f1(preds, labels) == pytest.approx(
        sklearn.metrics.f1_score(labels, preds, average="macro")
    )
    assert metrics.matthews_corrcoef(preds, labels) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, preds)
    )


def test_macro_f1_with_class_missing_from_predictions_matches_sklearn():
    labels = np.array([0, 1, 2, 3, 3, 2])
    preds = np.array([0, 1, 1, 1, 0, 0])  # never predicts 2 or 3
    assert metrics.macro_f1(preds, labels) == pytest.approx(
        sklearn.metrics.f1_score(labels, preds, average="macro", zero_division=0)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=100)
    x = 0.6 * y + rng.normal(size=100)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    # STS-B-like scores on a 0..5 grid in steps of 0.2 have many ties.
    xt, yt = np.round(x * 5) / 5, np.round(y * 5) / 5
    assert metrics.spearman(xt, yt) == pytest.approx(scipy.stats.spearmanr(xt, yt)[0])


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 5)) < 0.3).astype(int)
    logits = rng.normal(size=(50, 5)) + 2 * (labels - 0.5)
    pred = (logits > 0).astype(int)  # sigmoid(z) > 0.5  <=>  z > 0
    out = metrics.multilabel_metrics(logits, labels)
    assert out["micro_f1"] == pytest.approx(sklearn.metrics.f1_score(labels, pred, average="micro"))
    assert out["macro_f1"] == pytest.approx(sklearn.metrics.f1_score(labels, pred, average="macro"))
    assert out["subset_accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, pred))


# --- token classification ------------------------------------------------------------------


def test_token_accuracy_ignores_minus_100():
    labels = [[-100, 1, 2, -100], [-100, 0, -100, -100]]
    preds = [[5, 1, 0, 5], [5, 0, 5, 5]]  # 2 of 3 labelled tokens right
    assert metrics.token_accuracy(preds, labels) == pytest.approx(2 / 3)


def test_bio_chunks():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-ORG", "O", "I-PER"]
    # An I- tag without a matching open chunk starts one (seqeval / conlleval behaviour).
    assert metrics.bio_chunks(tags) == [
        ("PER", 0, 1),
        ("LOC", 3, 3),
        ("LOC", 4, 5),
        ("ORG", 6, 6),
        ("PER", 8, 8),
    ]


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]
    # gold chunks: PER(0-1), LOC(3), ORG; predicted: PER(0-0) wrong boundary, LOC, ORG
    # -> 2 correct of 3 predicted and of 3 gold: P = R = F1 = 2/3
    out = metrics.entity_f1(pred, gold)
    assert out["entity_precision"] == pytest.approx(2 / 3)
    assert out["entity_recall"] == pytest.approx(2 / 3)
    assert out["entity_f1"] == pytest.approx(2 / 3)


def test_compute_token_classification_with_bio_names():
    names = ["O", "B-PER", "I-PER"]
    labels = np.array([[-100, 1, 2, 0, -100]])
    logits = np.zeros((1, 5, 3))
    logits[0, [1, 2, 3], [1, 2, 0]] = 1.0  # predicts exactly the gold tags
    out = metrics.compute("token_classification", logits, labels, label_names=names)
    assert out["token_accuracy"] == 1.0 and out["entity_f1"] == 1.0
    assert "entity_f1" not in metrics.compute(
        "token_classification", logits, labels, ["a", "b", "c"]
    )


# --- SQuAD ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Cat!", "cat"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theatre", "theatre"),  # 'the' is removed only as a whole word
        ("U.S.A.", "usa"),
    ],
)
def test_squad_normalization(raw, normalized):
    assert metrics.normalize_answer(raw) == normalized


def test_squad_em_f1_by_hand():
    out = metrics.squad_metrics(
        {"q1": "The Cat!", "q2": "big red dog", "q3": "nothing"},
        {"q1": ["cat"], "q2": ["a red dog", "dog"], "q3": ["yes"]},
    )
    # q1 EM 1, F1 1; q2 EM 0, F1 vs 'red dog': P=2/3 R=1 -> 0.8 (vs 'dog': P=1/3 R=1 -> 0.5);
    # q3 0, 0.
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx((1 + 0.8 + 0) / 3)


def test_compute_dispatch():
    out = metrics.compute("classification", np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 0]))
    assert out == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}
    assert set(metrics.compute("regression", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])) == {
        "pearson",
        "spearman",
        "mse",
    }
    assert metrics.compute("qa", ["The Cat"], [["cat"]])["exact_match"] == 1.0
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError, match="unknown task_type"):
        metrics.compute("ranking", [], [])
