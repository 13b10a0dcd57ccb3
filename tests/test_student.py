"""Students by slicing: layer selection, exactness against the teacher, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import (
    ModelConfig,
    count_params,
    derive_student,
    format_param_table,
    init_student,
    param_table,
    student_config,
)
from flaxdistil.models import Model, init_params
from flaxdistil.student import select_layers

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)


@pytest.fixture(scope="module")
def teacher():
    return init_student(CFG, "mlm", jax.random.key(0))


def _ids():
    rng = np.random.RandomState(0)
    ids = rng.randint(5, 64, (2, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def test_select_layers():
    assert select_layers(12, "every_other", None) == [0, 2, 4, 6, 8, 10]
    assert select_layers(12, [0, 2, 4, 7, 9, 11], None) == [0, 2, 4, 7, 9, 11]
    assert select_layers(6, "first", 3) == [0, 1, 2]
    assert select_layers(6, "last", 2) == [4, 5]
    assert select_layers(12, "uniform", 4) == [0, 4, 7, 11]
    for bad in ([0, 12], [1, 1], []):
        with pytest.raises(ValueError, match="distinct indices"):
            select_layers(12, bad, None)
    with pytest.raises(ValueError, match="unknown layer selection"):
        select_layers(12, "odd", None)


def test_all_layers_reproduces_teacher(teacher):
    student, cfg, ids = derive_student(teacher, CFG, layers=list(range(4)))
    assert ids == [0, 1, 2, 3] and cfg == CFG
    ids_, mask = _ids()
    t, _ = Model(CFG, "mlm").apply({"params": teacher}, ids_, mask)
    s, _ = Model(cfg, "mlm").apply({"params": student}, ids_, mask)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(t))


def test_every_other_layer_is_teacher_layer_2i(teacher):
    student, cfg, ids = derive_student(teacher, CFG)
    assert cfg.num_hidden_layers == 2 and ids == [0, 2]
    for path, leaf in jax.tree_util.tree_flatten_with_path(student["encoder"]["layer"])[0]:
        t_leaf = teacher["encoder"]["layer"]
        for k in path:
            t_leaf = t_leaf[k.key]
        for i in range(2):
            np.testing.assert_array_equal(leaf[i], t_leaf[2 * i])
    # Count equals a freshly initialised model of the student's config.
    fresh = init_student(cfg, "mlm", jax.random.key(1))
    assert count_params(student) == count_params(fresh)
    assert jax.tree.map(np.shape, student) == jax.tree.map(np.shape, fresh)


def test_student_hidden_state_matches_teacher_prefix(teacher):
    """A first-k student computes exactly the teacher's k-th hidden state."""
    student, cfg, _ = derive_student(teacher, CFG, layers="first", num_layers=2)
    ids, mask = _ids()
    _, t_aux = Model(CFG, "mlm").apply({"params": teacher}, ids, mask, output_hidden_states=True)
    _, s_aux = Model(cfg, "mlm").apply({"params": student}, ids, mask, output_hidden_states=True)
    np.testing.assert_allclose(s_aux["hidden_states"][2], t_aux["hidden_states"][2], atol=1e-6)


def test_distilbert_style_folds_token_types(teacher):
    """Dropping token types folds type-0 into positions: single-segment inputs embed the same."""
    cfg_p = CFG.replace(add_pooler=True)
    params = init_student(cfg_p, None, jax.random.key(2))
    student, cfg, _ = derive_student(params, cfg_p, layers=[0, 1, 2, 3], distilbert_style=True)
    assert cfg.model_type == "distilbert" and cfg.type_vocab_size == 0 and not cfg.add_pooler
    assert "pooler" not in student["encoder"]
    assert "token_type_embeddings" not in student["encoder"]["embeddings"]
    ids, mask = _ids()
    _, t = Model(cfg_p, None).apply({"params": params}, ids, mask)
    _, s = Model(cfg, None).apply({"params": student}, ids, mask)
    m = mask.astype(bool)
    np.testing.assert_allclose(s["last_hidden_state"][m], t["last_hidden_state"][m], atol=1e-5)
    assert count_params(student) == count_params(init_student(cfg, None, jax.random.key(3)))


def test_drop_head(teacher):
    student, _, _ = derive_student(teacher, CFG, keep_head=False)
    assert set(student) == {"encoder"}


def test_presets_and_param_table():
    cfg = student_config(CFG.replace(vocab_size=30522), "T4-tiny")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (4, 312, 1200)
    with pytest.raises(ValueError, match="unknown student preset"):
        student_config(CFG, "T99")
    params = jax.eval_shape(lambda: init_params(CFG, "mlm", jax.random.key(0)))
    rows = param_table(params, depth=2)
    # Hand count: word 64*32 + pos 32*32 + type 2*32 + LN 2*32 per embeddings.
    emb = dict((r[0], r[1]) for r in rows)["encoder/embeddings"]
    assert emb == 64 * 32 + 32 * 32 + 2 * 32 + 2 * 32
    layer = 4 * (32 * 32 + 32) + 2 * 32 + 32 * 48 + 48 + 48 * 32 + 32 + 2 * 32
    assert dict((r[0], r[1]) for r in rows)["encoder/layer"] == 4 * layer
    assert rows[-1][0] == "total" and rows[-1][1] == sum(r[1] for r in rows[:-1])
    assert rows[-1][2] == pytest.approx(rows[-1][1] * 4 / 2**20)
    assert "total" in format_param_table(params)


def test_bf16_teacher_params_slice(teacher):
    half = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), teacher)
    student, _, _ = derive_student(half, CFG)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(student))
