"""flaxdistil.data: corpora, TFDS builders (real corpora), tokenisation, batching, masking."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import assets
from flaxdistil.data import batching, corpora, masking, text_pipeline, tfds_builders

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tokenizer():
    return text_pipeline.load_tokenizer(assets.minilm_dir())


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("tfds")
    for name in tfds_builders.BUILDERS:
        tfds_builders.builder(name, str(root))
    return str(root)


def _split_sizes(name, data_dir):
    info = tfds_builders.builder(name, data_dir).info
    return {split: info.splits[split].num_examples for split in info.splits}


# ----------------------------------------------------------------------------- corpora


def test_simplify_brown_tag():
    cases = {
        "nn-tl": "nn",
        "np-tl-hl": "np",
        "md*": "md",
        "*": "*",
        "fw-nn": "nn",
        "fw-in+at-tl": "in+at",
        "pps+bez-hl": "pps+bez",
        "---hl": "--",
        ".-hl": ".",
        "ppss+ber-n": "ppss+ber",
        "dod*-tl": "dod",
    }
    assert {tag: corpora.simplify_brown_tag(tag) for tag in cases} == cases


def test_brown_reader_detokenizes():
    path = corpora.brown_files()[0]
    tokens, tags = next(corpora.read_brown_sentences(path))
    assert tokens[:3] == ["The", "Fulton", "County"] and tags[:3] == ["at", "np", "nn"]
    doc_id, text = next(corpora.brown_documents())
    assert doc_id == "brown/ca01"
    assert text.startswith("The Fulton County Grand Jury said Friday an investigation")
    assert '"no evidence" that any irregularities took place. The jury' in text
    assert "/" not in text.split("2")[0]  # no word/TAG left


def test_labelled_readers_counts():
    movies = list(corpora.movie_snippets())
    assert len(movies) == 10_568 and sum(m["label"] for m in movies) == 5_242
    assert all((m["score"] > 0) == m["label"] for m in movies)
    bbc = list(corpora.bbc_articles())
    assert len(bbc) == 2_225 and {t for _, _, t in bbc} == set(corpora.BBC_TOPICS)
    assert "£" in dict((i, t) for i, t, _ in bbc)["bbc/sports/199"]  # the Latin-1 article


def test_wordnet_and_text_file(tmp_path):
    gloss_id, gloss = next(corpora.wordnet_glosses())
    assert gloss_id.startswith("wordnet/noun/") and gloss.startswith("entity: ")
    p = tmp_path / "t.txt"
    p.write_text("one line\ncontinues\n\n\nsecond para\n")
    assert list(corpora.text_file_documents(p)) == [
        ("t.txt/0", "one line continues"),
        ("t.txt/1", "second para"),
    ]


# ----------------------------------------------------------------------------- TFDS builders


def test_builders_split_sizes(tfds_dir):
    movie = _split_sizes("movie_snippets", tfds_dir)
    assert sum(movie.values()) == 10_605 - 37
    assert movie == {"train": 8_454, "validation": 1_057, "test": 1_057}
    bbc = _split_sizes("bbc_news", tfds_dir)
    assert sum(bbc.values()) == 2_225
    brown = _split_sizes("brown_pos", tfds_dir)
    n_sentences = sum(1 for p in corpora.brown_files() for _ in corpora.read_brown_sentences(p))
    assert sum(brown.values()) == n_sentences
    english = _split_sizes("english_corpus", tfds_dir)
    n_docs = sum(1 for _ in corpora.english_documents())
    assert sum(english.values()) == n_docs
    assert 0.01 < english["heldout"] / n_docs < 0.03


def test_load_returns_python_values(tfds_dir):
    src = tfds_builders.load("movie_snippets", "validation", tfds_dir)
    ex = src[0]
    assert (
        isinstance(ex["text"], str) and ex["label"] in (0, 1) and (ex["score"] > 0) == ex["label"]
    )
    brown = tfds_builders.load("brown_pos", "test", tfds_dir)[3]
    assert len(brown["tokens"]) == len(brown["tags"]) and brown["tags"].max() < len(
        tfds_builders.BROWN_TAGS
    )
    bbc = tfds_builders.load("bbc_news", "train", tfds_dir)
    labels = {bbc[i]["label"] for i in range(0, len(bbc), 7)}
    assert labels == set(range(5))
    with pytest.raises(ValueError, match="splits"):
        tfds_builders.load("bbc_news", "heldout", tfds_dir)


def test_heldout_split_stable(tfds_dir, tmp_path):
    first = tfds_builders.load("english_corpus", "heldout", tfds_dir)
    second = tfds_builders.load("english_corpus", "heldout", str(tmp_path))  # a fresh build
    ids = sorted(ex["id"] for ex in first)
    assert ids == sorted(ex["id"] for ex in second)
    assert all(tfds_builders.is_heldout(i) for i in ids)
    assert {i.split("/")[0] for i in ids} == {"brown", "bbc", "movie", "wordnet"}


# ----------------------------------------------------------------------------- tokenisation


def test_chunking_and_filtering(tokenizer):
    cls, sep, unk = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
    doc = np.arange(1000, 2000)  # a 1000-token document
    chunks = text_pipeline.chunk_and_filter([doc], 128, cls, sep, unk)
    assert len(chunks) == math.ceil(1000 / 126)
    assert all(len(c) <= 128 and c[0] == cls and c[-1] == sep for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c[1:-1] for c in chunks]), doc)
    mostly_unk = np.array([unk] * 30 + [2000] * 20)
    short = np.arange(1000, 1009)  # 9 + 2 specials < 12
    assert text_pipeline.chunk_and_filter([mostly_unk, short], 128, cls, sep, unk) == []


def test_tokenize_corpus_caches(tokenizer, tmp_path):
    texts = [t for _, t in itertools.islice(corpora.bbc_documents(), 20)]
    first = text_pipeline.tokenize_corpus(texts, assets.minilm_dir(), 64, "bbc20", tmp_path)
    assert len(list(tmp_path.glob("bbc20-*.npz"))) == 1
    again = text_pipeline.tokenize_corpus(texts, assets.minilm_dir(), 64, "bbc20", tmp_path)
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(s[0] == tokenizer.cls_token_id and len(s) <= 64 for s in first)
    assert tokenizer.decode(first[0][1:6]).startswith("ad sales boost time warner")


def test_token_counts_and_weights(tokenizer):
    counts = text_pipeline.token_counts([np.array([5, 5, 7]), np.array([5, 101])], 200)
    assert counts.shape == (200,) and counts[5] == 3 and counts[7] == 1 and counts.sum() == 5
    specials = text_pipeline.special_ids(tokenizer)
    weights = text_pipeline.smoothing_weights(counts, specials)
    np.testing.assert_allclose(weights[5], 3**-0.7, rtol=1e-6)
    assert weights[9] == 1.0 and weights[101] == 0.0 and weights[0] == 0.0


# ----------------------------------------------------------------------------- batching


def _sequences(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1000, 2000, size=rng.integers(12, 129)).astype(np.int32) for _ in range(n)]


def _rows(seqs):
    from flaxdistil.data.tasks import from_rows

    return from_rows(seqs, None, np.zeros(len(seqs), np.int32))


def test_eval_batches_cover_each_sequence_once_and_training_drops_the_rest():
    seqs = _sequences(1000)
    seen = []
    for idx, b in batching.eval_batches(_rows(seqs), 32, pad_multiple=32):
        assert b["input_ids"].shape[0] == 32 and b["input_ids"].shape[1] % 32 == 0
        for r, (row, mask) in enumerate(zip(b["input_ids"], b["attention_mask"])):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()
            assert (n > 0) == (r < len(idx))  # only the filled rows of the last batch are empty
            if n:
                seen.append(tuple(row[:n]))
    assert sorted(seen) == sorted(tuple(s) for s in seqs)
    train = batching.Batches(_rows(seqs), 32, seed=1)
    assert len(train) == 1000 // 32
    assert len(np.unique(train.epoch_plan(0))) == 31 * 32


def test_batching_pads_to_multiples_and_groups_by_length():
    it = batching.Batches(_rows(_sequences(640)), 16, pad_multiple=64)
    widths, spreads = set(), []
    for batch in itertools.islice(it, len(it)):
        widths.add(batch["input_ids"].shape[1])
        lens = batch["attention_mask"].sum(1)
        spreads.append(lens.max() - lens.min())
    assert widths <= {64, 128}
    assert np.mean(spreads) < 10  # sorted within groups: neighbours have similar lengths
    assert it.state_dict() == {"epoch": 0, "index": len(it), "seed": 0} and it.epoch_done
    next(it)
    assert it.state_dict()["epoch"] == 1


def test_batching_resume_equivalence():
    rows = _rows(_sequences(500))
    a = batching.Batches(rows, 16, seed=3)
    for _ in range(45):  # past the end of epoch 0 (31 batches)
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(40)]
    b = batching.Batches(rows, 16, seed=0)
    b.load_state_dict(state)
    for want, got in zip(expected, (next(b) for _ in range(40))):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    assert b.state_dict() == a.state_dict()
    first_epochs = [list(map(tuple, a.epoch_plan(e))) for e in (0, 1)]
    assert first_epochs[0] != first_epochs[1]  # reshuffled every epoch


# ----------------------------------------------------------------------------- masking

SPECIALS = jnp.array([0, 100, 101, 102, 103])
VOCAB = 30522


def _random_batch(b=256, t=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(999, VOCAB, size=(b, t))
    lengths = rng.integers(16, t + 1, size=b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(b), lengths - 1] = 102
    ids[mask == 0] = 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


_MASK_JIT = jax.jit(masking.mask_tokens, static_argnames=("mask_token_id", "vocab_size"))


def _mask(rng, ids, mask, token_weights=None):
    return _MASK_JIT(
        rng,
        ids,
        mask,
        special_ids=SPECIALS,
        mask_token_id=103,
        vocab_size=VOCAB,
        token_weights=token_weights,
    )


def test_masking_statistics():
    ids, mask = _random_batch()
    masked, labels = _mask(jax.random.key(0), ids, mask)
    real = (mask == 1) & ~jnp.isin(ids, SPECIALS)
    selected = labels != -100
    assert not bool(jnp.any(selected & ~real))  # never special or padding
    np.testing.assert_array_equal(labels[selected], ids[selected])
    assert abs(float(selected.sum() / real.sum()) - 0.15) < 0.01
    n = int(selected.sum())
    to_mask = float(jnp.sum(selected & (masked == 103))) / n
    kept = float(jnp.sum(selected & (masked == ids))) / n
    randomised = float(jnp.sum(selected & (masked != 103) & (masked != ids))) / n
    assert abs(to_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(randomised - 0.1) < 0.02
    assert not bool(jnp.any(jnp.isin(masked[selected & (masked != 103)], SPECIALS)))
    np.testing.assert_array_equal(masked[~selected], ids[~selected])
    again = _mask(jax.random.key(0), ids, mask)
    np.testing.assert_array_equal(again[0], masked)
    other = _mask(jax.random.key(1), ids, mask)
    assert not np.array_equal(other[1], labels)


def test_random_replacement_skips_specials():
    ids = masking._random_non_special(jax.random.key(0), (200_000,), SPECIALS, 105)
    values = set(np.unique(np.asarray(ids)).tolist())
    assert values == set(range(105)) - {0, 100, 101, 102, 103}


def test_smoothed_masking_exact_k_and_rare_tokens():
    # Half the real tokens are a frequent id, half a rare one; the weights ratio is 8.
    rng = np.random.default_rng(0)
    ids, mask = _random_batch(64, 128)
    real = np.asarray((mask == 1) & ~jnp.isin(ids, SPECIALS))
    common, rare = 2000, 3000
    ids = np.where(real, np.where(rng.random(ids.shape) < 0.5, common, rare), np.asarray(ids))
    counts = np.ones(VOCAB)
    counts[common], counts[rare] = 8 ** (1 / 0.7) * 100, 100
    weights = text_pipeline.smoothing_weights(counts, np.asarray(SPECIALS))
    rates = {common: [], rare: []}
    for seed in range(10):
        _, labels = _mask(
            jax.random.key(seed), jnp.asarray(ids), mask, token_weights=jnp.asarray(weights)
        )
        selected = np.asarray(labels) != -100
        assert selected.sum() == round(0.15 * real.sum()) and not (selected & ~real).any()
        for tok in rates:
            rates[tok].append(selected[ids == tok].mean())
    # Reference: Gumbel top-k = sampling without replacement; for a large population the
    # inclusion probability of a token of weight w is 1 - exp(-w t), with t fixed by the total k.
    n_c, n_r = (ids == common).sum(), (ids == rare).sum()
    w_c, w_r = weights[common], weights[rare]
    lo, hi = 0.0, 1e6
    for _ in range(200):
        t = (lo + hi) / 2
        expected_k = n_c * (1 - np.exp(-w_c * t)) + n_r * (1 - np.exp(-w_r * t))
        lo, hi = (t, hi) if expected_k < round(0.15 * real.sum()) else (lo, t)
    assert abs(np.mean(rates[common]) - (1 - np.exp(-w_c * t))) < 0.01
    assert abs(np.mean(rates[rare]) - (1 - np.exp(-w_r * t))) < 0.01
    assert np.mean(rates[rare]) > 3 * np.mean(rates[common])
