"""Several teachers: the KD target against TextBrewer's MultiTeacherDistiller and hand
computations (weighted logits, weighted probabilities), config checks, and a two-teacher task run
with teachers of different sizes whose first KD term equals transformers' outputs."""

import csv
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from flaxdistil import hf, objective, teachers
from flaxdistil.data.batching import Batches
from flaxdistil.jobs import task as task_job
from flaxdistil.models import ModelConfig
from flaxdistil.student import init_student

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/

B, C = 5, 4


def _logits(seed, scale=2.0, shape=(B, C)):
    return (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)


def _np_log_softmax(x):
    x = np.float64(x) - np.max(x, -1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _obj(n, kd="ce", average="logits", weights=None, task="classification"):
    return objective.Objective(
        task=task,
        use_kd=True,
        kd_loss_type=kd,
        teacher_weights=tuple(weights or [1.0] * n),
        teacher_average=average,
    )


def _kd(obj, s, ts, temperature):
    value, _ = objective.kd_loss(obj, s, list(ts), None, None, temperature)
    return float(value)


# ---------------------------------------------------------------- the KD target


def test_equal_weights_are_textbrewers_multi_teacher_kd(tmp_path):
    """TextBrewer's MultiTeacherDistiller.train_on_batch on fixed logits of three teachers: its
    unweighted KD loss (kd_ce_loss of the mean teacher logits) is ours with equal weights."""
    torch = pytest.importorskip("torch")
    textbrewer = pytest.importorskip("textbrewer")

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, **batch):
            return self.logits

    s, ts, temperature = _logits(0), [_logits(1), _logits(2, 4.0), _logits(3, 0.5)], 3.0
    adaptor = lambda batch, out: {"logits": out}
    distiller = textbrewer.MultiTeacherDistiller(
        textbrewer.TrainingConfig(device="cpu", output_dir=str(tmp_path)),
        textbrewer.DistillationConfig(temperature=temperature, kd_loss_type="ce"),
        [Fixed(t) for t in ts],
        Fixed(s),
        adaptor,
        adaptor,
    )
    _, terms = distiller.train_on_batch({"x": torch.zeros(B)}, {})
    want = float(terms["unweighted_kd_loss"])
    np.testing.assert_allclose(_kd(_obj(3), s, ts, temperature), want, rtol=1e-6)


def test_weighted_logits_and_weighted_probabilities_by_hand():
    """weights (1, 3): the target is 0.25 t1 + 0.75 t2 ('logits') or 0.25 p1 + 0.75 p2 of the
    tempered softmaxes ('probs'); ce and kl_t2 against NumPy."""
    s, t1, t2, T = _logits(4), _logits(5), _logits(6, 3.0), 2.0
    log_q = _np_log_softmax(s / T)
    p_logits = np.exp(_np_log_softmax((0.25 * np.float64(t1) + 0.75 * t2) / T))
    p_probs = 0.25 * np.exp(_np_log_softmax(t1 / T)) + 0.75 * np.exp(_np_log_softmax(t2 / T))
    for average, p in (("logits", p_logits), ("probs", p_probs)):
        ce = -(p * log_q).sum(-1).mean()
        kl = (p * (np.log(p) - log_q)).sum(-1).mean() * T**2
        for kd, want in (("ce", ce), ("kl_t2", kl)):
            got = _kd(_obj(2, kd, average, [1.0, 3.0]), s, [t1, t2], T)
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(p_logits - p_probs).max() > 0.01  # the two rules differ on these logits


def test_weighted_probabilities_for_multilabel_bce():
    """bce (per-label sigmoids): the target is the weighted mean of the teachers' sigmoid(t/T)."""
    s, t1, t2, T = _logits(7), _logits(8), _logits(9), 2.0
    sig = lambda x: 1 / (1 + np.exp(-np.float64(x)))
    p = 0.5 * sig(t1 / T) + 0.5 * sig(t2 / T)
    z = np.float64(s) / T
    bce = (np.maximum(z, 0) - z * p + np.log1p(np.exp(-abs(z)))).mean() * T**2
    got = _kd(_obj(2, "bce", "probs", task="multilabel"), s, [t1, t2], T)
    np.testing.assert_allclose(got, bce, rtol=1e-5)


def test_token_level_target_is_the_mean_at_every_token():
    """Token classification [B,T,C] with padding: the mean of logits row by row, padding out."""
    s, t1, t2 = (_logits(i, shape=(2, 6, 3)) for i in (10, 11, 12))
    mask = np.ones((2, 6), np.int32)
    mask[1, 4:] = 0
    obj = _obj(2, "kl_t2", task="token_classification")
    got, _ = objective.kd_loss(obj, s, [t1, t2], mask, None, 1.0)
    log_q, p = _np_log_softmax(s), np.exp(_np_log_softmax((np.float64(t1) + t2) / 2))
    kl = (p * (np.log(p) - log_q)).sum(-1)
    np.testing.assert_allclose(float(got), kl[mask == 1].mean(), rtol=1e-5)


def test_probability_averaging_needs_a_softmax_loss_and_a_constant_temperature():
    with pytest.raises(ValueError, match="teacher_average='probs'.*kd_loss_type"):
        _obj(2, "mse", "probs")
    with pytest.raises(ValueError, match="constant temperature"):
        objective.Objective(
            task="classification", use_kd=True, kd_loss_type="ce", teacher_weights=(1.0, 1.0),
            teacher_average="probs", temperature_scheduler=("flsw", 1.0, 2.0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="teacher_average must be one of"):
        _obj(2, average="mean")
    with pytest.raises(ValueError, match="positive"):
        _obj(2, weights=[1.0, 0.0])
    assert _obj(2, weights=[1.0, 3.0]).teacher_weights == (0.25, 0.75)


# ---------------------------------------------------------------- the config


def _cfg(**kw):
    from configs import common

    c = common.base("task")
    for k, v in kw.items():
        node, *rest = k.split("__")
        if rest:
            c[node][rest[0]] = v
        else:
            c[k] = v
    return c


def test_teacher_entries_and_their_errors():
    assert teachers.entries(_cfg()) == []
    one = teachers.entries(_cfg(teacher__path="a", teacher__dtype="bfloat16"))
    assert one == [{"path": "a", "weight": 1.0, "dtype": "bfloat16", "intermediate_matches": None,
                    "tokenizer": ""}]  # fmt: skip
    two = teachers.entries(_cfg(teachers=[{"path": "a"}, {"path": "b", "weight": 2}]))
    assert [(e["path"], e["weight"], e["dtype"]) for e in two] == [
        ("a", 1.0, "float32"),
        ("b", 2.0, "float32"),
    ]
    bad = [
        (dict(teacher__path="a", teachers=[{"path": "b"}]), "not both"),
        (dict(teachers=[{"path": "a", "weigth": 2}]), "unknown key 'weigth' \\(closest: 'weight'"),
        (dict(teachers=[{"weight": 2}]), r"teachers\[0\] needs a 'path'"),
        (dict(teachers=[{"path": "a", "weight": -1}]), "positive number"),
        (dict(teachers=["a"]), "expects a dict"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg) as e:
            teachers.entries(_cfg(**kw))
        assert "\n" not in str(e.value)


def test_a_teacher_with_another_vocabulary(tmp_path):
    """Two tokens swapped: another tokenizer, refused for general distillation in one line and
    taken as the teacher's own for a task; the same vocabulary is shared (no own tokenizer).
    (tests/test_tokenizers.py runs teachers with their own tokenizers.)"""
    from flaxdistil import assets
    from flaxdistil.data import text_pipeline

    tok = text_pipeline.load_tokenizer(assets.minilm_dir())
    s_cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=37)  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    words = (Path(assets.minilm_dir()) / "vocab.txt").read_text().splitlines()
    words[2000], words[2001] = words[2001], words[2000]
    (other / "vocab.txt").write_text("\n".join(words) + "\n")
    config = '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}'
    (other / "tokenizer_config.json").write_text(config)
    pre = lambda path, vocab: hf.Pretrained(s_cfg.replace(vocab_size=vocab), {}, None, path, None)
    with pytest.raises(ValueError, match="vocab_size 30600, the student 30522, and no tok") as e:
        teachers.resolve_tokenizers([teachers.Teacher(pre(tmp_path, 30600), "big")], s_cfg, tok,
                                    "classification")  # fmt: skip
    assert "\n" not in str(e.value)
    swapped = teachers.Teacher(pre(other, len(tok)), "other")
    with pytest.raises(ValueError, match="tokenizer differs from the student's .*MLM") as e:
        teachers.resolve_tokenizers([swapped], s_cfg, tok, "mlm")
    assert "\n" not in str(e.value)
    teachers.resolve_tokenizers([swapped], s_cfg, tok, "classification")
    assert swapped.own_tokenizer is not None
    same = teachers.Teacher(pre(Path(assets.minilm_dir()), len(tok)), "minilm")
    teachers.resolve_tokenizers([same], s_cfg, tok, "mlm")  # the same vocabulary passes
    assert same.own_tokenizer is None


# ---------------------------------------------------------------- a two-teacher run


def _tiny(**fields):
    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, num_labels=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return ModelConfig(**{**base, **fields})


def _save(path, cfg, seed):
    from flaxdistil import assets

    params = init_student(cfg, "seq_cls", jax.random.key(seed))
    # Noise on every tensor: logits of O(1) (an untrained head's are ~0, and so would be the KD).
    rng = np.random.RandomState(seed)
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), params)
    return hf.save_pretrained(path, params, cfg, "seq_cls", tokenizer_from=assets.minilm_dir())


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """A 2-layer x 32 and a 3-layer x 48 teacher (trained heads: saved, not new) and a student
    with the small one's shape."""
    root = tmp_path_factory.mktemp("teachers")
    small = _save(root / "small", _tiny(), 1)
    big = _save(root / "big", _tiny(hidden_size=48, num_hidden_layers=3, intermediate_size=50), 2)
    student = _save(root / "student", _tiny(), 3)
    return small, big, student


def tiny_task_cfg(student, work, steps=2):
    from configs import task_tiny

    c = task_tiny.get_config()
    c.student.path = str(student)
    c.data.cache_dir = str(work / "tok")
    c.data.max_train_examples = 32
    c.data.max_eval_examples = 16
    c.train.update(dict(epochs=1, steps=steps, batch_size=8))
    c.eval.update(dict(every=0, at_epoch_end=False, metric="loss"))
    c.export.hf = False
    return c


def _torch_logits(path, batch):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    t = lambda k: torch.from_numpy(np.asarray(batch[k])).long()
    with torch.no_grad():
        out = model(t("input_ids"), attention_mask=t("attention_mask"),
                    token_type_ids=t("token_type_ids"))  # fmt: skip
    return out.logits.numpy()


def test_two_teachers_of_different_sizes_in_one_run(two_teachers, tmp_path):
    """Each teacher with its own weight and match (the big one through a 32 -> 48 projection):
    the first step's KD is KL x T^2 against the weighted mean of transformers' teacher logits,
    with the student's logits from transformers too (dropout is off)."""
    pytest.importorskip("torch")
    small, big, student = two_teachers
    cfg = tiny_task_cfg(student, tmp_path)
    cos = {"layer_T": -1, "layer_S": -1, "feature": "hidden", "loss": "cos"}
    mse = {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse",
           "proj": ["linear", 32, 48]}  # fmt: skip
    cfg.teachers = [
        {"path": str(small), "weight": 1.0, "intermediate_matches": [cos]},
        {"path": str(big), "weight": 3.0, "intermediate_matches": [mse], "dtype": "float32"},
    ]
    cfg.distill.temperature = 2.0
    res = task_job.run(cfg, tmp_path / "run")
    assert res["teacher"] == [str(small), str(big)]
    with (tmp_path / "run" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert "loss_m0_cos_s2_t2_teacher0" in rows[0]
    assert "loss_m1_hidden_mse_s2_t3_teacher1" in rows[0]
    assert all(np.isfinite(float(r["loss"])) for r in rows)

    _, data, *_ = task_job.setup(cfg)
    t = cfg.train
    batch = next(Batches(data.splits["train"], t.batch_size, t.seed, 0, t.pad_multiple))
    s_logits = _torch_logits(student, batch)
    t_logits = 0.25 * _torch_logits(small, batch) + 0.75 * _torch_logits(big, batch)
    log_q = _np_log_softmax(s_logits / 2.0)
    p = np.exp(_np_log_softmax(t_logits / 2.0))
    want = (p * (np.log(p) - log_q)).sum(-1).mean() * 4.0
    np.testing.assert_allclose(float(rows[0]["loss_kd"]), want, rtol=1e-4)


def test_a_teacher_without_its_own_matches_gets_the_distill_ones(two_teachers, tmp_path):
    """distill.intermediate_matches apply to each teacher that has none, counted in its layers;
    a bad one names the teacher."""
    from flaxdistil.jobs import common

    small, big, student = two_teachers
    cfg = tiny_task_cfg(student, tmp_path)
    cfg.teachers = [{"path": str(small)}, {"path": str(big)}]
    cfg.distill.intermediate_matches = [
        {"layer_T": -1, "layer_S": -1, "feature": "attention", "loss": "attention_mse"}
    ]
    ts = teachers.load(cfg, "seq_cls", num_labels=2)
    obj, _ = common.build_objective(cfg, "classification", _tiny(), ts, None, 10)
    assert [(m.teacher, m.layer_T) for m in obj.matches] == [(0, 2), (1, 3)]
    assert obj.teacher_outputs(1)["output_attentions"] == "scores"
    cfg.distill.intermediate_matches = [
        {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse"}
    ]
    with pytest.raises(ValueError, match=r"teacher 0 \(.*small\): match 0: layer_T=3"):
        common.build_objective(cfg, "classification", _tiny(), ts, None, 10)


def test_config_file_fields_exist():
    c = _cfg()
    assert isinstance(c, ml_collections.ConfigDict)
    assert c.teachers == [] and c.distill.teacher_average == "logits"
    assert c.teacher.cache is None and c.teacher.cache_dtype == "float32"
