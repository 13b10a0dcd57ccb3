"""Fields shared by every distillation config, with DistilBERT's recipe as the defaults.

Names follow roles (teacher / student / data / distill / train / mesh); the student and teacher
model fields themselves are Hugging Face config names.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.teacher = dict(path="", dtype="float32")  # HF dir or Hub id with an MLM head
    c.student = dict(
        init="slice",  # slice | pretrained | random
        layers="every_other",  # or a list of teacher layer ids, or first / last / uniform
        num_layers=0,
        distilbert_style=False,  # drop token types + pooler (exports as DistilBERT)
        path="",  # for init=pretrained (or the base config of init=random without teacher)
        preset="",  # for init=random: T6, T3, T3-small, T4-tiny, T12-nano
        fields={},  # for init=random: HF config fields overriding the preset
    )
    c.data = dict(
        corpus="english_corpus",  # one of our TFDS builders, a TFDS catalog name, or a .txt file
        train_split="train",
        heldout_split="heldout",
        max_length=128,
        mlm_smoothing=0.7,  # HF distillation's frequency smoothing (0 = uniform masking)
        max_train_docs=0,  # 0 = all
        max_heldout_docs=0,
    )
    c.distill = dict(
        temperature=2.0,
        alpha_ce=5.0,
        alpha_mlm=2.0,
        alpha_cos=1.0,
        alpha_mse=0.0,
        restrict_ce_to_mask=False,
        # MLM heads at the masked tokens only (needs restrict_ce_to_mask): far less head compute.
        gather_masked=False,
        mlm_probability=0.15,
    )
    c.train = dict(
        seed=56,
        steps=1000,
        batch_size=32,  # per optimizer micro-step, over all devices
        accumulate=1,  # gradient accumulation: effective batch = batch_size * accumulate
        learning_rate=5e-4,
        warmup_steps=100,
        weight_decay=0.0,
        max_grad_norm=5.0,
        dtype="float32",  # compute dtype; params stay float32
        remat="",  # "" (off), none, dots, dots_no_batch
        # einsum | fused (jax.nn.dot_product_attention: cuDNN flash attention on GPU in bf16;
        # right-padded masks, as the batches here are)
        attention_impl="einsum",
        trainable="",  # comma-separated param path prefixes to train ("" = all)
        log_every=10,
        checkpoint_every=200,
        eval_batch_size=64,
    )
    c.mesh = dict(fsdp=1)
    c.export = True
    return c
