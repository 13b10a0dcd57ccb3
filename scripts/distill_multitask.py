"""Multi-task distillation (TextBrewer's MultiTaskDistiller) from a config with ``tasks``.

    python scripts/distill_multitask.py --config configs/multitask_minilm.py \
        --workdir workdirs/multitask_l3 \
        --config.tasks.sentiment.teacher=workdirs/sent_teacher/best_hf \
        --config.tasks.topics.teacher=workdirs/bbc_teacher/best_hf \
        --config.tasks.pos.teacher=workdirs/pos_teacher/best_hf [--config.multitask.tau=0.5]

One student encoder with one head per task; each step trains the encoder and one task's head
(task d drawn with probability |d|^tau / sum |d'|^tau), KD from that task's teacher plus its task
loss. Writes train.csv / eval.csv (a column per task and metric, and their mean), results.json
(test scores per task) and best_hf/<task>/ per head, each checked in transformers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402
from flaxdistil.jobs import multitask  # noqa: E402

if __name__ == "__main__":
    runner.run(multitask.run)
