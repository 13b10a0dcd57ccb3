"""Compare checkpoints trained with identical hyperparameters on one dataset.

    python scripts/compare_models.py --config configs/bbc_minilm.py:compare \
        --workdir workdirs/compare_bbc \
        [--config.compare.models='L6=all-MiniLM-L6-v2;L3=all-MiniLM-L6-v2@every_other']

Writes <workdir>/comparison.csv (wall time, steps to best, test MCC / accuracy, params per
model), <workdir>/mcc_vs_steps.png and <workdir>/runtime.png; each model's run is in
<workdir>/<name>/ (eval.csv, train.csv, TensorBoard, best checkpoint, export).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import compare, runner  # noqa: E402

if __name__ == "__main__":
    runner.run(compare.compare)
