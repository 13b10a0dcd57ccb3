"""General distillation (DistilBERT's triple loss) from a config file.

    python scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3 \
        [--config.train.steps=200 ...]

Resumes from the newest checkpoint in --workdir. An unknown --config.* key is an error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ imports its siblings

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flaxdistil import distill, sharding  # noqa: E402
from flaxdistil.cli import user_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (checkpoints, logs, export)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    sharding.maybe_initialize_distributed()
    with user_errors():
        distill.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
