"""Task-specific distillation from a fine-tuned teacher, from a config file.

    python scripts/distill_task.py --config configs/sentiment_minilm.py:distill \
        --workdir workdirs/sentiment_l3 --config.teacher.path=workdirs/sentiment/best_hf \
        [--config.student.layers=0,2,4 --config.distill.temperature=4 \
         --config.distill.preset=tinybert ...]

The same job as scripts/finetune.py, which demands a teacher here: the loss is
hard_label_weight x task loss + kd_loss_weight x KD on the logits + the intermediate matches.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner, teachers  # noqa: E402
from flaxdistil.jobs import task  # noqa: E402


def distil(cfg, workdir):
    if not teachers.entries(cfg):
        raise runner.UsageError(
            "distillation needs --config.teacher.path=<a fine-tuned HF directory> "
            "(or --config.teachers=[{'path': ...}, ...])"
        )
    return task.run(cfg, workdir)


if __name__ == "__main__":
    runner.run(distil)
