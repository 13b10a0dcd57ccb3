"""flaxdistil.compress and scripts/compress.py end to end on a tiny saved BERT classifier (hidden
32, the real MiniLM tokenizer): the output loads in transformers and matches a NumPy /
torch reference; bad requests end in one clear line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_distill_job import ENV, once, save_tiny

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    "The film is a charming, funny and touching story.",
    "A dull, lifeless movie that goes nowhere.",
    "Great acting, weak script.",
    "I laughed, I cried, I loved every minute of it.",
] * 3


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    pytest.importorskip("torch")
    d = once(
        tmp_path_factory,
        "tiny_cls_minilm_tok",
        lambda p: save_tiny(p, "BertForSequenceClassification"),
    )
    corpus = d.parent / "compress_corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    return d, corpus


def _torch_logits(model_dir, texts):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy(), model


def test_layer_sparsity_matches_numpy_reference(src, tmp_path):
    """Per-layer magnitude pruning: each encoder linear weight of each layer loses exactly its
    smallest half (NumPy on the torch weights); nothing else (the pooler included) changes;
    transformers loads it."""
    import torch
    import transformers

    from flaxdistil.compress import compress

    d, _ = src
    report = compress(d, tmp_path / "out", sparsity=0.5, scope="layer")
    assert "total" in str(report) and "50.0%" in str(report)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
    with torch.no_grad():
        for name, w in ref.named_parameters():
            linear = name.startswith("bert.encoder.") and name.endswith(".weight") and w.ndim == 2
            if linear:  # the encoder layers' (not the embeddings, not the pooler)
                a = np.abs(w.numpy()).reshape(-1)
                drop = np.argsort(a, kind="stable")[: round(0.5 * a.size)]
                flat = w.view(-1)
                flat[torch.as_tensor(drop)] = 0
    got, pruned = _torch_logits(tmp_path / "out", CORPUS[:4])
    for (n1, w1), (n2, w2) in zip(ref.named_parameters(), pruned.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(w1.detach().numpy(), w2.detach().numpy(), err_msg=n1)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    with torch.no_grad():
        want = ref(**tok(CORPUS[:4], padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "scripts/compress.py", *map(str, args)],
        cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_cli_end_to_end_vocab_heads_ffn(src, tmp_path):
    """Vocabulary, heads and FFN pruning (in 2 iterations) through the script: the directory and
    its new tokenizer
    load in transformers and give the compact (physically smaller) flaxdistil model's logits."""
    from flaxdistil import Model
    from flaxdistil.compress import load_pruned

    d, corpus = src
    out = tmp_path / "out"
    args = ["--src", d, "--out", out, "--sparsity", "0.3", "--heads-keep", "2", "--ffn-keep"]
    r = _cli(*args, "40", "--iterations", "2", "--data", corpus, "--vocab-from", corpus, "--check")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "re-ranked in 2 iterations" in r.stdout
    assert "vocabulary: kept" in r.stdout and "transformers 5 has no pruned_heads" in r.stdout
    assert "sparsity" in r.stdout and "size on disk" in r.stdout

    params, cfg, head = load_pruned(out / "flaxdistil")
    assert head == "seq_cls"
    assert (cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size) == (2, 8, 40)
    assert cfg.vocab_size < 200  # from 30,522
    assert params["encoder"]["layer"]["attention"]["query"]["kernel"].shape == (4, 32, 16)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == cfg.vocab_size
    theirs, _ = _torch_logits(out, CORPUS[:4])
    batch = tok(CORPUS[:4], padding=True, return_tensors="np")
    ours, _ = Model(cfg, head).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)


def _main(argv):
    """scripts/compress.py's main under the runner's error handling, in this process."""
    import runpy

    from flaxdistil.runner import user_errors

    main = runpy.run_path(str(ROOT / "scripts" / "compress.py"))["main"]
    with user_errors():
        return main([str(a) for a in argv])


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--heads-keep", "9", "--data", "{C}"], "cannot keep 9 heads per layer: the model has 4"),
        (["--ffn-keep", "8"], "give data"),
        (["--src", "{T}/nope"], "no checkpoint directory at"),
        (["--bits", "9"], "bits must be an integer from 2 to 8"),
        (["--asymmetric"], "asymmetric quantisation needs bits"),
        (["--iterations", "2"], "iterations > 1 prunes heads / FFN neurons"),
        (["--iterations", "0", "--heads-keep", "2", "--data", "{C}"], "iterations must be an"),
        (["--bits", "4", "--embedding-bits", "1"], "embedding bits must be an integer from 2"),
        (["--vocab-from", "{T}/none.txt"], "does not exist"),
    ],
)
def test_bad_requests_one_line(src, tmp_path, capsys, extra, expect):
    d, corpus = src
    extra = [str(a).format(C=corpus, T=tmp_path) for a in extra]
    base = [] if "--src" in extra else ["--src", d]
    with pytest.raises(SystemExit) as e:
        _main([*base, "--out", tmp_path / "o", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expect in lines[0]


def test_bits_quantise_the_export_within_half_a_step(src, tmp_path):
    """--bits 8: every encoder linear weight in the Hugging Face export is within half a
    quantisation step (per output channel, max|w| / 127 / 2, by NumPy on the torch weights) of the
    original, embeddings untouched; the compact files read back as the same float params."""
    import transformers

    import flaxdistil
    from flaxdistil.compress import compress

    d, _ = src
    compress(d, tmp_path / "q", bits=8)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(d).state_dict()
    got = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    got = got.state_dict()
    n = 0
    for k, w in ref.items():
        w, g = w.numpy(), got[k].numpy()
        if k.startswith("bert.encoder.") and k.endswith(".weight") and w.ndim == 2:
            step = np.abs(w).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(g - w) <= step / 2 + 1e-7), k
            assert not np.array_equal(g, w), k  # really quantised
            n += 1
        elif "embeddings" in k:
            np.testing.assert_array_equal(g, w, err_msg=k)
    assert n == 4 * 6  # 4 layers x (q, k, v, out, fc1, fc2)
    compact = flaxdistil.load_pretrained(tmp_path / "q" / "flaxdistil", "seq_cls").params
    exported = flaxdistil.load_pretrained(tmp_path / "q", "seq_cls").params
    for a, b in zip(*(jax_leaves(t) for t in (compact, exported)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_asymmetric_bits_and_embedding_bits_through_the_cli(src, tmp_path, capsys):
    """--bits 4 --asymmetric --embedding-bits 6: every linear weight in the export (encoder, pooler,
    classifier) is the
    NumPy reference's asymmetric 4-bit value per output channel (tests/test_quantize.py's
    np_quantize, written from the definitions), every embedding table its asymmetric 6-bit value
    per row; LayerNorms and biases untouched; the printed table says the bits."""
    import transformers

    from tests.test_quantize import np_dequantize, np_quantize

    d, _ = src
    assert _main(["--src", d, "--out", tmp_path / "q", "--bits", "4", "--asymmetric",
                  "--embedding-bits", "6"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(d).state_dict()
    got = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    got = got.state_dict()
    n = {"linear": 0, "embedding": 0}
    for k, w in ref.items():
        w, g = w.numpy().astype(np.float32), got[k].numpy()
        if "embeddings" not in k and k.endswith(".weight") and w.ndim == 2:
            codes, scales, zeros = np_quantize(w, 4, None, symmetric=False)  # torch: [out, in]
            assert len(np.unique(codes[0])) > 2 and np.any(zeros != 0), k  # really asymmetric
            np.testing.assert_allclose(g, np_dequantize(codes, scales, zeros, None), atol=1e-6)
            n["linear"] += 1
        elif k.startswith("bert.embeddings.") and k.endswith("_embeddings.weight"):
            codes, scales, zeros = np_quantize(w, 6, None, symmetric=False)  # per row
            np.testing.assert_allclose(g, np_dequantize(codes, scales, zeros, None), atol=1e-6)
            n["embedding"] += 1
        else:
            np.testing.assert_array_equal(g, w, err_msg=k)
    assert n == {"linear": 4 * 6 + 2, "embedding": 3}
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[1:] if "/" in line}
    assert rows["encoder/embeddings/word_embeddings"] == "6", rows
    assert rows["encoder/embeddings/LayerNorm"] == "32", rows
    layer = {k: v for k, v in rows.items() if "/layer/" in k and "norm" not in k.lower()}
    assert len(layer) == 3 and set(layer.values()) == {"4"}, rows  # attention, fc1, fc2


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_heads_and_bits_together(src, tmp_path):
    """--heads-keep with --bits: the compact file keeps the pruned (physically smaller) heads and
    its full config; transformers loads the padded export; flaxdistil.load_pretrained of the
    compact directory, load_compact + the quantised forward and transformers agree."""
    import flaxdistil
    from flaxdistil import Model, quantize
    from flaxdistil.compress import compress

    d, corpus = src
    out = tmp_path / "hq"
    compress(d, out, heads_keep=2, bits=8, data=corpus)
    qp, cfg, head = quantize.load_compact(out / "flaxdistil")
    assert (head, cfg.num_attention_heads, cfg.all_head_size) == ("seq_cls", 2, 16)
    floats = quantize.dequantize_params(qp)
    assert floats["encoder"]["layer"]["attention"]["query"]["kernel"].shape == (4, 32, 16)

    theirs, _ = _torch_logits(out, CORPUS[:4])
    import transformers

    batch = transformers.AutoTokenizer.from_pretrained(out)(CORPUS[:4], padding=True)
    args = [np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    ours, _ = Model(cfg, head).apply({"params": floats}, *args)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)
    padded = flaxdistil.load_pretrained(out / "flaxdistil", "seq_cls")
    assert padded.config.num_attention_heads == 4  # zero heads in place of the pruned ones
    got, _ = Model(padded.config, head).apply({"params": padded.params}, *args)
    np.testing.assert_allclose(np.asarray(got), theirs, atol=1e-5)
    fwd, p = quantize.inference_fn(out / "flaxdistil", matmul="dequant")
    np.testing.assert_allclose(np.asarray(fwd(p, *args)), theirs, atol=1e-4)
