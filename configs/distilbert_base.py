"""DistilBERT's recipe (Sanh et al. 2019) for users with the Hub and GPUs.

    python scripts/distill.py --config configs/distilbert_base.py --workdir workdirs/distilbert \
        --config.data.corpus=wikipedia/20230601.en

bert-base-uncased -> 6 layers taken at [0, 2, 4, 7, 9, 11] (the HF distillation project's
extract_distilbert.py), no token types and no pooler, T = 2, alpha_ce/mlm/cos = 5/2/1, lr 5e-4,
~4K-sequence batches by gradient accumulation (32 x 128 = 4,096 sequences), seq 512, MLM smoothing
0.7. The paper trained ~90 hours on 8 V100s; expect the student at ~97% of BERT on GLUE after
task fine-tuning. Not runnable offline (needs the Hub and a TFDS catalog corpus).
"""

from configs import common


def get_config():
    c = common.base("general")
    c.teacher.path = "bert-base-uncased"
    c.teacher.dtype = "bfloat16"
    c.student.layers = [0, 2, 4, 7, 9, 11]
    c.student.distilbert_style = True
    c.data.corpus = "wikipedia/20230601.en"
    c.data.heldout_split = "train[-1%:]"
    c.data.train_split = "train[:99%]"
    c.data.max_length = 512
    c.distill.preset = "distilbert"  # T = 2, KL x T^2 x 5 + MLM x 2 + cosine x 1
    c.train.batch_size = 32
    c.train.accumulate = 128
    c.train.learning_rate = 5e-4
    c.train.warmup_ratio = 500 / 60_000
    c.train.steps = 128 * 60_000
    c.train.dtype = "bfloat16"
    c.train.remat = "dots"
    c.train.attention_impl = "fused"
    c.train.max_grad_norm = 5.0
    c.train.weight_decay = 0.0
    c.train.checkpoint_every = 128 * 1000
    c.train.log_every = 128
    c.eval.every = 128 * 5000
    return c
