"""Movie sentiment + BBC topics + Brown part-of-speech tags in one 3-layer student (every other
layer of all-MiniLM-L6-v2), one head per task, each distilled from its own fine-tuned teacher.

    # the three single-task teachers (6-layer MiniLM, fine-tuned)
    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
    python scripts/finetune.py --config configs/bbc_minilm.py --workdir workdirs/bbc_teacher
    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/pos_teacher \
        --config.data.dataset=brown_pos --config.data.task=token_classification \
        --config.data.max_length=128 --config.eval.metric=token_accuracy
    # the multi-task student
    python scripts/distill_multitask.py --config configs/multitask_minilm.py \
        --workdir workdirs/multitask_l3 \
        --config.tasks.sentiment.teacher=workdirs/sent_teacher/best_hf \
        --config.tasks.topics.teacher=workdirs/bbc_teacher/best_hf \
        --config.tasks.pos.teacher=workdirs/pos_teacher/best_hf

Each step draws one task with probability |d|^tau / sum |d'|^tau (|d|: its training batches per
epoch; TextBrewer's MultiTaskDistiller rule, ``multitask.tau``; tau 1 lets POS, the largest,
take most steps, tau 0 draws the tasks uniformly) and trains the encoder and that task's head
on the task loss + KL x T^2 (T = 2) against that task's teacher. Early stopping and the best
checkpoint follow the mean of the three validation accuracies (eval.metric 'mean'); each head is
exported to <workdir>/best_hf/<task> and checked in transformers; results.json has the test
scores per task. ``:tiny`` caps every task's data for a quick look (a few minutes on a CPU).
"""

from configs import common


def get_config(arg=None):
    c = common.base("multitask")
    c.student.init = "pretrained"  # all-MiniLM-L6-v2 (base('task')'s student.path), sliced
    c.student.layers = "every_other"
    c.tasks = [
        dict(name="sentiment", dataset="movie_snippets", max_length=64, teacher="",
             metric="accuracy"),
        dict(name="topics", dataset="bbc_news", max_length=128, teacher="", metric="accuracy"),
        dict(name="pos", dataset="brown_pos", task="token_classification", max_length=128,
             teacher="", metric="token_accuracy"),
    ]  # fmt: skip
    c.multitask.tau = 1.0
    c.train.batch_size = 32
    c.train.epochs = 1
    c.train.learning_rate = 1e-4
    c.eval.every = 200
    c.eval.patience = 3
    if arg == "tiny":
        for t in c.tasks:
            t.update(max_train_examples=640, max_eval_examples=200)
        c.eval.every = 20
    elif arg:
        raise ValueError(f"unknown argument {arg!r}: expected none or tiny")
    return c
