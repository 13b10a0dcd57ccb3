"""Fit an MLM head on a frozen encoder and install the result as a distillation teacher.

    python scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py \
        --workdir workdirs/minilm_head [--install_to DIR]

The run itself is the general-distillation job with no teacher and only `mlm/` params trainable;
the exported model is copied to ~/.cache/flaxdistil/teachers/all-MiniLM-L6-v2-mlm (--install_to),
what the short name 'minilm-mlm' resolves to.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxdistil import assets, runner, sharding  # noqa: E402
from flaxdistil.jobs import general  # noqa: E402


def fit_and_install(cfg, workdir, install_to):
    results = general.run(cfg, workdir)
    if not sharding.is_primary():  # multi-host: process 0 installs
        return
    dest = Path(install_to)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".teacher-", dir=dest.parent))
    shutil.copytree(results["exported_to"], tmp, dirs_exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)  # atomic: a reader never sees a half-copied teacher
    acc = results["student"]["mlm_accuracy"]
    print(f"teacher installed at {dest}; held-out masked-token accuracy {acc:.4f}")


if __name__ == "__main__":
    default = str(assets.minilm_mlm_teacher_path())
    runner.run(fit_and_install, flags={"install_to": default})
