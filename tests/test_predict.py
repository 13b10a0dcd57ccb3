"""flaxdistil.pipeline and scripts/predict.py against transformers on tiny random BERTs.

Classification, regression and multi-label are compared with ``transformers.pipeline(
'text-classification')``, token classification with ``transformers.pipeline(
'token-classification')`` at each word's first sub-token; transformers 5 has no
question-answering pipeline, so QA is compared with the torch model's logits and a brute-force
search over every span, scored as transformers 4's pipeline did. Each weight format is read once:
safetensors (classification), pytorch_model.bin (token classification), HF's flax_model.msgpack
(QA), flaxdistil's own msgpack (scripts/convert.py to-flax).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flaxdistil
from flaxdistil import runner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests.test_distill_job import ENV  # noqa: E402
from tests.test_hf import _hf_flax_tree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat"),
    *("film", "movie", "good", "bad", "not", "very", "was", "is", "who", "what", "where", "?"),
    *(",", ".", "play", "##s", "##ing", "##ed", "un", "##believ", "##able", "run", "fun", "plot"),
    "actor",
]
TEXTS = [
    "the film was very good .",
    "a bad movie , not fun",
    "unbelievable",
    "the cat sat on the mat and played with the dog",  # 'and', 'with': [UNK]
    "the actors , the plot , the runs ... playing",
]
LABELS3 = {0: "negative", 1: "neutral", 2: "positive"}
TAGS = {0: "O", 1: "B-NP", 2: "I-NP", 3: "B-VP", 4: "I-VP"}
TOL = 1e-5


def _bert(cls: str, seed: int, tokenizer=None, **fields):
    """A tiny random BERT (hidden 32, 2 layers) with noise on every tensor: HF's zero biases and
    unit LayerNorms would hide a dropped bias."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, **fields,
    )  # fmt: skip
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "LayerNorm" in name else 0.1))
        if cls == "BertForSequenceClassification":
            # A random BERT pools every text to nearly the same vector, so one label would win
            # everywhere: amplify the differences and centre the logits on TEXTS.
            batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
            model.classifier.weight *= 10
            model.classifier.bias -= model(**batch).logits.mean(0)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(root / "vocab.txt"))
    out = {"root": root, "tokenizer": tok}

    def save(name, model, weights="safetensors"):
        d = root / name
        model.save_pretrained(d)
        tok.save_pretrained(d)
        if weights == "bin":
            (d / "model.safetensors").unlink()
            torch.save(model.state_dict(), d / "pytorch_model.bin")
        elif weights == "flax":
            from flax.serialization import msgpack_serialize

            (d / "model.safetensors").unlink()
            (d / "flax_model.msgpack").write_bytes(msgpack_serialize(_hf_flax_tree(model)))
        out[name] = (model, d)

    seq = "BertForSequenceClassification"
    save("cls", _bert(seq, 0, tok, id2label=LABELS3))
    save("multilabel", _bert(seq, 1, tok, id2label=LABELS3,
                             problem_type="multi_label_classification"))  # fmt: skip
    save("regression", _bert(seq, 2, tok, num_labels=1, problem_type="regression"))
    save("token", _bert("BertForTokenClassification", 3, id2label=TAGS), weights="bin")
    save("qa", _bert("BertForQuestionAnswering", 4), weights="flax")
    save("mlm", _bert("BertForMaskedLM", 5))
    return out


def _hf_pipeline(task, models, name, **kw):
    model, _ = models[name]
    return transformers.pipeline(task, model=model, tokenizer=models["tokenizer"], device="cpu",
                                 **kw)  # fmt: skip


def _predict_script(*args, stdin=None):
    cmd = [sys.executable, str(ROOT / "scripts" / "predict.py"), *map(str, args)]
    r = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1200
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# ---------------------------------------------------------------- sequence classification


def _check_classification(ours, theirs):
    assert [o["label"] for o in ours] == [t["label"] for t in theirs]
    np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=TOL)


def test_classification_matches_transformers(models, tmp_path):
    theirs = _hf_pipeline("text-classification", models, "cls")(TEXTS)
    assert len({t["label"] for t in theirs}) > 1  # the random model is not constant
    _, d = models["cls"]
    predict = flaxdistil.pipeline(None, d, batch_size=2)  # several batches and widths
    ours = predict(TEXTS)
    assert [o["text"] for o in ours] == TEXTS
    _check_classification(ours, theirs)
    # One compile per padded width (multiples of 16: 16 and 32 tokens here), none on a rerun.
    assert predict.forward._cache_size() == 2
    predict(TEXTS[::-1])
    assert predict.forward._cache_size() == 2
    # The script on standard input: blank lines skipped, one JSON object per input line.
    lines = _predict_script("--model", d, "--input", "-", stdin="\n".join(TEXTS[:2] + [""]))
    _check_classification(lines, theirs[:2])

    # flaxdistil's own params (scripts/convert.py to-flax), the tokenizer given apart
    convert = _load_script("convert")
    assert convert.main(["to-flax", "--src", str(d), "--head", "seq_cls",
                         "--out", str(tmp_path / "flax" / "params.msgpack")]) == 0  # fmt: skip
    ours = flaxdistil.pipeline("text-classification", tmp_path / "flax", tokenizer=d)(TEXTS)
    _check_classification(ours, theirs)
    # a task workdir: its exported best_hf
    shutil.copytree(d, tmp_path / "workdir" / "best_hf")
    _check_classification(flaxdistil.pipeline(None, tmp_path / "workdir")(TEXTS), theirs)


def test_multilabel_and_regression_match_transformers(models):
    theirs = _hf_pipeline("text-classification", models, "multilabel", top_k=None)(TEXTS)
    ours = flaxdistil.pipeline(None, models["multilabel"][1])(TEXTS)
    for o, t in zip(ours, theirs):  # transformers applies the sigmoid (problem_type multi-label)
        above = [(x["label"], x["score"]) for x in t if x["score"] > 0.5]
        assert [x["label"] for x in o["labels"]] == [label for label, _ in above]
        np.testing.assert_allclose([x["score"] for x in o["labels"]], [s for _, s in above],
                                   atol=TOL)  # fmt: skip
    assert {len(o["labels"]) for o in ours} != {0}

    theirs = _hf_pipeline("text-classification", models, "regression")(TEXTS)
    ours = flaxdistil.pipeline("regression", models["regression"][1])(TEXTS)
    np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=TOL)
    model, _ = models["regression"]  # transformers' score is the raw output: check it is
    ids = models["tokenizer"](TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        assert abs(model(**ids).logits.item() - ours[0]["score"]) < TOL


# ---------------------------------------------------------------- token classification


def test_token_classification_matches_transformers_first_subtoken(models):
    theirs = _hf_pipeline("token-classification", models, "token", ignore_labels=[])(TEXTS)
    ours = flaxdistil.pipeline(None, models["token"][1], batch_size=3)(TEXTS)
    n_words = 0
    for text, o, t in zip(TEXTS, ours, theirs):
        assert [w["word"] for w in o["words"]] == text.split()
        # A word's first sub-token is the token that starts where the word starts.
        by_start = {}
        for tok in t:
            by_start.setdefault(tok["start"], tok)
        for w in o["words"]:
            assert text[w["start"] : w["end"]] == w["word"]
            ref = by_start[w["start"]]
            assert w["label"] == ref["entity"], (text, w, ref)
            assert abs(w["score"] - float(ref["score"])) < TOL
            n_words += 1
    assert n_words == sum(len(t.split()) for t in TEXTS)
    # 'unbelievable' is three sub-tokens, 'cats,' two words of the tokenizer: one label each
    assert len(ours[2]["words"]) == 1

    # Words past max_length get no label; an empty text no words.
    short = flaxdistil.pipeline("token-classification", models["token"][1], max_length=6)
    cut, empty = short([TEXTS[3], ""])
    assert [w["label"] is None for w in cut["words"]] == [False] * 4 + [True] * 7
    assert empty == {"text": "", "words": []}


# ---------------------------------------------------------------- question answering

QUESTIONS = [
    {"question": "who sat on the mat ?", "context": "the cat sat on the mat . the dog was fun ."},
    {"question": "what was good ?", "context": "the film was very good , the plot was bad ."},
    # longer than max_length 32 below: several windows
    {"question": "where ?", "context": " ".join(["the actor was not very good ."] * 6)},
]


def _reference_answer(model, tok, ex, max_length, stride, max_answer_len=15):
    """transformers 4's QA pipeline, by brute force over the torch logits of each window."""
    enc = tok(
        ex["question"],
        ex["context"],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    best = (-1.0, 0, 0)
    for f, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(f)
        types = torch.tensor([enc["token_type_ids"][f]])
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), token_type_ids=types)
        keep = np.array([s == 1 or i == 0 for i, s in enumerate(seq)])  # context and CLS
        probs = []
        for z in (out.start_logits[0].numpy(), out.end_logits[0].numpy()):
            z = np.where(keep, z.astype(np.float64), -1e4)
            probs.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
        for s in range(len(ids)):
            for e in range(s, min(s + max_answer_len, len(ids))):
                if seq[s] != 1 or seq[e] != 1:
                    continue
                score = probs[0][s] * probs[1][e]
                if score > best[0]:
                    start = enc.word_to_chars(f, enc.token_to_word(f, s), sequence_index=1).start
                    end = enc.word_to_chars(f, enc.token_to_word(f, e), sequence_index=1).end
                    best = (score, start, end)
    return best


@pytest.mark.parametrize("max_length", [64, 32])
def test_qa_matches_torch_logits(models, max_length):
    model, d = models["qa"]
    ours = flaxdistil.pipeline("question-answering", d, max_length=max_length)(QUESTIONS)
    for ex, o in zip(QUESTIONS, ours):
        score, start, end = _reference_answer(
            model, models["tokenizer"], ex, max_length, min(128, max_length // 2)
        )
        assert (o["start"], o["end"]) == (start, end), (ex, o)
        assert o["answer"] == ex["context"][start:end] and o["answer"]
        assert abs(o["score"] - score) < TOL


def test_qa_script_reads_json_and_tab_separated_lines(models, tmp_path):
    model, d = models["qa"]
    lines = [json.dumps(QUESTIONS[0]), "\t".join(QUESTIONS[1].values())]
    f = tmp_path / "questions.txt"
    f.write_text("\n".join(lines) + "\n")
    ours = _predict_script("--model", d, "--input", f, "--batch-size", 1)
    ref = json.loads(json.dumps(flaxdistil.pipeline(None, d)(QUESTIONS[:2])))
    # the same objects, through JSON; the scores to float rounding (the script's batches of 1
    # and the pipeline's batch of 2 are different XLA programs)
    assert [{**o, "score": 0} for o in ours] == [{**o, "score": 0} for o in ref]
    assert [o["score"] for o in ours] == pytest.approx([o["score"] for o in ref], rel=1e-5)


# ---------------------------------------------------------------- mistakes: one line each


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_script_{name}", ROOT / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_line(capsys, *args) -> str:
    main = _load_script("predict").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e, runner.user_errors():
        main([str(a) for a in args])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_user_errors_end_in_one_line(models, tmp_path, capsys):
    root, cls, qa_dir = models["root"], models["cls"][1], models["qa"][1]
    text = tmp_path / "in.txt"
    text.write_text("a good film\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(QUESTIONS[0]) + '\n{"question": "who ?", "context": \n')
    no_arch = tmp_path / "no_arch"  # config.json names no architecture: --task decides the head
    shutil.copytree(models["mlm"][1], no_arch)
    cfg = json.loads((no_arch / "config.json").read_text())
    cfg.pop("architectures")
    (no_arch / "config.json").write_text(json.dumps(cfg))

    cases = {
        "missing model": (["--model", root / "nope", "--input", text], ["nope"]),
        "missing input": (["--model", cls, "--input", tmp_path / "x.txt"], ["x.txt", "stdin"]),
        "empty input": (["--model", cls, "--input", blank], ["no input", "blank.txt"]),
        "unknown task": (
            ["--model", cls, "--input", text, "--task", "ner2"],
            ["unknown task 'ner2'", "token_classification"],
        ),  # fmt: skip
        "task the head cannot do": (
            ["--model", cls, "--input", text, "--task", "qa"],
            ["needs a qa head", "'seq_cls'"],
        ),  # fmt: skip
        "no task head": (["--model", models["mlm"][1], "--input", text], ["'mlm'", "classifier"]),
        "untrained head": (
            ["--model", no_arch, "--input", text, "--task", "classification"],
            ["no trained seq_cls head", "random"],
        ),  # fmt: skip
        "no architecture, no task": (["--model", no_arch, "--input", text], ["--task"]),
        "invalid QA JSON": (
            ["--model", qa_dir, "--input", bad_json],
            ["bad.jsonl line 2", "invalid JSON", "QUESTION<TAB>CONTEXT"],
        ),  # fmt: skip
        "QA line without a tab": (["--model", qa_dir, "--input", text], ["line 1", "<TAB>"]),
        "no tokenizer": (["--model", tmp_path / "notok", "--input", text], ["tokenizer"]),
        "bad batch size": (["--model", cls, "--input", text, "--batch-size", 0], ["batch_size"]),
    }
    (tmp_path / "notok").mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(cls / f, tmp_path / "notok" / f)
    for name, (args, expect) in cases.items():
        line = _error_line(capsys, *args)
        for fragment in expect:
            assert fragment in line, (name, line)
