"""Side-by-side held-out metrics of distillation runs (their results.json files).

python scripts/summarize.py workdirs/minilm_l3 workdirs/minilm_l3_mlm_only
"""

import json
import sys
from pathlib import Path


def main(workdirs: list[str]) -> None:
    rows = []
    for w in workdirs:
        f = Path(w) / "results.json"
        if not f.exists():
            sys.exit(f"no results.json in {w}: did the run finish?")
        res = json.loads(f.read_text())
        if "teacher" in res and not any(r[0] == "teacher" for r in rows):
            rows.append(("teacher", res["teacher"]))
        rows.append((Path(w).name, res["student"]))
    print("| model | held-out MLM loss | accuracy | perplexity |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['mlm_loss']:.4f} | {r['mlm_accuracy']:.4f} | {r['perplexity']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
