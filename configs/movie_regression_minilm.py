"""Movie-review snippets' mean human sentiment score (regression): MiniLM and 3-layer students.

    python scripts/finetune.py --config configs/movie_regression_minilm.py \
        --workdir workdirs/reg_teacher
    python scripts/seeds.py --config configs/movie_regression_minilm.py:ARM \
        --workdir workdirs/reg_ARM --seeds=3 --config.teacher.path=workdirs/reg_teacher/best_hf
    (make results-tasktypes runs all of it and prints the tables)

The target is each snippet's mean human rating in [-4, 4] (Hutto & Gilbert 2014; the builder
drops the 37 snippets rated exactly 0, as for the sentiment task, so the splits are the same
8,454 / 1,057 / 1,057 sentences); one linear output trained with MSE (HF's problem_type
'regression'). Metrics: Pearson and Spearman correlation and MSE on the test split; early
stopping on the validation Pearson.

Arguments: (none) the 6-layer teacher (all-MiniLM-L6-v2 fine-tuned); the students of
configs/common.py's STUDENT_ARMS, 3 layers (every other):
  'distill'      sliced from the fine-tuned teacher, KD + the MSE to the human score;
  'baseline_ft'  the same slice, MSE to the human score only;
  'distill_pre'  sliced from the pretrained MiniLM, KD + MSE to the score;
  'baseline'     the same slice of the pretrained MiniLM, MSE to the score only.
KD for one real output is TextBrewer's kd_mse_loss at temperature 1: the squared difference
between the student's and the teacher's predicted score (a softmax over one output is constant).
Run time, estimated from the sentiment runs on the same data and shapes (README, Results): ~7-9
min for the teacher's epoch and ~3.5-4.5 min for a student's on the shared 2-core CPU.
"""

from configs import common


def get_config(arg=None):
    c = common.base("task")
    c.data.dataset = "movie_snippets"
    c.data.task = "regression"
    c.data.max_length = 64  # 99.95% of snippets fit (median 26 tokens, max 72)
    c.train.batch_size = 32  # 264 steps per epoch
    c.train.epochs = 1
    c.train.learning_rate = 5e-5
    c.eval.every = 66  # 4 evals per epoch, as the sentiment task
    c.eval.metric = "pearson"
    c.eval.patience = 3
    c.distill.kd_loss_type = "mse"
    c.distill.temperature = 1.0
    return common.student_arms(c, arg, lr=1e-4)
