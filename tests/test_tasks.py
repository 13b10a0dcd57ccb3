"""Task readers, validation, splitting, encoding/caching, batching and SQuAD-style QA, on tiny
files written in the real formats and the real MiniLM WordPiece tokenizer."""

import collections
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from flaxdistil.assets import minilm_dir
from flaxdistil.data import qa, tasks

SENTIMENT = tasks.TaskSpec("classification", label_names=("negative", "positive"))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- readers and validation ----------------------------------------------------------------


def test_csv_with_header_and_bad_rows(tmp_path):
    path = write(
        tmp_path,
        "reviews.csv",
        "text,label\n"
        '"Great, really great",positive\n'  # row 2: quoted comma
        "   ,negative\n"  # row 3: whitespace text
        "awful,neutral\n"  # row 4: label not in the set
        "fine,1\n"  # row 5: label by index
        "meh,\n"  # row 6: missing label
        "bad,negative\n",
    )
    examples, report = tasks.read_examples(path, SENTIMENT)
    assert [(e.text, e.label) for e in examples] == [
        ("Great, really great", 1),
        ("fine", 1),
        ("bad", 0),
    ]
    assert report.total == 6 and report.kept == 3
    assert report.skipped == {"empty_text": 1, "unknown_label": 1, "missing_label": 1}
    assert report.first_rows == {"empty_text": [3], "unknown_label": [4], "missing_label": [6]}
    assert "skipped 1 (unknown_label)" in str(report)


def test_tsv_pairs_keep_unbalanced_quotes(tmp_path):
    spec = tasks.TaskSpec("classification", num_labels=2, text_column="s1", text_pair_column="s2")
    path = write(tmp_path, "mrpc.tsv", 'label\ts1\ts2\n1\tHe said "hi\tHe said hello\n0\ta\tb\n')
    examples, report = tasks.read_examples(path, spec)
    assert report.kept == 2
    assert (examples[0].text, examples[0].text_pair, examples[0].label) == (
        'He said "hi',
        "He said hello",
        1,
    )


def test_jsonl_regression_non_numeric_target(tmp_path):
    spec = tasks.TaskSpec("regression", text_column="sentence", label_column="score")
    rows = [
        {"sentence": "a", "score": 3.5},
        {"sentence": "b", "score": "4.2"},
        {"sentence": "c", "score": "high"},
        {"sentence": "d", "score": "nan"},
    ]
    path = write(tmp_path, "sts.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    examples, report = tasks.read_examples(path, spec)
    assert [e.label for e in examples] == [3.5, pytest.approx(4.2)]
    assert report.skipped == {"non_numeric_target": 2}
    assert report.first_rows["non_numeric_target"] == [3, 4]


def test_jsonl_multilabel_and_broken_line(tmp_path):
    spec = tasks.TaskSpec("multilabel", label_names=("x", "y", "z"))
    path = write(
        tmp_path,
        "m.jsonl",
        '{"text": "a", "label": ["x", "z"]}\n{broken\n{"text": "b", "label": "y"}\n',
    )
    examples, report = tasks.read_examples(path, spec)
    assert [e.label for e in examples] == [(0, 2), (1,)]
    assert report.skipped == {"invalid_json": 1}
    enc_labels = tasks._labels_array(examples, spec)
    np.testing.assert_array_equal(enc_labels, [[1, 0, 1], [0, 1, 0]])


def test_label_index_out_of_range(tmp_path):
    spec = tasks.TaskSpec("classification", num_labels=3)
    path = write(tmp_path, "d.csv", "text,label\na,0\nb,2\nc,3\nd,-1\n")
    _, report = tasks.read_examples(path, spec)
    assert report.kept == 2 and report.skipped == {"label_out_of_range": 2}


def test_ag_news_layout(tmp_path):
    path = write(
        tmp_path,
        "train.csv",
        '"3","Wall St. Bears Claw Back","Short-sellers are seeing green."\n'
        '"1","","Only a description."\n'
        '"5","Bad class","x"\n'
        '"2","",""\n',
    )
    examples, report = tasks.read_ag_news_csv(path)
    assert [(e.text, e.label) for e in examples] == [
        ("Wall St. Bears Claw Back. Short-sellers are seeing green.", 2),
        ("Only a description.", 0),
    ]
    assert report.skipped == {"label_out_of_range": 1, "empty_text": 1}


def test_all_bad_rows_raise_with_expected_and_found(tmp_path):
    path = write(tmp_path, "bad.csv", "text,label\nx,maybe\ny,perhaps\n")
    with pytest.raises(ValueError) as err:
        tasks.read_examples(path, SENTIMENT)
    msg = str(err.value)
    assert "bad.csv" in msg and "all 2 rows are invalid" in msg
    assert "('negative', 'positive')" in msg and "unknown_label" in msg


def test_empty_file_and_missing_column_raise(tmp_path):
    with pytest.raises(ValueError, match=r"empty.csv: the file is empty; expected a header"):
        tasks.read_examples(write(tmp_path, "empty.csv", ""), SENTIMENT)
    with pytest.raises(ValueError, match=r"no data rows found"):
        tasks.read_examples(write(tmp_path, "empty.jsonl", "\n"), SENTIMENT)
    path = write(tmp_path, "cols.csv", "sentence,label\na,positive\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\].*found columns"):
        tasks.read_examples(path, SENTIMENT)


def test_tfds_key_mapping_with_fake_source():
    records = [
        {"title": b"Title", "description": b"Body text", "label": 3},
        {"title": b"", "description": b"", "label": 1},
    ]
    entry = tasks.TFDS_CATALOG["ag_news_subset"]
    examples, report = tasks.records_to_examples(records, entry, "fake")
    assert [(e.text, e.label) for e in examples] == [("Title. Body text", 3)]
    assert report.skipped == {"empty_text": 1}

    mrpc = [{"sentence1": b"A b.", "sentence2": b"A, b.", "label": 1, "idx": 0}]
    mrpc += [{"sentence1": b"x", "sentence2": b"y", "label": -1, "idx": 1}]  # GLUE test split
    examples, report = tasks.records_to_examples(mrpc, tasks.TFDS_CATALOG["glue/mrpc"], "fake")
    assert (examples[0].text, examples[0].text_pair, examples[0].label) == ("A b.", "A, b.", 1)
    assert report.skipped == {"label_out_of_range": 1}

    conll = [{"tokens": np.array([b"EU", b"rejects"], object), "ner": np.array([3, 0])}]
    examples, _ = tasks.records_to_examples(conll, tasks.TFDS_CATALOG["conll2003"], "fake")
    assert (examples[0].text, examples[0].label) == (["EU", "rejects"], [3, 0])


# --- splitting -----------------------------------------------------------------------------


def _labelled(n_per_class):
    return [
        tasks.Example(f"{c}-{i}", c, row=i) for c, n in enumerate(n_per_class) for i in range(n)
    ]


def test_split_is_deterministic_and_stratified():
    examples = _labelled([80, 20])
    a = tasks.split_examples(examples, (0.8, 0.1, 0.1), seed=3)
    b = tasks.split_examples(examples, (0.8, 0.1, 0.1), seed=3)
    c = tasks.split_examples(examples, (0.8, 0.1, 0.1), seed=4)
    texts = lambda split: [[e.text for e in part] for part in split]
    assert texts(a) == texts(b) and texts(a) != texts(c)
    assert sorted(sum(texts(a), [])) == sorted(e.text for e in examples)  # a partition
    counts = [collections.Counter(e.label for e in part) for part in a]
    assert counts == [{0: 64, 1: 16}, {0: 8, 1: 2}, {0: 8, 1: 2}]


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        tasks.split_examples(_labelled([5]), (0.8, 0.3))


# --- encoding, caching, batching -----------------------------------------------------------


def test_encode_pairs_and_cache(tmp_path, tokenizer, monkeypatch):
    examples = [
        tasks.Example("The cat sat.", 1, "A cat was sitting."),
        tasks.Example("Hello", 0, "World"),
    ]
    enc = tasks.encode(examples, tokenizer, SENTIMENT, max_length=16, cache_dir=tmp_path)
    want = tokenizer("Hello", "World")
    lo, hi = enc.offsets[1], enc.offsets[2]
    assert enc.input_ids[lo:hi].tolist() == want["input_ids"]
    assert enc.token_type_ids[lo:hi].tolist() == want["token_type_ids"]
    assert enc.labels.tolist() == [1, 0] and enc.input_ids.dtype == np.int32

    # A second call must load the .npz and never touch the tokenizer.
    monkeypatch.setattr(tasks, "_tokenize", lambda *a: pytest.fail("cache miss"))
    again = tasks.encode(examples, tokenizer, SENTIMENT, max_length=16, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.input_ids, enc.input_ids)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # A different max_length is a different cache entry.
    assert tasks.cache_key(examples, tokenizer, SENTIMENT, 16) != tasks.cache_key(
        examples, tokenizer, SENTIMENT, 32
    )


def test_truncation_respects_max_length(tokenizer):
    long = tasks.Example(" ".join(["word"] * 100), 0)
    enc = tasks.encode([long], tokenizer, SENTIMENT, max_length=20)
    assert enc.lengths.tolist() == [20] and enc.input_ids[-1] == tokenizer.sep_token_id


def test_token_labels_on_first_subtoken(tokenizer):
    spec = tasks.TaskSpec("token_classification", label_names=("O", "B-PER", "I-PER"))
    words = ["Johanson", "plays", "tokenization"]
    # Check the hand-made sentence really splits words: johan ##son / token ##ization.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(words, is_split_into_words=True).input_ids)
    assert pieces == ["[CLS]", "johan", "##son", "plays", "token", "##ization", "[SEP]"]
    enc = tasks.encode([tasks.Example(words, [1, 0, 2])], tokenizer, spec, max_length=32)
    assert enc.token_level
    assert enc.labels.tolist() == [-100, 1, -100, 0, 2, -100, -100]


def test_collate_pads_to_multiple_of_32(tokenizer):
    examples = [tasks.Example("word " * n, n % 2) for n in range(1, 8)]
    enc = tasks.encode(examples, tokenizer, SENTIMENT, max_length=64)
    b = tasks.collate(enc, np.array([4, 0, 6]))
    assert b["input_ids"].shape == (3, 32) and b["input_ids"].dtype == np.int32
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    # The mask covers exactly the real tokens, and pad positions hold pad_id.
    assert b["attention_mask"].sum(axis=1).tolist() == [enc.lengths[i] for i in (4, 0, 6)]
    assert np.all(b["input_ids"][b["attention_mask"] == 0] == 0)
    assert b["labels"].tolist() == [1, 1, 1]  # n % 2 for n = 5, 1, 7


def test_token_level_batch_pads_labels_with_ignore(tokenizer):
    spec = tasks.TaskSpec("token_classification", num_labels=3)
    enc = tasks.encode([tasks.Example(["a"] * 40, [1] * 40)], tokenizer, spec, max_length=64)
    b = tasks.collate(enc, np.array([0]))
    assert b["labels"].shape == (1, 64) and b["labels"][0, 42:].tolist() == [-100] * 22


# --- extractive QA -------------------------------------------------------------------------

CONTEXT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. "
    "The basin spans nine nations. The largest share of the forest is in Brazil, "
    "followed by Peru with thirteen percent and Colombia with ten percent."
)
ANSWER = "Peru with thirteen percent"


def qa_example():
    return {
        "id": "q0",
        "question": "  Which country follows Brazil?",
        "context": CONTEXT,
        "answers": {"text": [ANSWER], "answer_start": [CONTEXT.index(ANSWER)]},
    }


def _span_text(tokenizer, enc, f):
    start, end = enc.labels[f]
    ids = enc.input_ids[enc.offsets[f] : enc.offsets[f + 1]]
    return tokenizer.decode(ids[start : end + 1])


def test_train_features_single_window(tokenizer):
    enc = qa.prepare_train_features([qa_example()], tokenizer, max_length=384, doc_stride=128)
    assert len(enc) == 1
    assert _span_text(tokenizer, enc, 0) == ANSWER.lower()  # uncased vocabulary


def test_train_features_several_windows(tokenizer):
    enc = qa.prepare_train_features([qa_example()], tokenizer, max_length=32, doc_stride=8)
    assert len(enc) > 2 and enc.lengths.max() <= 32
    found = [f for f in range(len(enc)) if tuple(enc.labels[f]) != (0, 0)]
    assert found, "the answer should fit in at least one window"
    for f in range(len(enc)):
        ids = enc.input_ids[enc.offsets[f] : enc.offsets[f + 1]]
        has_answer = ANSWER.lower() in tokenizer.decode(ids)
        assert (f in found) == has_answer  # CLS (0, 0) exactly where the answer is cut off
        if has_answer:
            assert _span_text(tokenizer, enc, f) == ANSWER.lower()


def test_postprocess_recovers_exact_answer(tokenizer):
    examples = [qa_example()]
    train = qa.prepare_train_features(examples, tokenizer, max_length=32, doc_stride=8)
    feats = qa.prepare_eval_features(examples, tokenizer, max_length=32, doc_stride=8)
    assert feats.example_ids == ["q0"] * len(train)
    width = 40  # logits come padded past each feature's length
    start = np.random.default_rng(0).normal(size=(len(train), width))
    end = np.random.default_rng(1).normal(size=(len(train), width))
    f = next(i for i in range(len(train)) if tuple(train.labels[i]) != (0, 0))
    start[f, train.labels[f][0]] += 20.0
    end[f, train.labels[f][1]] += 20.0
    answers = qa.postprocess_predictions(examples, feats, start, end)
    assert answers == {"q0": ANSWER}  # original casing, straight from the context


def test_postprocess_never_returns_question_tokens(tokenizer):
    examples = [qa_example()]
    feats = qa.prepare_eval_features(examples, tokenizer, max_length=384)
    n = feats.encoded.lengths[0]
    start, end = np.zeros((1, n)), np.zeros((1, n))
    start[0, 1], end[0, 2] = 50.0, 50.0  # peaks on the question: must be ignored
    answer = qa.postprocess_predictions(examples, feats, start, end, max_answer_length=5)["q0"]
    assert answer and answer in CONTEXT


def test_read_squad_json(tmp_path):
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "Amazon",
                "paragraphs": [
                    {
                        "context": CONTEXT,
                        "qas": [
                            {
                                "id": "q0",
                                "question": "Which country follows Brazil?",
                                "answers": [
                                    {"text": ANSWER, "answer_start": CONTEXT.index(ANSWER)},
                                    {"text": "Peru", "answer_start": CONTEXT.index("Peru")},
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = write(tmp_path, "dev.json", json.dumps(doc))
    (ex,) = qa.read_squad_json(path)
    assert ex["id"] == "q0" and ex["title"] == "Amazon" and ex["context"] == CONTEXT
    assert ex["answers"]["text"] == [ANSWER, "Peru"]
    starts = ex["answers"]["answer_start"]
    assert [CONTEXT[s : s + len(t)] for s, t in zip(starts, ex["answers"]["text"])] == [
        ANSWER,
        "Peru",
    ]
    with pytest.raises(ValueError, match="top-level 'data'"):
        qa.read_squad_json(write(tmp_path, "x.json", "[]"))
