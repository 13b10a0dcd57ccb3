"""The results table of arms run with scripts/seeds.py: mean +- std and paired differences.

    python scripts/arms_table.py --metrics accuracy,mcc NAME=WORKDIR [NAME=WORKDIR ...]

The first arm is the baseline; each other arm's difference in the first metric comes with a 95%
paired bootstrap interval over the shared seeds (* where it excludes 0).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxdistil import runner, seeds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--metrics", default="accuracy,mcc")
    ap.add_argument("arms", nargs="+", help="NAME=WORKDIR of a scripts/seeds.py run")
    args = ap.parse_args()
    arms = {}
    for item in args.arms:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "seeds.json").exists():
            raise runner.UsageError(f"expected NAME=WORKDIR with WORKDIR/seeds.json, got {item!r}")
        arms[name] = Path(path)
    print(seeds.arms_table(arms, args.metrics.split(",")))


if __name__ == "__main__":
    with runner.user_errors():
        main()
