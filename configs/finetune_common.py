"""Fields shared by every fine-tuning / task-distillation config (scripts/finetune.py,
scripts/distill_task.py, scripts/compare_models.py), with plain fine-tuning as the defaults.

Names follow roles (data / model / teacher / distill / train / export / compare). Without
teacher.path the job is plain fine-tuning; with it, task distillation.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = dict(
        dataset="movie_snippets",  # our TFDS builder (movie_snippets, bbc_news, brown_pos) or a
        # TFDS catalog name (glue/sst2, ag_news_subset, imdb_reviews, conll2003, ...)
        task="classification",  # classification | regression | multilabel |
        # token_classification | qa  (movie_snippets: classification or regression)
        train_file="",  # local CSV/TSV/JSONL/SQuAD JSON instead of data.dataset
        validation_file="",  # missing validation/test parts are carved from train_file
        test_file="",
        format="auto",  # auto (by suffix) | ag_news (class, title, description) | squad
        text_column="text",
        text_pair_column="",
        label_column="label",
        label_names="",  # comma-separated, for local files
        num_labels=0,
        heldout_fraction=0.1,  # of train_file per missing split
        split_seed=0,
        train_split="train",  # TFDS catalog split names
        validation_split="validation",
        test_split="test",
        max_length=128,
        doc_stride=128,  # QA: overlap between windows of a long context
        max_train_examples=0,  # 0 = all
        max_eval_examples=0,
        cache_dir="",  # tokenisation cache ("" = <flaxdistil cache>/task_tokens)
    )
    c.model = dict(
        path="all-MiniLM-L6-v2",  # HF dir / Hub id / an offline asset name / 'teacher'
        layers="",  # "" keeps all; every_other | first | last | uniform | "0,2,4"
        num_layers=0,  # for first / last / uniform
    )
    c.teacher = dict(path="")  # a fine-tuned HF dir: turns fine-tuning into distillation
    c.distill = dict(
        alpha_hard=1.0,  # hard-label task loss
        alpha_kd=1.0,  # KL(T) on logits (MSE for regression); needs a teacher
        temperature=2.0,
        alpha_hidden=0.0,  # last hidden state vs the teacher's (same width only)
        hidden_loss="cos",  # cos | mse
    )
    c.train = dict(
        seed=4,
        epochs=3,
        max_steps=0,  # 0 = epochs * steps per epoch
        batch_size=32,
        learning_rate=5e-5,
        warmup_ratio=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        dtype="float32",
        remat="",
        group_by_length=True,  # sort within chunks of 50 batches: less padding
        pad_multiple=32,  # batch widths are multiples of this (few compiled shapes)
        eval_every=100,  # steps; an eval also ends every epoch
        eval_batch_size=64,
        metric="mcc",  # early stopping / best checkpoint: an eval metric or 'loss'
        mode="auto",  # auto (min for loss/mse) | min | max
        patience=3,  # evals without improvement; 0 = never stop early
        min_delta=0.0,
        resumable=True,  # save the full state at each eval; a rerun resumes
        log_every=10,
        desc="",  # progress-bar label
    )
    c.export = dict(hf=True, check=True)  # best model to <workdir>/best_hf; check in torch
    # scripts/compare_models.py: 'name=path[@layers];...' trained with this same config
    c.compare = dict(models="", plot_metric="mcc")
    return c
