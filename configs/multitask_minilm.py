"""Movie sentiment + BBC topics + Brown part-of-speech tags in one 3-layer student (every other
layer of all-MiniLM-L6-v2), one head per task, each distilled from its own fine-tuned teacher.

    # the three single-task teachers (6-layer MiniLM, fine-tuned with their own configs)
    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
    python scripts/finetune.py --config configs/bbc_minilm.py --workdir workdirs/bbc_teacher
    python scripts/finetune.py --config configs/brown_pos_minilm.py --workdir workdirs/pos_teacher
    # the multi-task student, 3 seeds
    python scripts/seeds.py --job multitask --config configs/multitask_minilm.py \
        --workdir workdirs/mt_multi --seeds=0,1,2
    # the single-task students it is compared with: the same job and hyperparameters, one task
    python scripts/seeds.py --job multitask --config configs/multitask_minilm.py:sentiment \
        --workdir workdirs/mt_sentiment --seeds=0,1,2      # and :topics, :pos
    (make results-multitask runs all of it and prints the tables)

Each step draws one task with probability |d|^tau / sum |d'|^tau (|d|: its training batches per
epoch; TextBrewer's MultiTaskDistiller rule, ``multitask.tau``). With tau 1 and one epoch (the
tasks' batches summed: 264 + 55 + 312 = 631 steps) each task gets, on average, the steps its
single-task student gets, so the arms differ only in sharing the encoder. Every arm starts from
the same weights (the pretrained MiniLM's layers 0, 2, 4; the heads from the same seed), trains
on the task loss + KL x T^2 (T = 2) against that task's teacher, evaluates three times per run
and keeps the best checkpoint by the mean of the tasks' validation metrics (eval.metric 'mean';
for one task, its metric). Each head is exported to <workdir>/best_hf/<task> and checked in
transformers; results.json has the test scores per task.

Data: as in each task's own config (the teachers saw the same splits): movie snippets at 64
tokens, BBC articles cut to 128 tokens, Brown POS's first 10,000 training sentences and first
2,000 validation / test sentences (configs/brown_pos_minilm.py).

Arguments: (none) the three tasks; 'sentiment', 'topics' or 'pos' that task alone; 'tiny'
caps every task's data for a quick look (a few minutes on a CPU).
"""

from configs import common

TASKS = ("sentiment", "topics", "pos")
STEPS = {"sentiment": 264, "topics": 55, "pos": 312}  # training batches of 32 per epoch


def get_config(arg=None):
    c = common.base("multitask")
    c.student.init = "pretrained"  # all-MiniLM-L6-v2 (base('task')'s student.path), sliced
    c.student.layers = "every_other"
    c.tasks = [
        dict(name="sentiment", dataset="movie_snippets", max_length=64,
             teacher="workdirs/sent_teacher/best_hf", metric="accuracy"),
        dict(name="topics", dataset="bbc_news", max_length=128,
             teacher="workdirs/bbc_teacher/best_hf", metric="accuracy"),
        dict(name="pos", dataset="brown_pos", task="token_classification", max_length=128,
             max_train_examples=10_000, max_eval_examples=2000,
             teacher="workdirs/pos_teacher/best_hf", metric="token_accuracy"),
    ]  # fmt: skip
    c.multitask.tau = 1.0
    c.train.batch_size = 32
    c.train.epochs = 1
    c.train.learning_rate = 2e-4  # the BBC and POS students' rate in their own configs
    c.eval.every = sum(STEPS.values()) // 3
    c.eval.batch_size = 64
    c.eval.patience = 3
    if arg in TASKS:
        c.tasks = [t for t in c.tasks if t["name"] == arg]
        c.eval.every = max(1, STEPS[arg] // 3)
    elif arg == "tiny":
        for t in c.tasks:
            t.update(max_train_examples=640, max_eval_examples=200)
        c.eval.every = 20
    elif arg:
        raise ValueError(f"unknown argument {arg!r}: expected none, tiny or one of {TASKS}")
    return c
