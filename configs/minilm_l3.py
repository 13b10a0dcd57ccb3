"""Offline DistilBERT-style distillation: MiniLM-L6 (+ fitted MLM head) -> 3-layer DistilBERT.

    make teacher   # once: fits the MLM head (configs/minilm_mlm_head.py)
    python scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3
    # the same student without the teacher (kd_loss_weight = 0, no matches), for comparison:
    python scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3_mlm_only \
        --config.distill.kd_loss_weight=0 --config.distill.intermediate_matches=[]

Student = teacher layers [0, 2, 4] without token types and pooler (exports as a DistilBERT),
trained with the triple loss (T=2, alpha 5/2/1) on the offline English corpus. Expected on a
2-core CPU: ~10 minutes; the distilled student reaches a lower held-out MLM loss than the
MLM-only student (README, Results).
"""

from configs import common


def get_config():
    c = common.base("general")
    c.teacher.path = "minilm-mlm"
    c.student.layers = "every_other"
    c.student.distilbert_style = True
    c.data.max_length = 64
    c.data.max_heldout_docs = 150
    c.train.steps = 120
    c.train.batch_size = 32
    c.train.learning_rate = 3e-4
    c.train.checkpoint_every = 40
    return c
