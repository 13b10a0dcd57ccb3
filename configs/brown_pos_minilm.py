"""Brown part-of-speech tags (token classification): all-MiniLM-L6-v2 and 3-layer students.

    python scripts/finetune.py --config configs/brown_pos_minilm.py --workdir workdirs/pos_teacher
    python scripts/seeds.py --config configs/brown_pos_minilm.py:ARM --workdir workdirs/pos_ARM \
        --seeds=3 --config.teacher.path=workdirs/pos_teacher/best_hf
    (make results-tasktypes runs all of it and prints the tables)

Arguments: (none) the 6-layer teacher; four 3-layer students (every other layer), two
initialisations x with / without the teacher, so each KD-vs-no-KD pair starts from the same
weights:
  'distill'      sliced from the fine-tuned teacher, KD (KL x T^2 at T=2 on the tag logits of
                 labelled tokens) + the tag CE;
  'baseline_ft'  the same slice of the fine-tuned teacher, tag CE only (teacher.path is still
                 needed: it is the model sliced);
  'distill_pre'  sliced from the pretrained MiniLM, KD + tag CE;
  'baseline'     the same slice of the pretrained MiniLM, tag CE only.

Data: the Brown corpus in flaxdistil's brown_pos splits (by file: 47,654 / 4,942 / 4,744
sentences, 15 genres; tags simplified by corpora.simplify_brown_tag; the label is on each
word's first sub-token). To keep a run short on a 2-core CPU the training set is its first
``max_train_examples`` sentences (the builder's stored order is a hash shuffle, so they span
all genres) and validation / test their first ``max_eval_examples``; max_length 128 keeps every
sentence whole (the longest is 123 tokens). Metrics: token accuracy and macro-F1 over tags
(every tag seen in the test labels or predictions), and a per-tag precision / recall / F1 /
support table in results.json's 'test_per_label'.

Run time, estimated (2026-12-02): an epoch is 312 steps of 32 sentences (median 22 tokens,
batches padded to 32 / 64 / 96 / 128), about the work of a sentiment epoch (264 steps of 32 x
<= 64 tokens), so ~10 min for the teacher and ~5 min for a student on the 2-core CPU, plus three
evaluations of 2,000 sentences. The smoke runs here (40 teacher steps) ran at a load average of
11-21 from other jobs and measured compile and contention, not this: 155 s of CPU time in all
for 40 steps, two evaluations of 500 sentences, the export and its transformers check.
"""

from configs import common


def get_config(arg=None):
    c = common.base("task")
    c.data.dataset = "brown_pos"
    c.data.task = "token_classification"
    c.data.max_length = 128
    c.data.max_train_examples = 10_000  # of 47,654: ~200k words
    c.data.max_eval_examples = 2000
    c.train.batch_size = 32  # 312 steps per epoch
    c.train.epochs = 1
    c.eval.every = 104  # 3 evals per epoch
    c.eval.batch_size = 64
    c.eval.metric = "token_accuracy"
    c.eval.patience = 3
    c.train.learning_rate = 1e-4
    return common.student_arms(c, arg, lr=2e-4)
