"""Train a WordPiece tokenizer for a student with its own, smaller vocabulary.

    python scripts/train_tokenizer.py --out workdirs/tokenizer_wp8k [--vocab_size 8192] \
        [--corpus english | FILE.txt | DIR] [--min_frequency 2]

'english' is the offline English text of flaxdistil.assets without the movie-review snippets
(Brown, BBC News, WordNet glosses: ~2M words), so the sentiment test sentences are not seen;
a file or directory is read with flaxdistil.vocab.read_corpus (non-empty lines). Normalisation
and pre-tokenisation are MiniLM's (BERT uncased). The output directory loads with
transformers' AutoTokenizer; use it as --config.student.tokenizer (configs/sentiment_minilm.py
small_vocab).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxdistil import runner, vocab  # noqa: E402


def english_texts() -> list[str]:
    from flaxdistil.data import corpora

    docs = [*corpora.brown_documents(), *corpora.bbc_documents(), *corpora.wordnet_documents()]
    return [text for _, text in docs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="directory to write the tokenizer to")
    ap.add_argument("--vocab_size", type=int, default=8192)
    ap.add_argument("--corpus", default="english", help="'english', a .txt file or a directory")
    ap.add_argument("--min_frequency", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise runner.UsageError(f"--out {out}: expected a new or empty directory, found files")
    texts = english_texts() if args.corpus == "english" else vocab.read_corpus(args.corpus)
    words = sum(len(t.split()) for t in texts)
    print(f"corpus {args.corpus}: {len(texts):,} documents, {words:,} words", flush=True)
    tok = vocab.train_wordpiece(texts, args.vocab_size, out, args.min_frequency)
    sample = texts[0][:80]
    print(f"{len(tok):,} tokens saved to {out}; {sample!r} -> {tok.tokenize(sample)}")


if __name__ == "__main__":
    with runner.user_errors():
        main()
