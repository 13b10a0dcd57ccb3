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


# ---------------------------------------------------------------- a student's own vocabulary

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4 of a trained one


def train_wordpiece(texts, vocab_size: int, out_dir, min_frequency: int = 2):
    """A WordPiece tokenizer trained on ``texts`` (tokenizers library) with MiniLM's / BERT
    uncased's normalisation (clean text, lower case, accents stripped, CJK characters split) and
    pre-tokenisation, saved to ``out_dir`` so AutoTokenizer loads it; returns the loaded one."""
    from tokenizers import BertWordPieceTokenizer

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    tok = BertWordPieceTokenizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=1000,  # BERT's: rare characters become [UNK] rather than tokens
        wordpieces_prefix="##",
    )
    return save_wordpiece(tok, out_dir)


def save_wordpiece(tok, out_dir):
    """A tokenizers BertWordPieceTokenizer saved as a transformers BERT tokenizer (tokenizer.json
    and tokenizer_config.json); returns it loaded back with AutoTokenizer."""
    from transformers import BertTokenizerFast

    from flaxdistil.data import text_pipeline

    fast = BertTokenizerFast(
        tokenizer_object=tok._tokenizer,  # BertWordPieceTokenizer wraps the Tokenizer
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(str(out_dir))
    return text_pipeline.load_tokenizer(out_dir)


def token_sources(new_tokenizer, old_tokenizer) -> tuple[list[list[int]], dict]:
    """For each new token id, the old ids whose embeddings it starts from: the same token when
    the old vocabulary has it (specials matched by role), else the old tokenisation of its text
    (a '##' continuation piece as a continuation: its first old piece '##'-prefixed where the
    old vocabulary has that), else the old [UNK]. Also the counts of each case."""
    old = old_tokenizer.get_vocab()
    roles = {
        getattr(new_tokenizer, r): getattr(old_tokenizer, r)
        for r in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
        if getattr(new_tokenizer, r, None) and getattr(old_tokenizer, r, None)
    }
    by_id = sorted(new_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("the new tokenizer's ids are not 0..n-1")
    out, counts = [], {"same": 0, "mean": 0, "unk": 0}
    for token, _ in by_id:
        token = roles.get(token, token)
        if token in old:
            out.append([old[token]])
            counts["same"] += 1
            continue
        cont = token.startswith("##")
        ids = old_tokenizer(token[2:] if cont else token, add_special_tokens=False)["input_ids"]
        if cont and ids:
            first = "##" + old_tokenizer.convert_ids_to_tokens(ids[0])
            ids[0] = old.get(first, ids[0])
        if not ids:
            ids = [old_tokenizer.unk_token_id]
        out.append(list(ids))
        counts["mean" if ids != [old_tokenizer.unk_token_id] else "unk"] += 1
    return out, counts


def own_vocabulary(params, cfg: ModelConfig, old_tokenizer, new_tokenizer):
    """(params, config, report) of the model with ``new_tokenizer``'s vocabulary: each new word
    embedding (and MLM decoder bias) is the mean of the old rows of ``token_sources``, so a model
    keeps its layers and starts from what its embeddings knew of each new token."""
    sources, counts = token_sources(new_tokenizer, old_tokenizer)
    mean_rows = lambda table: np.stack([np.asarray(table)[ids].mean(0) for ids in sources])
    enc = dict(params["encoder"])
    if "embeddings" not in enc or "word_embeddings" not in enc["embeddings"]:
        raise ValueError(f"a {cfg.model_type} model has no BERT-style word embedding table")
    emb = dict(enc["embeddings"])
    table = emb["word_embeddings"]["embedding"]
    emb["word_embeddings"] = {"embedding": mean_rows(table).astype(np.asarray(table).dtype)}
    enc["embeddings"] = emb
    out = {**params, "encoder": enc}
    for head in ("mlm", "xlnet_lm"):
        if head in out:
            out[head] = {**out[head], "bias": mean_rows(out[head]["bias"])}
    report = (
        f"{len(sources):,} tokens: {counts['same']:,} in the old vocabulary, {counts['mean']:,} "
        f"means of their old pieces, {counts['unk']:,} from [UNK]"
    )
    new_cfg = cfg.replace(vocab_size=len(sources), pad_token_id=new_tokenizer.pad_token_id)
    return out, new_cfg, report
