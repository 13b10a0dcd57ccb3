"""General (masked-LM) distillation from a config file; DistilBERT's triple loss by default.

    python scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3 \
        [--config.train.steps=200 --config.distill.preset=minilm ...]

Resumes from the newest checkpoint in --workdir. An unknown --config.* key is an error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from flaxdistil import runner  # noqa: E402
from flaxdistil.jobs import general  # noqa: E402

if __name__ == "__main__":
    runner.run(general.run)
