"""Compare checkpoints trained with identical hyperparameters on one dataset.

    python scripts/compare_models.py --config configs/bbc_minilm.py:compare \
        --workdir workdirs/compare_bbc \
        [--config.compare.models='L6=all-MiniLM-L6-v2;L3=all-MiniLM-L6-v2@every_other']

Writes <workdir>/comparison.csv (wall time, steps to best, test MCC / accuracy, params per
model), <workdir>/mcc_vs_steps.png and <workdir>/runtime.png; each model's run is in
<workdir>/<name>/ (progress.csv, TensorBoard, best checkpoint, export).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flaxdistil import compare  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (one sub-directory per model)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    compare.compare(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
