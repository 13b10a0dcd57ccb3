"""Fit an MLM head on a frozen encoder and install the result as a distillation teacher.

    python scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py \
        --workdir workdirs/minilm_head

The run itself is the distillation job with no teacher and only `mlm/` params trainable; the
exported model is copied to ~/.cache/flaxdistil/teachers/all-MiniLM-L6-v2-mlm (--install_to).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flaxdistil import assets, distill  # noqa: E402
from flaxdistil.cli import user_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
_INSTALL = flags.DEFINE_string(
    "install_to",
    str(assets.cache_dir() / "teachers" / "all-MiniLM-L6-v2-mlm"),
    "where the fitted teacher goes (what the short name 'minilm-mlm' resolves to)",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with user_errors():
        results = distill.run(_CONFIG.value, _WORKDIR.value)
    dest = Path(_INSTALL.value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".teacher-", dir=dest.parent))
    shutil.copytree(results["exported_to"], tmp, dirs_exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)  # atomic: a reader never sees a half-copied teacher
    acc = results["student"]["mlm_accuracy"]
    print(f"teacher installed at {dest}; held-out masked-token accuracy {acc:.4f}")


if __name__ == "__main__":
    app.run(main)
