"""Seed article 000's comparison ("To distil or not to distil: BERT, RoBERTa and XLNet") for users
with the Hub: seven models fine-tuned on AG News with identical hyperparameters.

    python scripts/compare_models.py --config configs/seed000_ag_news.py --workdir workdirs/seed000

TFDS 'ag_news_subset' (120k train / 7.6k test; the validation split is carved from train),
max_seq_length 256, at most 5 epochs, early stopping with patience 3 on the evaluation loss,
manual seed 4, MCC evaluated every 1,000 steps and at each epoch end, run time and steps to the
best evaluation per model, and the plots (mcc_vs_steps.png, runtime.png). Not runnable offline
(needs the Hub and the TFDS download); configs/bbc_minilm.py:compare is the offline stand-in.
"""

from configs import common

MODELS = (
    "bert-base-cased",
    "roberta-base",
    "distilbert-base-uncased",
    "xlnet-base-cased",
    "distilroberta-base",
    "bert-base-multilingual-cased",
    "distilbert-base-multilingual-cased",
)


def get_config():
    c = common.base("task")
    c.data.dataset = "ag_news_subset"
    c.data.train_split = "train[:95%]"
    c.data.validation_split = "train[95%:]"
    c.data.max_length = 256
    c.train.epochs = 5
    c.train.batch_size = 32
    c.train.learning_rate = 4e-5  # simpletransformers' default, used for every model
    c.train.seed = 4
    c.train.checkpoint_every = 1000
    c.eval.every = 1000
    c.eval.metric = "loss"  # the article stops early on the eval loss and reports MCC
    c.eval.patience = 3
    c.compare.plot_metric = "mcc"
    c.compare.models = ";".join(f"{m}={m}" for m in MODELS)
    return c
