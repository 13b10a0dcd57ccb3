"""Teacher and student with different tokenizers (issue 10, section 4), on two hand-built WordPiece
tokenizers that split the same words differently: the word alignment by hand, the first step's
KD against transformers' logits of both models on their own tokens (sequence and token level),
a cached teacher equal to the live one, the refusals, and a student's own vocabulary (the mean
initialisation by hand, a trained WordPiece tokenizer with MiniLM's normalisation)."""

import csv
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxdistil import hf, teacher_cache, teachers, vocab
from flaxdistil.data import tasks
from flaxdistil.data.batching import Batches, word_alignment
from flaxdistil.jobs import common
from flaxdistil.jobs import task as task_job
from flaxdistil.models import ModelConfig
from flaxdistil.student import init_student

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The student's pieces and the teacher's: every word splits differently, and the teacher's
# special tokens sit at other ids (its [PAD] is 1).
STUDENT_VOCAB = SPECIALS + ["un", "##happy", "dogs", "run", "fast", "ca", "##ts"]
TEACHER_VOCAB = ["[UNK]", "[PAD]", "[SEP]", "[CLS]", "[MASK]", "unhappy", "dog", "##s", "ru",
                 "##n", "fa", "##st", "cats"]  # fmt: skip
WORDS = ["unhappy", "dogs", "run", "fast", "cats"]


def wordpiece(path, tokens):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer({t: i for i, t in enumerate(tokens)}, lowercase=True)
    return vocab.save_wordpiece(tok, path)


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    return wordpiece(root / "student", STUDENT_VOCAB), wordpiece(root / "teacher", TEACHER_VOCAB)


def test_hand_built_tokenizers_split_as_written(toks):
    s, t = toks
    assert s.tokenize("unhappy dogs run") == ["un", "##happy", "dogs", "run"]
    assert t.tokenize("unhappy dogs run") == ["unhappy", "dog", "##s", "ru", "##n"]
    assert t.pad_token_id == 1 and t.cls_token_id == 3
    assert not teachers.same_tokenizer(s, t) and teachers.same_tokenizer(s, s)


# ---------------------------------------------------------------- word alignment by hand


def _encode(tok, sentences, max_length):
    spec = tasks.TaskSpec("token_classification", label_names=("A", "B"))
    examples = [tasks.Example(words, [0] * len(words)) for words in sentences]
    return tasks.encode(examples, tok, spec, max_length)


def test_word_alignment_by_hand(toks):
    """Student / teacher tokens (positions from 0, [CLS] first):
    'unhappy dogs run': [CLS] un ##happy dogs run [SEP] / [CLS] unhappy dog ##s ru ##n [SEP]
      first sub-tokens: student 1, 3, 4; teacher 1, 2, 4;
    'dogs run fast':    [CLS] dogs run fast [SEP] / [CLS] dog ##s ru ##n [SEP] (max_length 6
      cuts the teacher's 'fast'): student 1, 2, 3; teacher 1, 3, -;
    'cats fast':        [CLS] ca ##ts fast [SEP] / [CLS] cats fa ##st [SEP]: 1, 3; 1, 2."""
    s_tok, t_tok = toks
    sentences = [["unhappy", "dogs", "run"], ["dogs", "run", "fast"], ["cats", "fast"]]
    s, t = _encode(s_tok, sentences, 6), _encode(t_tok, sentences, 6)
    assert list(t.lengths) == [6, 6, 5]
    align, found = word_alignment(s, t, np.arange(3), 8)
    want_align = np.zeros((3, 8), np.int32)
    want_found = np.zeros((3, 8), np.int32)
    for r, pairs in enumerate([[(1, 1), (3, 2), (4, 4)], [(1, 1), (2, 3)], [(1, 1), (3, 2)]]):
        for sp, tp in pairs:
            want_align[r, sp], want_found[r, sp] = tp, 1
    np.testing.assert_array_equal(align, want_align)
    np.testing.assert_array_equal(found, want_found)

    batches = Batches(s, 3, seed=0, pad_id=0, pad_multiple=8, teacher_rows={0: (t, 1)})
    order = batches.epoch_plan(0)[0]
    b = next(batches)
    np.testing.assert_array_equal(b["teacher0/align"], want_align[order])
    np.testing.assert_array_equal(b["kd_mask"], want_found[order])
    assert b["teacher0/input_ids"].shape == (3, 8)
    ids = b["teacher0/input_ids"][list(order).index(2)]  # 'cats fast', padded with its [PAD] 1
    assert t_tok.convert_ids_to_tokens(ids[:5].tolist()) == ["[CLS]", "cats", "fa", "##st", "[SEP]"]
    assert list(ids[5:]) == [1, 1, 1]


# ---------------------------------------------------------------- runs


def _tiny(vocab_size, pad, **fields):
    base = dict(vocab_size=vocab_size, pad_token_id=pad, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                num_labels=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)  # fmt: skip
    return ModelConfig(**{**base, **fields})


def _save(path, cfg, head, tok_dir, seed):
    params = init_student(cfg, head, jax.random.key(seed))
    rng = np.random.RandomState(seed)  # O(1) logits: an untrained head's are ~0
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.3, x.shape).astype(x.dtype), params)
    return hf.save_pretrained(path, params, cfg, head, tokenizer_from=tok_dir)


def _data(path, token_level: bool, n=24):
    rng = np.random.RandomState(0)
    with path.open("w") as f:
        for _ in range(n):
            words = list(rng.choice(WORDS, rng.randint(2, 6)))
            tags = [int(rng.randint(2)) for _ in words]
            label = tags if token_level else int(rng.randint(2))
            f.write(json.dumps({"text": words if token_level else " ".join(words), "label": label}))
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def models(toks, tmp_path_factory):
    """{head: (student dir, teacher dir)}: a 2-layer student on the student's pieces and a
    3-layer x 48 teacher on the teacher's."""
    root = tmp_path_factory.mktemp("models")
    s_tok, t_tok = toks
    out = {}
    for head in ("seq_cls", "token_cls"):
        s_cfg = _tiny(len(STUDENT_VOCAB), 0)
        t_cfg = _tiny(len(TEACHER_VOCAB), 1, hidden_size=48, num_hidden_layers=3)
        out[head] = (
            _save(root / f"{head}_student", s_cfg, head, s_tok.name_or_path, 1),
            _save(root / f"{head}_teacher", t_cfg, head, t_tok.name_or_path, 2),
        )
    return out


def _cfg(models, head, work, steps=2):
    from configs import task_tiny

    student, teacher = models[head]
    c = task_tiny.get_config()
    token_level = head == "token_cls"
    c.data.train_file = str(_data(work / "data.jsonl", token_level))
    c.data.task = "token_classification" if token_level else "classification"
    c.data.label_names = "A,B"
    c.data.heldout_fraction = 0.25
    c.data.max_length = 8  # some rows are cut: on the teacher's side more often
    c.data.cache_dir = str(work / "tok")
    c.student.path = str(student)
    c.teacher.path = str(teacher)
    c.distill.temperature = 2.0
    c.train.update(dict(epochs=1, steps=steps, batch_size=12, seed=0))
    c.eval.update(dict(every=0, at_epoch_end=False, metric="loss"))
    c.export.hf = False
    return c


def _rows(workdir):
    with (workdir / "train.csv").open() as f:
        return list(csv.DictReader(f))


def _torch(path, head, words, token_level, max_length):
    """transformers' logits of one example on the model's own tokens, and the HF word ids."""
    import torch
    import transformers

    from flaxdistil.data import text_pipeline

    tok = text_pipeline.load_tokenizer(path)
    enc = tok(words if token_level else " ".join(words), is_split_into_words=token_level,
              truncation=True, max_length=max_length, return_tensors="pt")  # fmt: skip
    auto = (
        "AutoModelForTokenClassification" if token_level else "AutoModelForSequenceClassification"
    )
    model = getattr(transformers, auto).from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(**{k: v.long() for k, v in enc.items()}).logits[0].numpy()
    return np.float64(logits), enc.word_ids(0)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl_t2(s, t, temperature):
    lp, lq = _log_softmax(t / temperature), _log_softmax(s / temperature)
    return (np.exp(lp) * (lp - lq)).sum(-1) * temperature**2


def _first_subtokens(word_ids):
    """{word: position of its first sub-token}, from transformers' word_ids()."""
    out = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in out:
            out[w] = pos
    return out


def _reference_kd(cfg, head):
    """KL x T^2 of the first batch, every model on its own tokens in transformers: per example
    (sequence level), or per word both sides kept, at its first sub-tokens (token level)."""
    _, data, *_ = task_job.setup(cfg)
    order = Batches(data.splits["train"], cfg.train.batch_size, cfg.train.seed).epoch_plan(0)[0]
    student, teacher = cfg.student.path, cfg.teacher.path
    token_level, values = head == "token_cls", []
    for i in order:
        words = data.examples["train"][i].text
        words = words if token_level else words.split()
        s, s_words = _torch(student, head, words, token_level, cfg.data.max_length)
        t, t_words = _torch(teacher, head, words, token_level, cfg.data.max_length)
        if not token_level:
            values.append(_kl_t2(s, t, 2.0))
            continue
        s_at, t_at = _first_subtokens(s_words), _first_subtokens(t_words)
        values += [_kl_t2(s[s_at[w]], t[t_at[w]], 2.0) for w in s_at if w in t_at]
    return float(np.mean(values)), len(values)


@pytest.mark.parametrize("head", ["seq_cls", "token_cls"])
def test_kd_with_a_teacher_of_another_tokenizer(models, head, tmp_path):
    """The first step's KD is transformers' teacher on its own tokens against transformers'
    student on its own; token classification: at the first sub-token of each word both kept."""
    pytest.importorskip("torch")
    cfg = _cfg(models, head, tmp_path)
    task_job.run(cfg, tmp_path / "run")
    want, n = _reference_kd(cfg, head)
    assert n == 12 if head == "seq_cls" else n > 20  # 12 examples / their words both kept
    np.testing.assert_allclose(float(_rows(tmp_path / "run")[0]["loss_kd"]), want, rtol=1e-4)


def test_a_cached_teacher_of_another_tokenizer_equals_the_live_one(models, tmp_path):
    """teacher.cache stores the teacher's outputs on its own tokens (the key covers its token
    ids, not the student's) and the run's losses equal the live teacher's."""
    cfg = _cfg(models, "token_cls", tmp_path, steps=3)
    task_job.run(cfg, tmp_path / "live")
    cfg.teacher.cache = str(tmp_path / "cache")
    res = task_job.run(cfg, tmp_path / "cached")
    assert res["teacher_cache"] is True
    for live, cached in zip(_rows(tmp_path / "live"), _rows(tmp_path / "cached"), strict=True):
        for k in ("loss", "loss_kd", "loss_hard"):
            np.testing.assert_allclose(float(cached[k]), float(live[k]), rtol=1e-5)
    (entry,) = [p for p in (tmp_path / "cache").iterdir()]
    key = json.loads((entry / "meta.json").read_text())["key"]
    _, data, _, _, _, ts = task_job.setup(cfg)
    own = ts[0].rows
    assert key["data"] == teacher_cache.digest_arrays(
        [own.input_ids, own.token_type_ids, own.lengths]
    )
    s = data.splits["train"]
    assert key["data"] != teacher_cache.digest_arrays([s.input_ids, s.token_type_ids, s.lengths])


def test_the_same_tokenizer_changes_nothing(toks, tmp_path):
    """A teacher whose tokenizer only differs in its truncation setting shares the student's:
    no own tokenizer, no second encoding."""
    s_tok, _ = toks
    other = wordpiece(tmp_path / "again", STUDENT_VOCAB)
    other.backend_tokenizer.enable_truncation(max_length=3)
    other.save_pretrained(tmp_path / "again")
    cfg = _tiny(len(STUDENT_VOCAB), 0)
    t = teachers.Teacher(hf.Pretrained(cfg, {}, None, tmp_path / "again", None), "again")
    teachers.resolve_tokenizers([t], cfg, s_tok, "mlm")
    assert t.own_tokenizer is None


# ---------------------------------------------------------------- refusals


def test_what_cannot_be_distilled_across_tokenizers_is_refused(models, toks, tmp_path):
    s_tok, _ = toks
    _, teacher_dir = models["token_cls"]
    s_cfg = _tiny(len(STUDENT_VOCAB), 0)
    t_cfg = _tiny(len(TEACHER_VOCAB), 1, hidden_size=48, num_hidden_layers=3)
    teacher = lambda path, tok="": teachers.Teacher(
        hf.Pretrained(t_cfg, {}, None, Path(path), None), str(path), tokenizer=tok
    )
    for task, msg in [("mlm", "general \\(MLM\\) distillation needs one vocabulary"),
                      ("qa", "QA start/end logits")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"tokenizer differs from the student's.*{msg}") as e:
            teachers.resolve_tokenizers([teacher(teacher_dir)], s_cfg, s_tok, task)
        assert "\n" not in str(e.value) and "13 vs 12 tokens" in str(e.value)
    bare = tmp_path / "bare"  # weights without tokenizer files: its tokenizer must be named
    bare.mkdir()
    with pytest.raises(ValueError, match="no tokenizer files: name its tokenizer with teacher"):
        teachers.resolve_tokenizers([teacher(bare)], s_cfg, s_tok, "classification")
    named = teacher(bare, tok=str(teacher_dir))
    teachers.resolve_tokenizers([named], s_cfg, s_tok, "classification")
    assert named.own_tokenizer.pad_token_id == 1

    cfg = _cfg(models, "token_cls", tmp_path)
    cfg.distill.intermediate_matches = [
        {"layer_T": -1, "layer_S": -1, "feature": "hidden", "loss": "cos"}
    ]
    with pytest.raises(ValueError, match="intermediate match .* per-token features") as e:
        common.build_objective(cfg, "token_classification", s_cfg, [named], s_tok, 10)
    assert "\n" not in str(e.value)


def test_general_distillation_with_another_vocabulary_is_one_line(models, toks, tmp_path):
    """The general job refuses a teacher with another vocabulary before reading any corpus."""
    from configs import tiny
    from flaxdistil.jobs import general

    student, _ = models["token_cls"]
    t_cfg = _tiny(len(TEACHER_VOCAB), 1)
    teacher = _save(tmp_path / "mlm_teacher", t_cfg, "mlm", toks[1].name_or_path, 3)
    c = tiny.get_config()
    c.teacher.path = str(teacher)
    c.student.init, c.student.path, c.student.layers = "pretrained", str(student), ""
    with pytest.raises(ValueError, match="general \\(MLM\\) distillation needs one vocab") as e:
        general.run(c, tmp_path / "gd")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- a student's own vocabulary


def test_own_vocabulary_rows_are_means_of_the_old_pieces(toks):
    """New token -> old pieces, by hand, with the teacher's pieces as the new vocabulary and the
    student's as the old: the specials by role; 'unhappy' = mean(un, ##happy), 'cats' =
    mean(ca, ##ts); 'dog', '##s', 'ru', '##n', 'fa', '##st' have no old pieces: [UNK]'s row."""
    old, new = toks  # old: the student's pieces, new: the teacher's
    sources, counts = vocab.token_sources(new, old)
    o = old.get_vocab()
    want = {
        "[UNK]": [o["[UNK]"]], "[PAD]": [o["[PAD]"]], "[SEP]": [o["[SEP]"]],
        "[CLS]": [o["[CLS]"]], "[MASK]": [o["[MASK]"]],
        "unhappy": [o["un"], o["##happy"]], "cats": [o["ca"], o["##ts"]],
    }  # fmt: skip
    n = new.get_vocab()
    for token, ids in want.items():
        assert sources[n[token]] == ids, token
    for token in ("dog", "##s", "ru", "##n", "fa", "##st"):  # not coverable by the old pieces
        assert sources[n[token]] == [o["[UNK]"]], token
    assert counts == {"same": 5, "mean": 2, "unk": 6}

    cfg = _tiny(len(STUDENT_VOCAB), 0)
    params = init_student(cfg, "seq_cls", jax.random.key(0))
    table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    out, new_cfg, report = vocab.own_vocabulary(params, cfg, old, new)
    got = np.asarray(out["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    assert got.shape == (len(TEACHER_VOCAB), 32) and new_cfg.vocab_size == len(TEACHER_VOCAB)
    assert new_cfg.pad_token_id == 1 and "2 means" in report
    np.testing.assert_allclose(got[n["unhappy"]], (table[o["un"]] + table[o["##happy"]]) / 2)
    np.testing.assert_array_equal(got[n["[PAD]"]], table[o["[PAD]"]])
    assert out["encoder"]["layer"] is params["encoder"]["layer"]  # the layers are kept


def test_continuation_pieces_start_from_continuation_rows(toks, tmp_path):
    """A new '##happyx' is the old tokenisation of 'happyx' read as a continuation: ##happy
    (the old continuation piece) then nothing it cannot cover -> [UNK] only if empty."""
    old, _ = toks
    new = wordpiece(tmp_path / "cont", SPECIALS + ["##happy", "##dogs", "dogs"])
    sources, _ = vocab.token_sources(new, old)
    n, o = new.get_vocab(), old.get_vocab()
    assert sources[n["##happy"]] == [o["##happy"]]  # in the old vocabulary as such
    assert sources[n["##dogs"]] == [o["dogs"]]  # 'dogs' has no old '##dogs': the word's row
    assert sources[n["dogs"]] == [o["dogs"]]


def test_train_wordpiece_has_minilm_normalisation(tmp_path):
    """A trained tokenizer loads in AutoTokenizer with MiniLM's normaliser, pre-tokeniser and
    decoder, the specials at 0-4, and the asked size on a corpus that has enough pieces."""
    from transformers import AutoTokenizer

    from flaxdistil import assets
    from flaxdistil.data import text_pipeline

    texts = [" ".join(f"w{i}x{j} Café naïve" for j in range(30)) for i in range(40)] * 3
    tok = vocab.train_wordpiece(texts, 200, tmp_path / "wp")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert len(again) == 200 and len(tok) == 200
    assert [again.convert_tokens_to_ids(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    minilm = text_pipeline.load_tokenizer(assets.minilm_dir())
    state = lambda t: json.loads(t.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert state(again)[part] == state(minilm)[part], part
    assert "".join(again.tokenize("CAFÉ")).replace("##", "") == "cafe"
