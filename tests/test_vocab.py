"""Vocabulary pruning: the exported model and its new tokenizer, in transformers, give the
original's outputs on corpus text (the kept columns of the MLM logits)."""

import numpy as np
import pytest

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "dog"]
TOKENS += ["##s", "a", ".", "run", "##ning", "bird", "flew", "over", "house", "##e", "red"]
CORPUS = ["The cats sat on the mat.", "A dog running", "the red cat"]


def tiny_mlm(path):
    """A tiny random BertForMaskedLM and its WordPiece tokenizer saved in `path`."""
    torch = pytest.importorskip("torch")
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("".join(t + "\n" for t in TOKENS))
    tok = transformers.BertTokenizer(str(path / "vocab.txt"))
    cfg = transformers.BertConfig(
        vocab_size=len(TOKENS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_vocab_pruned_export_equals_original_on_corpus(tmp_path):
    import torch
    import transformers

    from flaxdistil import load_pretrained, save_pretrained, vocab

    model, tok = tiny_mlm(tmp_path / "src")
    keep = vocab.corpus_tokens(tok, CORPUS)
    used = {"the", "cat", "##s", "sat", "on", "mat", ".", "a", "dog", "run", "##ning", "red"}
    assert [TOKENS[i] for i in keep] == [t for t in TOKENS if t in used or t.startswith("[")]
    pre = load_pretrained(tmp_path / "src", "mlm")
    params, cfg = vocab.prune_vocab(pre.params, pre.config, keep)
    assert cfg.vocab_size == len(keep) == 17
    out = save_pretrained(tmp_path / "out", params, cfg, "mlm")
    vocab.save_tokenizer(tok, keep, out)

    new_tok = transformers.AutoTokenizer.from_pretrained(out)
    new_model = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    vocab.check_tokenizer(tok, new_tok, keep, CORPUS)
    a = tok(CORPUS, padding=True, return_tensors="pt")
    b = new_tok(CORPUS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**a).logits[..., torch.as_tensor(keep)]
        got = new_model(**b).logits
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    assert new_tok.convert_ids_to_tokens(b["input_ids"][0].tolist())[:3] == ["[CLS]", "the", "cat"]


def test_vocab_bad_requests(tmp_path):
    from flaxdistil import vocab

    with pytest.raises(FileNotFoundError, match="does not exist"):
        vocab.read_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="has no text"):
        vocab.read_corpus(tmp_path / "empty.txt")
