"""Score a config's teachers alone and as an ensemble (the KD target their students learn from).

    python scripts/evaluate_teachers.py --config configs/sentiment_minilm.py:multi_kd \
        --workdir workdirs/sent_teachers_ensemble

Each teacher (``teacher.path`` or every entry of ``teachers``) and their ensemble (the weighted
mean of logits, or of probabilities with --config.distill.teacher_average=probs) are scored on
the validation and test splits of the config's data; <workdir>/results.json holds every score.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402
from flaxdistil.jobs import ensemble  # noqa: E402

if __name__ == "__main__":
    runner.run(ensemble.run)
