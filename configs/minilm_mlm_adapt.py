"""Adapt all-MiniLM-L6-v2 (with its fitted MLM head) to masked-LM: every weight trainable.

    python scripts/fit_mlm_head.py --config configs/minilm_mlm_adapt.py \
        --workdir workdirs/minilm_adapt

Why: a head on the *frozen* encoder reaches only ~6% held-out masked-token accuracy (see
configs/minilm_mlm_head.py and the README): MiniLM was itself distilled from UniLM by matching
last-layer self-attention only, then tuned for sentence embeddings, so its token states were
never trained to predict words. This second stage trains the whole encoder with the MLM loss for
a few hundred steps and installs the result as the offline teacher ('minilm-mlm').
Expected on a 2-core CPU: ~10-15 minutes.
"""

from configs import minilm_mlm_head


def get_config():
    c = minilm_mlm_head.get_config()
    c.student.path = "minilm-mlm"  # the head fitted on the frozen encoder
    c.train.trainable = ""  # everything
    c.train.steps = 160
    c.train.learning_rate = 2e-4
    c.train.checkpoint_every = 40
    c.distill.restrict_ce_to_mask = True
    c.distill.gather_masked = True
    return c
