"""Compress a Hugging Face or flaxdistil checkpoint (flaxdistil/compress.py does the work).

  python scripts/compress.py --src DIR --out DIR [--sparsity S] [--scope global|layer]
      [--heads-keep H] [--ffn-keep F] [--iterations N] [--data TEXTS] [--vocab-from CORPUS]
      [--bits N] [--group-size G] [--asymmetric] [--embedding-bits E] [--head seq_cls] [--check]

OUT loads in transformers (pruned weights zero, heads / FFN / vocabulary physically smaller;
pruned heads as zero weights, which transformers 5 cannot drop) and OUT/flaxdistil holds
flaxdistil's compact files. --heads-keep / --ffn-keep keep that many per layer, ranked by
TextPruner's first-order Taylor importance on the texts of --data (label-free: the model's own
predictions as labels), in --iterations steps re-ranked after each as TextPruner's iterative
pruning does; --vocab-from keeps the tokens a corpus (a .txt file, one text a line, or a
directory of them) uses. --sparsity zeroes that share of the encoder's linear weights by
magnitude (one shot; prune.* in the task job prunes iteratively with fine-tuning). Prints
parameters, size on disk, sparsity and bits per module.
"""

import argparse
import sys

from flaxdistil.compress import compress
from flaxdistil.models import HEADS
from flaxdistil.runner import ArgumentParser, user_errors


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--src", required=True, help="HF directory, Hub id, or a compress output")
    ap.add_argument("--out", required=True, help="output directory (replaced)")
    ap.add_argument(
        "--head", default="auto", choices=["auto", *[str(h) for h in HEADS]],
        help="auto: from config.json's architectures; None: bare encoder",
    )  # fmt: skip
    ap.add_argument("--sparsity", type=float, default=0.0, help="share of weights zeroed, [0, 1)")
    ap.add_argument("--scope", default="global", choices=["global", "layer"])
    ap.add_argument("--heads-keep", type=int, help="attention heads kept per layer")
    ap.add_argument("--ffn-keep", type=int, help="FFN neurons kept per layer")
    ap.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="heads / FFN: prune in this many steps, re-ranking after each",
    )
    ap.add_argument("--data", help="texts ranking heads / FFN neurons (.txt or a directory)")
    ap.add_argument("--max-examples", type=int, default=256, help="texts of --data used")
    ap.add_argument("--vocab-from", help="keep only the tokens this corpus uses (.txt or dir)")
    ap.add_argument("--bits", type=int, help="weight quantisation, 2-8 bits")
    ap.add_argument("--group-size", type=int, help="quantisation group size (default per channel)")
    ap.add_argument("--asymmetric", action="store_true", help="zero points (per channel / group)")
    ap.add_argument("--embedding-bits", type=int, help="quantise the embedding tables too, 2-8")
    ap.add_argument("--check", action="store_true", help="compare the export with transformers")
    a = ap.parse_args(argv)
    head = None if a.head == "None" else a.head
    report = compress(
        a.src, a.out, head=head, check=a.check, bits=a.bits, group_size=a.group_size,
        asymmetric=a.asymmetric, embedding_bits=a.embedding_bits,
        sparsity=a.sparsity, scope=a.scope, heads_keep=a.heads_keep, ffn_keep=a.ffn_keep,
        iterations=a.iterations,
        vocab_from=a.vocab_from, data=a.data, max_examples=a.max_examples,
    )  # fmt: skip
    print(report)
    print(f"wrote {report.out}")
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
