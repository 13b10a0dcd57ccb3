"""Movie-review sentiment (binary, by the sign of the score): all-MiniLM-L6-v2 and 3-layer students.

    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
    python scripts/distill_task.py --config configs/sentiment_minilm.py:distill \
        --workdir workdirs/sent_l3_kd --config.teacher.path=workdirs/sent_teacher/best_hf
    python scripts/finetune.py --config configs/sentiment_minilm.py:baseline \
        --workdir workdirs/sent_l3_base

Expected (seed 4, one epoch each, measured on the shared 2-core CPU; scripts/demo_full.py runs
all three, ~15 min): test accuracy / MCC teacher 0.826 / 0.651 (~5 min), distilled 0.829 /
0.657 (~5.5 min), baseline 0.823 / 0.646 (~4.5 min).
Arguments: (none) the 6-layer teacher; 'distill' the teacher's every-other-layer slice trained
with KD; 'baseline' the same 3 layers sliced from the pretrained MiniLM, trained without teacher.
"""

from configs import finetune_common


def get_config(arg=None):
    c = finetune_common.base()
    c.data.dataset = "movie_snippets"
    c.data.max_length = 64  # 99.95% of snippets fit (median 26 tokens, max 72)
    c.train.batch_size = 32
    c.train.epochs = 1
    c.train.eval_every = 66  # 4 evals per epoch of 264 steps
    c.train.metric = "mcc"
    c.train.patience = 3
    c.train.learning_rate = 5e-5
    if arg in ("distill", "baseline"):
        c.model.layers = "every_other"
        c.train.learning_rate = 1e-4
        c.model.path = "teacher" if arg == "distill" else "all-MiniLM-L6-v2"
    elif arg:
        raise ValueError(f"unknown argument {arg!r}: expected none, 'distill' or 'baseline'")
    return c
