"""Dynamic masked-LM corruption as a pure JAX function, run inside the jitted train step.

New masks every step (the rng is split per step), deterministic for a given rng, and free of
host round trips. Two selection rules:

- no ``token_weights``: each real token independently with ``mlm_probability`` (Bernoulli, as
  ``DataCollatorForLanguageModeling``);
- ``token_weights`` (``counts ** -0.7``, see ``text_pipeline.smoothing_weights``): exactly
  ``round(mlm_probability * n_real)`` positions per batch, drawn without replacement with
  probability proportional to their token's weight, as HF distillation's ``torch.multinomial``;
  done here with Gumbel top-k (``log w + Gumbel`` keys, keep the k largest) so k can be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxdistil.losses import IGNORE_INDEX


def _random_non_special(rng, shape, special_ids, vocab_size):
    """Uniform ids over the vocabulary minus ``special_ids`` (distinct), without a [V] draw."""
    specials = jnp.sort(jnp.asarray(special_ids, dtype=jnp.int32))
    ids = jax.random.randint(rng, shape, 0, vocab_size - specials.shape[0], dtype=jnp.int32)
    for i in range(specials.shape[0]):  # skip over each special id in increasing order
        ids = ids + (ids >= specials[i]).astype(jnp.int32)
    return ids


def select_positions(rng, candidates_BxT, mlm_probability, weights_BxT=None):
    """Boolean [B,T] selection among ``candidates_BxT`` (see the module docstring)."""
    if weights_BxT is None:
        draw = jax.random.uniform(rng, candidates_BxT.shape) < mlm_probability
        return candidates_BxT & draw
    candidates_BxT = candidates_BxT & (weights_BxT > 0)
    k = jnp.floor(mlm_probability * candidates_BxT.sum() + 0.5).astype(jnp.int32)
    gumbel = jax.random.gumbel(rng, candidates_BxT.shape)
    keys = jnp.where(
        candidates_BxT, jnp.log(jnp.where(candidates_BxT, weights_BxT, 1.0)) + gumbel, -jnp.inf
    )
    order = jnp.argsort(-keys.reshape(-1))
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return (rank.reshape(keys.shape) < k) & candidates_BxT


def mask_tokens(
    rng,
    input_ids,
    attention_mask,
    *,
    special_ids,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    token_weights=None,
):
    """BERT corruption: returns ``(masked_input_ids, labels)``, both [B,T] int32.

    ``labels`` holds the original id at selected positions and -100 elsewhere. Special tokens
    (``special_ids``, distinct ids) and padding (``attention_mask == 0``) are never selected.
    Of the selected: ``mask_prob`` -> [MASK], ``random_prob`` -> a uniform non-special id, the
    rest kept.
    """
    input_ids = jnp.asarray(input_ids, dtype=jnp.int32)
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)
    special_BxT = jnp.isin(input_ids, jnp.asarray(special_ids, dtype=jnp.int32))
    candidates_BxT = (jnp.asarray(attention_mask) > 0) & ~special_BxT
    weights_BxT = None if token_weights is None else jnp.asarray(token_weights)[input_ids]
    selected_BxT = select_positions(select_rng, candidates_BxT, mlm_probability, weights_BxT)

    u_BxT = jax.random.uniform(action_rng, input_ids.shape)
    to_mask = selected_BxT & (u_BxT < mask_prob)
    to_random = selected_BxT & (u_BxT >= mask_prob) & (u_BxT < mask_prob + random_prob)
    random_ids = _random_non_special(random_rng, input_ids.shape, special_ids, vocab_size)
    masked = jnp.where(to_mask, jnp.int32(mask_token_id), input_ids)
    masked = jnp.where(to_random, random_ids, masked)
    labels = jnp.where(selected_BxT, input_ids, IGNORE_INDEX)
    return masked, labels
