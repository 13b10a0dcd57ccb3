"""Fine-tune a checkpoint on a task (or, with --config.teacher.path, distil), from a config file.

    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sentiment \
        [--config.train.epochs=2 --config.data.dataset=bbc_news ...]

Evaluates every eval.every steps and at each epoch end, stops early on eval.metric, keeps the
best checkpoint and exports it to <workdir>/best_hf. Resumes from <workdir> if a run was
interrupted. An unknown --config.* key is an error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402
from flaxdistil.jobs import task  # noqa: E402

if __name__ == "__main__":
    runner.run(task.run)
