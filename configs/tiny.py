"""A tiny general distillation used by the tests: random 4-layer teacher -> 2-layer student.

    python scripts/distill.py --config configs/tiny.py --workdir /tmp/tiny \
        --config.teacher.path=PATH_TO_A_TINY_HF_MLM_CHECKPOINT

Expected: finishes in under a minute on CPU; the loss terms drop a little.
"""

from configs import common


def get_config():
    c = common.base("general")
    c.data.max_length = 32
    c.data.max_train_docs = 400
    c.data.max_heldout_docs = 40
    c.train.batch_size = 8
    c.train.steps = 6
    c.train.warmup_ratio = 0.34
    c.train.learning_rate = 1e-3
    c.train.checkpoint_every = 3
    c.train.log_every = 1
    c.eval.batch_size = 8
    c.export.hf = False
    return c
