"""Vocabulary pruning (TextPruner's VocabularyPruner): keep the tokens a corpus uses and the special
tokens, shrink the word embeddings and the tied MLM decoder, and remap the WordPiece tokenizer.

``keep = corpus_tokens(tokenizer, texts)`` (old ids, ascending, specials included);
``params, cfg = prune_vocab(params, cfg, keep)``; ``save_tokenizer(tokenizer, keep, out_dir)``
writes vocab.txt and tokenizer.json with token ``keep[i]`` at id i. WordPiece takes the longest
piece in the vocabulary, and every piece the corpus needed is kept, so corpus text tokenises to
the same tokens under new ids and the pruned model gives the original's outputs on it
(``check_tokenizer`` verifies that on the corpus). Other tokenizers (BPE, SentencePiece) need
their merges or pieces pruned too and are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flaxdistil.models import ModelConfig


def read_corpus(path) -> list[str]:
    """Non-empty lines of a text file, or of every *.txt file under a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no *.txt files under {path} (expected a text corpus)")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"vocabulary corpus {path} does not exist (a .txt file or dir)")
    lines = [ln.strip() for f in files for ln in f.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"vocabulary corpus {path} has no text")
    return lines


def _check_wordpiece(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
        tokenizer, "_tokenizer", None
    )
    if backend is None:
        raise ValueError("vocabulary pruning needs a fast (tokenizers) WordPiece tokenizer")
    state = json.loads(backend.to_str())
    kind = state["model"]["type"]
    if kind != "WordPiece":
        raise ValueError(
            f"vocabulary pruning supports WordPiece tokenizers (BERT, DistilBERT, ELECTRA, "
            f"MiniLM); this one is {kind}"
        )
    return state


def corpus_tokens(tokenizer, texts, batch: int = 1000) -> np.ndarray:
    """Ascending old ids of every token the texts tokenise to, plus every special token."""
    _check_wordpiece(tokenizer)
    seen = set(int(i) for i in tokenizer.all_special_ids)
    for start in range(0, len(texts), batch):
        enc = tokenizer(list(texts[start : start + batch]), add_special_tokens=True)
        for ids in enc["input_ids"]:
            seen.update(ids)
    return np.asarray(sorted(seen), np.int64)


def prune_vocab(params, cfg: ModelConfig, keep) -> tuple[dict, ModelConfig]:
    """Rows `keep` of the word embeddings and of the MLM decoder bias (the decoder weight is the
    tied embedding table); pad_token_id follows its token."""
    keep = np.asarray(keep)
    if keep.ndim != 1 or not len(keep) or keep.max() >= cfg.vocab_size or keep.min() < 0:
        raise ValueError(f"token ids to keep must lie in [0, {cfg.vocab_size}), got {keep}")
    if cfg.pad_token_id not in keep:
        raise ValueError(f"the pad token (id {cfg.pad_token_id}) must be kept")
    enc = dict(params["encoder"])
    emb = dict(enc["embeddings"])
    emb["word_embeddings"] = {"embedding": np.asarray(emb["word_embeddings"]["embedding"])[keep]}
    enc["embeddings"] = emb
    out = {**params, "encoder": enc}
    for head in ("mlm", "xlnet_lm"):
        if head in out:
            out[head] = {**out[head], "bias": np.asarray(out[head]["bias"])[keep]}
    new_pad = int(np.searchsorted(keep, cfg.pad_token_id))
    return out, cfg.replace(vocab_size=len(keep), pad_token_id=new_pad)


def _remap_tokenizer_json(state: dict, keep, old_vocab: dict) -> dict:
    new_id = {int(old): new for new, old in enumerate(keep)}
    id_to_tok = {i: t for t, i in old_vocab.items()}
    state["model"]["vocab"] = {id_to_tok[int(old)]: new for new, old in enumerate(keep)}
    state["added_tokens"] = [
        {**t, "id": new_id[t["id"]]} for t in state.get("added_tokens", []) if t["id"] in new_id
    ]
    post = state.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():  # TemplateProcessing
        spec["ids"] = [new_id[i] for i in spec["ids"]]
    for key in ("sep", "cls"):  # BertProcessing: [token, id]
        if key in post:
            post[key] = [post[key][0], new_id[post[key][1]]]
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    return state


def save_tokenizer(tokenizer, keep, out_dir) -> None:
    """The tokenizer with token keep[i] at id i: tokenizer.json, vocab.txt and the tokenizer's own
    config files (special tokens by name, so they carry over)."""
    state = _check_wordpiece(tokenizer)
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)  # config files; vocab files rewritten below
    old_vocab = state["model"]["vocab"]
    state = _remap_tokenizer_json(state, keep, old_vocab)
    (out_dir / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
    tokens = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get)
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens))


def check_tokenizer(old, new, keep, texts) -> None:
    """The new tokenizer gives the old tokens, renumbered, on the corpus (else ValueError)."""
    lookup = np.full(max(int(np.max(keep)) + 1, 1), -1, np.int64)
    lookup[np.asarray(keep)] = np.arange(len(keep))
    for text in texts:
        a = lookup[np.asarray(old(text)["input_ids"])]
        b = np.asarray(new(text)["input_ids"])
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ValueError(f"the pruned tokenizer tokenises {text[:60]!r} differently")
