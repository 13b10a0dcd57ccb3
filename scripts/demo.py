"""The README's main job on real weights: MiniLM-L6 -> 3-layer student -> HF export -> check.

python scripts/demo.py [--workdir workdirs/demo]
"""

import argparse
from pathlib import Path

import numpy as np

import flaxdistil
from flaxdistil import assets, runner
from flaxdistil.parity import compare_with_transformers

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Distillation trains a small student to imitate a large teacher.",
    "A gripping, funny and thoroughly original movie.",
]


def main() -> None:
    ap = runner.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="workdirs/demo")
    args = ap.parse_args()
    runner.check_workdir(args.workdir)

    teacher = flaxdistil.load_pretrained(assets.minilm_dir(), head=None)
    print(teacher.report)
    print(flaxdistil.format_param_table(teacher.params, 2, "teacher: all-MiniLM-L6-v2"), "\n")

    params, cfg, ids = flaxdistil.derive_student(
        teacher.params, teacher.config, layers="every_other"
    )
    print(flaxdistil.format_param_table(params, 2, f"student: teacher layers {ids}"), "\n")

    out = flaxdistil.save_pretrained(
        Path(args.workdir) / "student_hf", params, cfg, head=None, tokenizer_from=teacher.path
    )
    tok = teacher.tokenizer()
    batch = dict(tok(SENTENCES, padding=True, return_tensors="np"))
    diffs = compare_with_transformers(out, params, cfg, None, batch)
    print(
        f"exported to {out}; transformers AutoModel vs flaxdistil, max |diff| of the last "
        f"hidden state: {diffs['hidden']:.2e}"
    )
    n_t, n_s = flaxdistil.count_params(teacher.params), flaxdistil.count_params(params)
    print(f"student keeps {n_s / n_t:.0%} of the teacher's parameters ({n_s:,} / {n_t:,})")
    if not np.isfinite(diffs["hidden"]) or diffs["hidden"] > 1e-4:
        raise SystemExit(f"export check failed: {diffs}")


if __name__ == "__main__":
    with runner.user_errors():
        main()
