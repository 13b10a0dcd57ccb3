"""Task-specific distillation from a fine-tuned teacher, from a config file.

    python scripts/distill_task.py --config configs/sentiment_minilm.py:distill \
        --workdir workdirs/sentiment_l3 --config.teacher.path=workdirs/sentiment/best_hf \
        [--config.model.layers=0,2,4 --config.distill.temperature=4 ...]

The student starts from the teacher's weights sliced to model.layers (model.path='teacher') or
from any checkpoint (model.path=DIR). Loss: alpha_hard x task loss + alpha_kd x KL(T) on the
logits (MSE for regression) + alpha_hidden x cosine/MSE on hidden states.
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
    cfg = _CONFIG.value
    if not cfg.teacher.path:
        raise app.UsageError("distillation needs --config.teacher.path=<fine-tuned HF directory>")
    sharding.maybe_initialize_distributed()
    finetune.run_finetune(cfg, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
