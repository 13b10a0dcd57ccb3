"""The fields every config has, by role, for both jobs: ``base('general')`` (masked-LM
distillation, scripts/distill.py) and ``base('task')`` (fine-tuning / task distillation,
scripts/finetune.py, scripts/distill_task.py, scripts/compare_models.py).

Loss names are TextBrewer's (DistillationConfig); the Hugging Face distillation project's map:
alpha_ce = distill.kd_loss_weight with kd_loss_type 'kl_t2', alpha_mlm = distill.hard_label_weight
(general distillation: the hard label is the masked token), alpha_cos = an intermediate match
{'layer_T': -1, 'layer_S': -1, 'feature': 'hidden', 'loss': 'cos', 'weight': alpha_cos}
(``distill.preset='distilbert'`` sets all three). Model fields themselves are HF config names.
"""

import ml_collections

GENERAL_DATA = dict(
    corpus="english_corpus",  # one of our TFDS builders, a TFDS catalog name, or a .txt file
    train_split="train",
    heldout_split="heldout",
    max_length=128,
    mlm_smoothing=0.7,  # HF distillation's frequency smoothing (0 = uniform masking)
    max_train_docs=0,  # 0 = all
    max_heldout_docs=0,
    # A directory written by scripts/prepare_data.py (ArrayRecord token shards): the training
    # sequences stream from it through grain (flaxdistil/data/stream.py) instead of data.corpus
    # being tokenised and held in memory; read_threads / prefetch (batches) / workers (grain
    # worker processes, 0 = none) set the reading.
    array_record="",
    read_threads=2,
    prefetch=8,
    workers=0,
)

TASK_DATA = dict(
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
    # A directory written by scripts/prepare_data.py --task (tokenised examples as ArrayRecord):
    # the training examples stream from it through grain, validation / test are read whole;
    # it replaces dataset / train_file. read_threads / prefetch / workers as for a corpus.
    array_record="",
    read_threads=2,
    prefetch=8,
    workers=0,
)


def base(job: str) -> ml_collections.ConfigDict:
    if job == "multitask":
        return _multitask()
    if job not in ("general", "task"):
        raise ValueError(f"job must be 'general', 'task' or 'multitask', got {job!r}")
    general = job == "general"
    c = ml_collections.ConfigDict()
    # A HF dir, Hub id or asset name ('minilm', 'minilm-mlm', 'antiberty', 'all-MiniLM-L6-v2');
    # for a task, a fine-tuned model of that task. dtype bfloat16 halves its memory.
    # cache: None (off) | True (<flaxdistil cache>/teacher_outputs) | a directory: the teachers'
    # outputs stored by one pass over the training data and read back (task distillation only);
    # cache_dtype float32 | bfloat16 (half the disk).
    # tokenizer: "" = the teacher directory's; one unlike the student's gets the data encoded
    # with it too (TextBrewer's separate teacher batches; flaxdistil/teachers.py says what is
    # defined between two tokenisations).
    c.teacher = dict(path="", dtype="float32", cache=None, cache_dtype="float32", tokenizer="")
    # Several teachers instead of teacher.path (flaxdistil/teachers.py): [{'path': P, 'weight': 1,
    # 'dtype': 'bfloat16', 'intermediate_matches': [...]}, ...]; the KD target is the weighted
    # mean of their logits (distill.teacher_average='logits', TextBrewer's rule) or probabilities.
    c.teachers = []
    c.student = dict(
        init="slice" if general else "pretrained",  # slice (teacher layers) | pretrained | random
        path="" if general else "all-MiniLM-L6-v2",  # for init=pretrained (or random's base)
        layers="",  # "" = all (slice: every_other); every_other | first | last | uniform | "0,2,4"
        num_layers=0,  # for first / last / uniform
        distilbert_style=False,  # drop token types + pooler (exports as DistilBERT)
        preset="",  # for init=random: T6, T3, T3-small, T4-tiny, T12-nano (TextBrewer's shapes)
        fields={},  # for init=random: HF config fields overriding the preset
        # A tokenizer dir of the student's own (scripts/train_tokenizer.py): its word embeddings
        # start as the mean of the model's embeddings of each token's tokenisation by the model's
        # tokenizer (flaxdistil.vocab.own_vocabulary); "" = the model's tokenizer.
        tokenizer="",
    )
    c.data = GENERAL_DATA if general else TASK_DATA
    # None = unset: the preset's value, else the job's default (flaxdistil.matches.DEFAULTS):
    # general distillation is DistilBERT's triple loss (T=2, KL x T^2 x 5, MLM x 2, cosine of
    # the last hidden states x 1); task distillation the task loss x 1 + KL x T^2 x 1 at T=2.
    c.distill = dict(
        preset="",  # distilbert | tinybert | pkd | minilm | minilmv2 | L4t_hidden_mse | ...
        temperature=None,
        temperature_scheduler="constant",  # constant | ['flsw', beta, gamma] | ['cwsm', beta]
        hard_label_weight=None,  # gold labels (general distillation: the masked tokens)
        hard_label_weight_scheduler="constant",  # constant | linear_decay | linear_growth
        kd_loss_type=None,  # ce | mse (TextBrewer's) | kl_t2 (DistilBERT's KL x T^2) | bce
        kd_loss_weight=None,
        kd_loss_weight_scheduler="constant",
        # [{'layer_T': 4, 'layer_S': 1, 'feature': 'hidden', 'loss': 'hidden_mse',
        #   'weight': 1, 'proj': ['linear', 312, 768]}, ...]: see flaxdistil/matches.py
        intermediate_matches=None,
        teacher_average="logits",  # several teachers: weighted mean of 'logits' | 'probs'
        # general distillation only
        mlm_probability=0.15,
        restrict_ce_to_mask=False,  # KD on masked tokens only (else every non-pad token)
        gather_masked=False,  # MLM heads at masked tokens only (needs restrict_ce_to_mask)
    )
    c.train = dict(
        seed=56 if general else 4,
        steps=1000 if general else 0,  # 0 = epochs x steps per epoch
        epochs=1 if general else 3,
        batch_size=32,  # per optimizer micro-step, over all devices
        accumulate=1,  # gradient accumulation: effective batch = batch_size x accumulate
        learning_rate=5e-4 if general else 5e-5,
        warmup_ratio=0.1,  # of the optimizer steps
        weight_decay=0.0 if general else 0.01,
        max_grad_norm=5.0 if general else 1.0,
        dtype="float32",  # compute dtype; params stay float32
        remat="",  # "" (off), none, dots, dots_no_batch
        # einsum | fused (jax.nn.dot_product_attention: cuDNN flash attention on GPU in bf16;
        # right-padded masks, as the batches here are). Attention matches need einsum.
        attention_impl="einsum",
        trainable="",  # comma-separated param path prefixes to train ("" = all)
        # Quantisation-aware training: the forward sees every Dense kernel fake-quantised at
        # qat_bits (2-8; 0 = off; per output channel, or groups of qat_group_size inputs),
        # straight-through gradients, float params (flaxdistil/quantize.py); qat_symmetric=False
        # adds a zero point per channel / group; qat_embeddings: the embedding tables' bits
        # (0 = float). Quantise the result with the same scheme (scripts/compress.py --bits).
        qat_bits=0,
        qat_group_size=0,
        qat_symmetric=True,
        qat_embeddings=0,
        group_by_length=True,  # sort within chunks of 50 batches: less padding
        pad_multiple=32,  # batch widths are multiples of this (few compiled shapes)
        log_every=10,
        checkpoint_every=200 if general else 100,  # full state + data position; 0 = end only
        async_checkpoint=True,  # write checkpoints in the background while training goes on
        prefetch=2,  # batches collated and put on the devices ahead, in a thread (0: inline)
        desc="",  # progress-bar label
    )
    c.eval = dict(
        every=0 if general else 100,  # steps; 0 = none besides epoch ends and the last step
        at_epoch_end=not general,
        batch_size=64,
        metric="mlm_loss" if general else "mcc",  # early stopping / best: an eval metric
        mode="auto",  # auto (min for *loss / mse) | min | max
        patience=0 if general else 3,  # evals without improvement; 0 = never stop early
        min_delta=0.0,
    )
    # Iterative magnitude pruning of the student's encoder kernels during training (seed 004):
    # `rounds` rounds at steps 0, T/rounds, ..., each zeroing the same share of the weights left,
    # to `sparsity` at the last; scope global (one threshold) | layer (each layer on its own).
    c.prune = dict(sparsity=0.0, rounds=1, scope="global")
    c.export = dict(hf=True, check=not general)  # to <workdir>/best_hf or student_hf
    c.mesh = dict(fsdp=1)
    if not general:
        # scripts/compare_models.py: 'name=path[@layers];...' trained with this same config
        # seeds: '' = one run with train.seed; '0,1,2' = each model per seed, mean +- std
        c.compare = dict(models="", plot_metric="mcc", seeds="")
    return c


def _multitask() -> ml_collections.ConfigDict:
    """base('task') plus the tasks (scripts/distill_multitask.py, flaxdistil/jobs/multitask.py).

    Each entry of ``tasks``: ``name`` (its prefix in the logs and its export
    ``best_hf/<name>``), any field of ``data`` (``dataset`` or ``train_file`` is required; the
    others default to ``data``'s), ``teacher`` (a fine-tuned HF directory of that task) or
    ``teachers`` (a list, as the top-level one), ``metric`` (its eval metric; default accuracy,
    pearson, micro_f1, token_accuracy or f1 by task type) and ``distill`` (its own distill
    fields: temperature, kd_loss_weight, hard_label_weight, ...). Each step trains the encoder
    and one task's head on one batch of that task, drawn with probability |d|^tau / sum |d'|^tau,
    |d| its training batches per epoch (TextBrewer's MultiTaskDistiller; ``multitask.tau``); an
    epoch is the tasks' batches summed. ``eval.metric='mean'``: early stopping and the best
    checkpoint follow the mean of the tasks' metrics (all larger-is-better or all smaller), or
    name one task's, '<name>/<metric>'. One field of an entry from the command line:
    ``--config.tasks.<name>.teacher=DIR``.
    """
    c = base("task")
    c.tasks = []
    c.multitask = dict(tau=1.0)
    c.eval.metric = "mean"
    return c


# The four 3-layer students of a task's fair comparison (configs/brown_pos_minilm.py,
# configs/movie_regression_minilm.py): two initialisations x with / without the teacher.
STUDENT_ARMS = ("distill", "baseline_ft", "distill_pre", "baseline")


def student_arms(c, arg, lr: float) -> ml_collections.ConfigDict:
    """The teacher config ``c`` (arg None) or one of STUDENT_ARMS on top of it: every other
    layer at learning rate ``lr``, sliced from teacher.path, the fine-tuned teacher ('distill',
    'baseline_ft') or from student.path, the pretrained model the teacher started from
    ('distill_pre', 'baseline'); the 'baseline*' arms train without the teacher's outputs."""
    if arg is None:
        return c
    if arg not in STUDENT_ARMS:
        raise ValueError(
            f"unknown argument {arg!r}: expected none or one of {', '.join(STUDENT_ARMS)}"
        )
    c.student.layers = "every_other"
    c.train.learning_rate = lr
    if arg in ("distill", "baseline_ft"):
        c.student.init = "slice"
    if arg in ("baseline_ft", "baseline"):
        c.distill.kd_loss_weight = 0.0
    return c
