"""Readers for the real corpora in :mod:`flaxdistil.assets`, as plain text or labelled examples.

Unlabelled readers yield ``(doc_id, text)`` pairs; ``doc_id`` is stable across runs and machines
(built from file names and line ids, never from iteration order), so splits can hash it.

Brown tag simplification (``simplify_brown_tag``), applied to each ``+``-joined part of a tag:
drop a leading ``fw-`` (foreign word), then any trailing ``-hl`` (headline), ``-tl`` (title),
``-nc`` (cited word) and the truncated ``-t``/``-n`` that a few corrupt tags carry, then a
trailing ``*`` (negation: ``md*`` -> ``md``; the tag ``*`` for "not" itself is kept). Contractions
stay compound (``ppss+md``), so ``pps+bez-hl`` -> ``pps+bez`` and ``fw-in+at-tl`` -> ``in+at``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

from flaxdistil import assets

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_BROWN_FILE = re.compile(r"^c[a-r]\d\d$")
_BROWN_SUFFIX = re.compile(r"^(.+?)((?:-(?:hl|tl|nc|t|n))*)$")


# ----------------------------------------------------------------------------- Brown


def brown_files(root: Path | None = None) -> list[Path]:
    """The 500 tagged files ``ca01`` ... ``cr09`` in name order (genre = second letter)."""
    root = Path(root or assets.brown_dir())
    return sorted(p for p in root.iterdir() if _BROWN_FILE.match(p.name))


@functools.cache
def simplify_brown_tag(tag: str) -> str:
    """Base Brown tag (see the module docstring for the rule)."""
    parts = []
    for part in tag.lower().split("+"):
        if part.startswith("fw-") and len(part) > 3:
            part = part[3:]
        part = _BROWN_SUFFIX.match(part).group(1)
        if len(part) > 1 and part.endswith("*"):
            part = part[:-1]
        parts.append(part)
    return "+".join(parts)


def read_brown_sentences(
    path: Path, simplify: bool = True
) -> Iterator[tuple[list[str], list[str]]]:
    """``(tokens, tags)`` per sentence (one tab-indented line each) of a Brown file."""
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        items = line.split()
        if not items:
            continue
        tokens, tags = [], []
        for item in items:
            word, _, tag = item.rpartition("/")
            if not word:  # a stray token without a tag
                word, tag = tag, "nil"
            tokens.append(word)
            tags.append(simplify_brown_tag(tag) if simplify else tag)
        yield tokens, tags


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'", "n't", "'s", "%"}
_NO_SPACE_AFTER = {"(", "[", "``", "$"}


def detokenize(tokens: list[str]) -> str:
    """Readable text from Brown tokens: quotes become ``"``, punctuation sticks to its word."""
    out: list[str] = []
    glue = True
    for tok in tokens:
        text = '"' if tok in ("``", "''") else tok
        if out and not glue and tok not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = tok in _NO_SPACE_AFTER
    return "".join(out)


def brown_documents(
    root: Path | None = None, per_paragraph: bool = False
) -> Iterator[tuple[str, str]]:
    """Brown text without tags: one document per file, or per sentence with ``per_paragraph``."""
    for path in brown_files(root):
        sentences = [detokenize(toks) for toks, _ in read_brown_sentences(path, simplify=False)]
        if per_paragraph:
            for i, sentence in enumerate(sentences):
                yield f"brown/{path.name}/{i}", sentence
        else:
            yield f"brown/{path.name}", " ".join(sentences)


# ----------------------------------------------------------------------------- BBC


def _read_text(path: Path) -> str:
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article (sports/199) is Latin-1 (a pound sign)
        return raw.decode("latin-1")


def bbc_articles(root: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """``(doc_id, text, topic)`` for every article; the title line is kept as the first line."""
    root = Path(root or assets.bbc_dir())
    for topic in BBC_TOPICS:
        for path in sorted((root / topic).glob("*.txt")):
            paragraphs = [p.strip() for p in _read_text(path).split("\n\n")]
            yield f"bbc/{topic}/{path.stem}", "\n".join(p for p in paragraphs if p), topic


def bbc_documents(root: Path | None = None) -> Iterator[tuple[str, str]]:
    for doc_id, text, _ in bbc_articles(root):
        yield doc_id, text


# ----------------------------------------------------------------------------- movie snippets


def movie_snippets(path: Path | None = None, drop_neutral: bool = True) -> Iterator[dict]:
    """``{'id', 'text', 'score', 'label'}`` per snippet; label = score > 0; score == 0 dropped."""
    path = Path(path or assets.movie_snippets_file())
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sid, score, text = line.split("\t", 2)
        score = float(score)
        if drop_neutral and score == 0:
            continue
        yield {"id": int(sid), "text": text.strip(), "score": score, "label": int(score > 0)}


def movie_documents(path: Path | None = None) -> Iterator[tuple[str, str]]:
    for ex in movie_snippets(path, drop_neutral=False):
        yield f"movie/{ex['id']}", ex["text"]


# ----------------------------------------------------------------------------- WordNet

WORDNET_POS = ("noun", "verb", "adj", "adv")


def wordnet_glosses(root: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(synset_id, text)``: ``"lemma, lemma: definition; "example"``, one per synset."""
    root = Path(root or assets.wordnet_dir())
    for pos in WORDNET_POS:
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [
                    re.sub(r"\(.*\)$", "", w).replace("_", " ")
                    for w in fields[4 : 4 + 2 * n_words : 2]
                ]
                yield f"wordnet/{pos}/{fields[0]}", f"{', '.join(lemmas)}: {gloss.strip()}"


def wordnet_documents(root: Path | None = None, group: int = 20) -> Iterator[tuple[str, str]]:
    """WordNet glosses grouped ``group`` consecutive synsets to a document (one per line)."""
    batch: list[tuple[str, str]] = []
    for item in wordnet_glosses(root):
        batch.append(item)
        if len(batch) == group:
            yield batch[0][0], "\n".join(t for _, t in batch)
            batch = []
    if batch:
        yield batch[0][0], "\n".join(t for _, t in batch)


# ----------------------------------------------------------------------------- plain text


def text_file_documents(path: Path, per_line: bool = False) -> Iterator[tuple[str, str]]:
    """One document per blank-line-separated paragraph of a UTF-8 text file (``per_line``: per
    non-empty line), read line by line: a file of any size streams."""
    path = Path(path)
    paragraph: list[str] = []
    index = 0
    with open(path, encoding="utf-8") as f:
        for line in itertools.chain(f, [""]):
            if line.strip():
                paragraph.append(line.strip())
            if paragraph and (per_line or not line.strip()):
                yield f"{path.name}/{index}", " ".join(paragraph)
                index += 1
                paragraph = []


def text_dir_documents(root: Path) -> Iterator[tuple[str, str]]:
    """One document per ``*.txt`` file under ``root`` (name order), its lines joined."""
    for path in sorted(Path(root).rglob("*.txt")):
        text = " ".join(line.strip() for line in _read_text(path).splitlines() if line.strip())
        if text:
            yield str(path.relative_to(root)), text


def heldout_count(n_documents: int) -> int:
    """The held-out part of a plain-text corpus: a fixed 2% tail (at least one document)."""
    return max(1, n_documents // 50)


def hf_documents(name: str, split: str, column: str = "text") -> Iterator[tuple[str, str]]:
    """``column`` of a Hugging Face dataset split (``name`` or ``name:config``), streamed."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "reading a Hugging Face dataset needs the datasets package: pip install datasets"
        ) from None
    path, _, config = name.partition(":")
    ds = datasets.load_dataset(path, config or None, split=split, streaming=True)
    for i, ex in enumerate(ds):
        if column not in ex:
            raise ValueError(f"{name} split {split!r} has columns {sorted(ex)}, not {column!r}")
        if ex[column] and ex[column].strip():
            yield f"{name}/{split}/{i}", ex[column]


def english_documents() -> Iterator[tuple[str, str]]:
    """All unlabelled English text of the assets: Brown, BBC, movie snippets, WordNet."""
    yield from brown_documents()
    yield from bbc_documents()
    yield from movie_documents()
    yield from wordnet_documents()
