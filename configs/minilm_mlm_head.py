"""Fit a masked-LM head on the frozen all-MiniLM-L6-v2 encoder, making it a distillation teacher.

    python scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py \
        --workdir workdirs/minilm_head

all-MiniLM-L6-v2 ships without an MLM head (it is a sentence-embedding model). Only the head
(transform dense + LayerNorm + vocabulary bias; the decoder is tied to the frozen word embeddings)
is trained, on the offline English corpus; the encoder is untouched. The fitted teacher is
exported to ~/.cache/flaxdistil/teachers/all-MiniLM-L6-v2-mlm and its held-out masked-token
accuracy is printed and saved in the workdir's results.json.
"""

from configs import common


def get_config():
    c = common.base("general")
    c.teacher.path = ""  # no teacher: plain MLM training of the head
    c.student.init = "pretrained"
    c.student.path = "minilm"  # resolved by flaxdistil.assets (the registry-shipped checkpoint)
    c.distill.hard_label_weight = 1.0  # MLM only: no teacher, no KD, no matches
    c.data.max_length = 64
    c.data.mlm_smoothing = 0.0  # plain BERT masking: the teacher should model ordinary text
    c.data.max_heldout_docs = 150
    c.train.trainable = "mlm/"
    c.train.steps = 150
    c.train.batch_size = 32
    c.train.learning_rate = 3e-3
    c.train.checkpoint_every = 50
    c.eval.batch_size = 64
    return c
