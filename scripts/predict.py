"""Predictions from text: one JSON object per input line, on standard output.

    python scripts/predict.py --model DIR --input FILE [--task T] [--batch-size 32]
    echo "a fine film" | python scripts/predict.py --model workdirs/sentiment --input -

DIR is a Hugging Face directory (a task workdir's best_hf, scripts/convert.py to-hf), a task
workdir, or flaxdistil params (NAME.msgpack + NAME.config.json, scripts/convert.py to-flax). The
task comes from DIR's config.json unless --task says it (classification, regression, multilabel,
token_classification, qa, or transformers' names). QA lines are {"question": ..., "context": ...}
or QUESTION<TAB>CONTEXT. Blank lines are skipped; every output object repeats its input.
Outputs and their fields: flaxdistil/pipeline.py.
"""

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxdistil.pipeline import parse_qa, pipeline  # noqa: E402
from flaxdistil.runner import ArgumentParser, UsageError, user_errors  # noqa: E402

CHUNK_BATCHES = 32  # lines are read, sorted by length and predicted this many batches at a time


def numbered_lines(stream):
    """(line number, text) of the non-blank lines."""
    for n, line in enumerate(stream, 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield n, line


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory (or an asset / Hub name)")
    ap.add_argument("--input", required=True, help="a text file, one input per line; - for stdin")
    ap.add_argument("--task", help="when config.json cannot tell (default: from the config)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, help="tokens per input (default: the model's)")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    args = ap.parse_args(argv)
    if args.input != "-" and not Path(args.input).is_file():
        raise UsageError(f"--input {args.input} is not a file: expected a text file or - (stdin)")
    predict = pipeline(
        args.task, args.model, tokenizer=args.tokenizer, batch_size=args.batch_size,
        max_length=args.max_length,
    )  # fmt: skip
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    lines, seen = numbered_lines(stream), 0
    with stream:
        while chunk := list(itertools.islice(lines, args.batch_size * CHUNK_BATCHES)):
            if predict.task == "qa":
                inputs = [parse_qa(text, f"{args.input} line {n}") for n, text in chunk]
            else:
                inputs = [text for _, text in chunk]
            for out in predict(inputs):
                print(json.dumps(out, ensure_ascii=False))
            sys.stdout.flush()
            if not seen:  # after the first chunk, so that a mistake in it is the only line
                print(predict, file=sys.stderr, flush=True)
            seen += len(chunk)
    if not seen:
        where = "standard input" if args.input == "-" else args.input
        raise UsageError(f"no input: {where} has no non-blank lines (expected one input per line)")
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
