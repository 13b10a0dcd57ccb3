"""Movie-review sentiment (binary, by the sign of the score): all-MiniLM-L6-v2 and 3-layer students.

    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
    python scripts/distill_task.py --config configs/sentiment_minilm.py:distill \
        --workdir workdirs/sent_l3_kd --config.teacher.path=workdirs/sent_teacher/best_hf
    python scripts/finetune.py --config configs/sentiment_minilm.py:baseline \
        --workdir workdirs/sent_l3_base

Arguments: (none) the 6-layer teacher; 'distill' the teacher's every-other-layer slice trained
with KD (KL x T^2 at T=2 on the logits + the task loss); 'baseline' the same 3 layers sliced from
the pretrained MiniLM, trained without teacher; 'tiny_kd' / 'tiny_tinybert' / 'tiny_base' a
randomly initialised TextBrewer T4-tiny student (4 x 312) trained with KD on logits only, with
TinyBERT's hidden and attention matches through projections plus KD, or without a teacher.
Timings and results: README, Results.
"""

from configs import common


def get_config(arg=None):
    c = common.base("task")
    c.data.dataset = "movie_snippets"
    c.data.max_length = 64  # 99.95% of snippets fit (median 26 tokens, max 72)
    c.train.batch_size = 32
    c.train.epochs = 1
    c.eval.every = 66  # 4 evals per epoch of 264 steps
    c.eval.metric = "mcc"
    c.eval.patience = 3
    c.train.learning_rate = 5e-5
    if arg in ("distill", "baseline"):
        c.student.layers = "every_other"
        c.train.learning_rate = 1e-4
        if arg == "distill":
            c.student.init = "slice"
        else:
            c.distill.kd_loss_weight = 0.0
    elif arg in ("tiny_kd", "tiny_tinybert", "tiny_base"):
        c.student.init = "random"
        c.student.path = "all-MiniLM-L6-v2"  # the base config the preset shrinks
        c.student.preset = "T4-tiny"
        c.train.epochs = 1  # 264 steps: a random student is far from converged (README)
        c.train.learning_rate = 5e-4
        c.eval.every = 88
        if arg == "tiny_tinybert":
            c.distill.preset = "tinybert"
            c.distill.hard_label_weight = 1.0
        elif arg == "tiny_base":
            c.distill.kd_loss_weight = 0.0
    elif arg:
        raise ValueError(
            f"unknown argument {arg!r}: expected none, distill, baseline, tiny_kd, "
            "tiny_tinybert or tiny_base"
        )
    return c
