"""Fine-tune a checkpoint on a task, from a config file.

    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sentiment \
        [--config.train.epochs=2 --config.data.dataset=bbc_news ...]

Evaluates every train.eval_every steps and at each epoch end, stops early on train.metric,
keeps the best checkpoint and exports it to <workdir>/best_hf. Resumes from <workdir> if a run
was interrupted. An unknown --config.* key is an error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flaxdistil import finetune, sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (checkpoints, logs, export)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    sharding.maybe_initialize_distributed()
    finetune.run_finetune(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
