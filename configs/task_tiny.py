"""A tiny fine-tuning run used by the tests: a random 2-layer, hidden-32 model on 64 snippets.

    python scripts/finetune.py --config configs/task_tiny.py --workdir /tmp/task_tiny \
        --config.student.path=PATH_TO_A_TINY_HF_CHECKPOINT

Expected: finishes in well under a minute on CPU; the training loss falls.
"""

from configs import common


def get_config():
    c = common.base("task")
    c.data.dataset = "movie_snippets"
    c.data.max_length = 32
    c.data.max_train_examples = 64
    c.data.max_eval_examples = 32
    c.student.path = ""  # set by the caller: a tiny HF directory
    c.train.epochs = 2
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.0
    c.train.log_every = 1
    c.train.checkpoint_every = 0
    c.eval.every = 4
    c.eval.batch_size = 16
    c.eval.patience = 0
    c.export.check = False
    return c
