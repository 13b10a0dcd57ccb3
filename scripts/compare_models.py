"""Compare checkpoints trained with identical hyperparameters on one dataset.

    python scripts/compare_models.py --config configs/bbc_minilm.py:compare \
        --workdir workdirs/compare_bbc \
        [--config.compare.models='L6=all-MiniLM-L6-v2;L3=all-MiniLM-L6-v2@every_other;T4=random:T4-tiny']
        [--config.compare.seeds=0,1,2]

Writes <workdir>/comparison.csv (a row per model and seed: wall time, steps to best, test MCC /
accuracy, params), summary.csv (mean and std over seeds), comparison.md (paired differences
from the first model, with several seeds), <workdir>/mcc_vs_steps.png (mean +- std over seeds)
and <workdir>/runtime.png; each model's runs are in <workdir>/<name>/[seed_<s>/] (eval.csv,
train.csv, TensorBoard, best checkpoint).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import compare, runner  # noqa: E402

if __name__ == "__main__":
    runner.run(compare.compare)
