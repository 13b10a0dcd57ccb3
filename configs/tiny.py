"""A tiny distillation used by the tests: random 4-layer teacher -> 2-layer student, seconds on CPU.

    python scripts/distill.py --config configs/tiny.py --workdir /tmp/tiny \
        --config.teacher.path=PATH_TO_A_TINY_HF_MLM_CHECKPOINT

Expected: finishes in under a minute on CPU; the loss terms drop a little.
"""

from configs import distill_common


def get_config():
    c = distill_common.base()
    c.data.max_length = 32
    c.data.max_train_docs = 400
    c.data.max_heldout_docs = 40
    c.train.batch_size = 8
    c.train.steps = 6
    c.train.warmup_steps = 2
    c.train.learning_rate = 1e-3
    c.train.checkpoint_every = 3
    c.train.log_every = 1
    c.train.eval_batch_size = 8
    c.export = False
    return c
