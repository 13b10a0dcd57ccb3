"""BBC News topics (5 classes): all-MiniLM-L6-v2, 3-layer students, and the model comparison.

    python scripts/finetune.py --config configs/bbc_minilm.py --workdir workdirs/bbc_teacher
    python scripts/distill_task.py --config configs/bbc_minilm.py:distill \
        --workdir workdirs/bbc_l3_kd --config.teacher.path=workdirs/bbc_teacher/best_hf
    python scripts/finetune.py --config configs/bbc_minilm.py:baseline --workdir workdirs/bbc_l3
    python scripts/compare_models.py --config configs/bbc_minilm.py:compare \
        --workdir workdirs/compare_bbc

Expected (seed 4, two epochs each; scripts/demo_full.py --dataset bbc_news runs the first
three: 30 min on the shared 2-core CPU under load, ~15 min estimated idle): test accuracy / MCC
teacher 0.964 / 0.955, distilled 0.959 / 0.949, baseline 0.946 / 0.932. Articles are long
(median 421 tokens), so they are cut to max_length 128: the topic is clear from the opening
lines. 'compare' follows seed article 000's protocol (max_seq_length 256, at most 5 epochs,
early stopping on eval loss with patience 3, seed 4, MCC every N steps and at each epoch end)
for the 6-layer model and its 3- and 2-layer slices (not run here: about an hour of 2-core CPU,
estimated from the step times).
"""

from configs import common


def get_config(arg=None):
    c = common.base("task")
    c.data.dataset = "bbc_news"
    c.data.max_length = 128
    c.train.batch_size = 16  # 1,781 articles: 111 steps per epoch
    c.train.epochs = 2
    c.eval.every = 37  # 3 evals per epoch
    c.eval.metric = "mcc"
    c.eval.patience = 3
    c.train.learning_rate = 1e-4
    if arg in ("distill", "baseline"):
        c.student.layers = "every_other"
        c.train.learning_rate = 2e-4
        if arg == "distill":
            c.student.init = "slice"
        else:
            c.distill.kd_loss_weight = 0.0
    elif arg == "compare":
        c.data.max_length = 256
        c.train.epochs = 5
        c.eval.every = 50
        c.train.seed = 4
        c.train.learning_rate = 4e-5  # simpletransformers' default, used for every model
        c.eval.metric = "loss"  # the article stops early on the eval loss and reports MCC
        c.compare.plot_metric = "mcc"
        c.compare.models = (
            "MiniLM-L6=all-MiniLM-L6-v2;"
            "MiniLM-L3=all-MiniLM-L6-v2@every_other;"
            "MiniLM-L2=all-MiniLM-L6-v2@0,5"
        )
    elif arg:
        raise ValueError(f"unknown argument {arg!r}: expected none, distill, baseline or compare")
    return c
