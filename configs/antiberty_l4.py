"""Distil the real AntiBERTy (8 layers) into 4 layers on real antibody V-gene sequences.

    python scripts/distill.py --config configs/antiberty_l4.py --workdir workdirs/antiberty_l4
    make results-antiberty  # the distilled student and its MLM-only twin, seeds 0, 1, 2

Teacher: AntiBERTy's BertForMaskedLM (registry-shipped, trained MLM head). Student: teacher layers
[0, 2, 4, 6]. Data: the IMGT germline V genes in ANARCI's wheel (1,454 unique heavy/kappa/lambda
sequences, ~96 residues; the last 2% held out). These are germline segments without rearranged
CDR3s, so this shows the mechanics on real sequences rather than a repertoire-scale result.
Expected on a 2-core CPU: a few minutes. Argument 'mlm_only': the same student from the same
layers trained on the masked-token loss alone (no KD on the teacher's logits, no hidden-state
cosine), the arm that says what the teacher adds.
"""

from configs import common


def get_config(arg=None):
    c = common.base("general")
    c.teacher.path = "antiberty"
    c.student.layers = "every_other"
    c.data.corpus = "antibody_germlines"
    c.data.max_length = 160
    c.data.mlm_smoothing = 0.0  # 20 amino acids: frequency smoothing buys little
    c.train.steps = 60
    c.train.batch_size = 16
    c.train.learning_rate = 3e-4
    c.train.checkpoint_every = 30
    c.eval.batch_size = 32
    if arg == "mlm_only":
        c.distill.kd_loss_weight = 0.0
        c.distill.intermediate_matches = []
    elif arg:
        raise ValueError(f"unknown argument {arg!r}: expected none or mlm_only")
    return c
