"""Movie-review sentiment (binary, by the sign of the score): all-MiniLM-L6-v2 and 3-layer students.

    python scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
    python scripts/distill_task.py --config configs/sentiment_minilm.py:distill \
        --workdir workdirs/sent_l3_kd --config.teacher.path=workdirs/sent_teacher/best_hf
    python scripts/finetune.py --config configs/sentiment_minilm.py:baseline \
        --workdir workdirs/sent_l3_base
    python scripts/seeds.py --config configs/sentiment_minilm.py:multi_kd --seeds=0,1,2 \
        --workdir workdirs/sent_multi_kd --config.teacher.cache=True

The fair protocols (``make results-protocols``, README): 'distill' / 'baseline_ft' start from
the fine-tuned teacher's every-other-layer slice, with / without KD; 'distill_pre' /
'baseline' from the same slice of the pretrained MiniLM, with / without KD. 'multi_kd' is
'distill_pre' with three teachers (fine-tuned with seeds 4, 1, 2: ``make sent-teachers``) whose
mean logits are the KD target; ``scripts/evaluate_teachers.py`` scores their own ensemble.

Students with their own vocabulary (issue 10, section 4; the commands: ``make results-vocab``):

    python scripts/train_tokenizer.py --out workdirs/tokenizer_wp8k --vocab_size 8192
    python scripts/seeds.py --config configs/sentiment_minilm.py:small_vocab --seeds=0,1,2 \
        --workdir workdirs/vocab_small_vocab --config.teacher.path=workdirs/sent_teacher/best_hf
    python scripts/seeds.py --config configs/sentiment_minilm.py:small_vocab_twin --seeds=0,1,2 \
        --workdir workdirs/vocab_small_vocab_twin \
        --config.teacher.path=workdirs/sent_teacher/best_hf

Arguments: (none) the 6-layer teacher; 'distill' the teacher's every-other-layer slice trained
with KD (KL x T^2 at T=2 on the logits + the task loss); 'baseline' the same 3 layers sliced from
the pretrained MiniLM, trained without teacher; 'tiny_kd' / 'tiny_tinybert' / 'tiny_base' a
randomly initialised TextBrewer T4-tiny student (4 x 312) trained with KD on logits only, with
TinyBERT's hidden and attention matches through projections plus KD, or without a teacher;
'small_vocab' the pretrained MiniLM's layers 0, 2, 4 with the 8,192-token WordPiece vocabulary
of scripts/train_tokenizer.py (its embedding rows start as the mean of MiniLM's embeddings of
each token's MiniLM pieces; the teacher reads its own MiniLM tokens), and 'small_vocab_twin' the
same student keeping MiniLM's 30,522 tokens: both with KD on the logits from the fine-tuned
teacher, whose outputs are cached (teacher.cache) and shared by both arms.
Timings and results: README, Results.
"""

from configs import common

# The three fine-tuned teachers of 'multi_kd' (train.seed 4 = the task default, 1, 2).
TEACHERS = ("sent_teacher", "sent_teacher_s1", "sent_teacher_s2")


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
    if arg in (*common.STUDENT_ARMS, "multi_kd"):
        common.student_arms(c, "distill_pre" if arg == "multi_kd" else arg, lr=1e-4)
        if arg == "multi_kd":
            c.teachers = [{"path": f"workdirs/{d}/best_hf"} for d in TEACHERS]
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
    elif arg in ("small_vocab", "small_vocab_twin"):
        c.student.init = "pretrained"
        c.student.path = "all-MiniLM-L6-v2"
        c.student.layers = "0,2,4"
        c.train.learning_rate = 1e-4
        c.teacher.cache = True  # the teacher's logits once, for every seed and both arms
        if arg == "small_vocab":
            c.student.tokenizer = "workdirs/tokenizer_wp8k"
    elif arg:
        raise ValueError(
            f"unknown argument {arg!r}: expected none, distill, baseline, distill_pre, "
            "baseline_ft, multi_kd, tiny_kd, tiny_tinybert, tiny_base, small_vocab or "
            "small_vocab_twin"
        )
    return c
