"""The composed loss: intermediate matches (parsing, checks, presets against TextBrewer's own
example match sets), projections (trained, checkpointed bit-exactly), traced schedulers (no
recompilation, values by hand) and matches given on the command line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import init_student, matches, objective, sharding, train
from flaxdistil.checkpoint import Checkpointer
from flaxdistil.models import Model, ModelConfig
from flaxdistil.objective import Match, Objective

from .test_train import CFG

TEACHER = CFG  # vocab 64, hidden 32, 4 layers, 4 heads, no dropout
STUDENT = TEACHER.replace(hidden_size=16, num_hidden_layers=2, intermediate_size=24)
MLM = dict(mlm_probability=0.3, mask_token_id=4, vocab_size=64, special_ids=(0, 1, 2, 3, 4))
BERT12 = ModelConfig(num_hidden_layers=12, hidden_size=768)


def _batch(seed=0, B=4, T=12):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, 64, (B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:], mask[3, 4:] = 0, 0
    return {"input_ids": ids * mask, "attention_mask": mask}


# ---------------------------------------------------------------- parsing and checks


def test_presets_reproduce_textbrewer_example_match_sets():
    """TextBrewer's examples/matches/matches.py, copied literally, against what the names give
    for a 12-layer, 768-wide teacher."""
    L3n_hidden_mse = [  # noqa: N806 - TextBrewer's name
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 384, 768]}
        for t, s in ((0, 0), (4, 1), (8, 2), (12, 3))
    ]  # fmt: skip
    L4_hidden_smmd = [  # noqa: N806
        {"layer_T": [t, t], "layer_S": [s, s], "feature": "hidden", "loss": "mmd", "weight": 1}
        for t, s in ((0, 0), (3, 1), (6, 2), (9, 3), (12, 4))
    ]
    L4_attention_mse = [  # noqa: N806
        {"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
        for t, s in ((3, 1), (6, 2), (9, 3), (12, 4))
    ]
    t3small = BERT12.replace(num_hidden_layers=3, hidden_size=384)
    t4 = BERT12.replace(num_hidden_layers=4)
    got = matches.resolve_preset("L3n_hidden_mse", t3small, BERT12)["intermediate_matches"]
    assert got == L3n_hidden_mse
    assert matches.resolve_preset("L4_hidden_smmd", t4, BERT12)["intermediate_matches"] == (
        L4_hidden_smmd
    )
    got = matches.resolve_preset("L4_attention_mse", t4, BERT12)["intermediate_matches"]
    assert got == L4_attention_mse
    with pytest.raises(ValueError, match="3-layer student; this student has 4"):
        matches.resolve_preset("L3_hidden_mse", t4, BERT12)


def test_tinybert_and_distilbert_presets():
    tiny = matches.resolve_preset("tinybert", STUDENT, TEACHER)
    parsed = matches.parse_matches(tiny["intermediate_matches"], STUDENT, TEACHER)
    att = [(m.layer_S, m.layer_T) for m in parsed if m.feature == "attention"]
    hid = [(m.layer_S, m.layer_T, m.proj) for m in parsed if m.feature == "hidden"]
    assert att == [(1, 2), (2, 4)]  # student layer i <- teacher layer k*i, k = 2
    assert hid == [(i, 2 * i, ("linear", 16, 32)) for i in range(3)]  # widths differ: projections
    assert (tiny["kd_loss_type"], tiny["temperature"]) == ("ce", 1.0)
    d = matches.resolve_preset("distilbert", STUDENT, TEACHER)
    assert (d["temperature"], d["kd_loss_weight"], d["hard_label_weight"]) == (2.0, 5.0, 2.0)
    (cos,) = matches.parse_matches(d["intermediate_matches"], TEACHER.replace(num_hidden_layers=2),
                                   TEACHER)  # fmt: skip
    assert (cos.layer_S, cos.layer_T, cos.loss) == (2, 4, "cos")  # -1 = the last hidden state


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse"},
         "needs equal widths: student 16, teacher 32"),
        ({"layer_T": 5, "layer_S": 2, "feature": "hidden", "loss": "mmd"}, "layer_T=5"),
        ({"layer_T": 0, "layer_S": 1, "feature": "attention", "loss": "attention_mse"},
         "layer_T=0"),
        ({"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "nope"}, "unknown loss 'nope'"),
        ({"layer_T": 1, "layer_S": 1, "feature": "hiden", "loss": "cos"}, "unknown feature"),
        ({"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "cos", "lyer": 1},
         "unknown keys ['lyer']"),
        ({"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "cos",
          "proj": ["linear", 16, 64]}, "does not fit student hidden size 16 -> teacher hidden"),
    ],
)  # fmt: skip
def test_match_mistakes_fail_before_training(raw, message):
    with pytest.raises(ValueError, match="match 0") as e:
        matches.parse_matches([raw], STUDENT, TEACHER)
    assert message in str(e.value)


def test_heads_must_agree_for_per_head_attention_losses():
    odd = STUDENT.replace(num_attention_heads=2)
    raw = {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse"}
    with pytest.raises(ValueError, match="student has 2 heads, teacher 4"):
        matches.parse_matches([raw], odd, TEACHER)
    summed = dict(raw, loss="attention_mse_sum")  # summed over heads: any head counts
    assert matches.parse_matches([summed], odd, TEACHER)[0].layer_T == 2


def test_matches_from_the_command_line(tmp_path):
    from flaxdistil import runner

    cfg = runner.load_config("configs/tiny.py")
    runner.apply_override(
        cfg,
        "distill.intermediate_matches",
        "[{'layer_T': [0, 0], 'layer_S': [0, 0], 'feature': 'hidden', 'loss': 'nst', "
        "'weight': 0.5}, {'layer_T': 4, 'layer_S': 2, 'feature': 'hidden', 'loss': "
        "'hidden_mse', 'weight': 1, 'proj': ['tanh', 16, 32, {'learning_rate': 0.01}]}]",
    )
    parsed = matches.parse_matches(cfg.distill.intermediate_matches, STUDENT, TEACHER)
    assert parsed[0] == Match((0, 0), (0, 0), "hidden", "nst", 0.5)
    assert parsed[1].proj == ("tanh", 16, 32) and parsed[1].proj_lr == 0.01


# ---------------------------------------------------------------- projections in the step


@pytest.fixture(scope="module")
def engine():
    """A 2 x 16 random student, a 4 x 32 teacher, hidden_mse through a projection + attention
    scores summed over heads + KD, one compiled step."""
    t_params = init_student(TEACHER, "mlm", jax.random.key(0))
    s_params = init_student(STUDENT, "mlm", jax.random.key(1))
    raw = [
        {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 3.0,
         "proj": ["linear", 16, 32, {"learning_rate": 0.05}]},
        {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse_sum"},
    ]  # fmt: skip
    obj = Objective(
        task="mlm",
        use_kd=True,
        kd_loss_type="ce",
        matches=matches.parse_matches(raw, STUDENT, TEACHER),
        kd_loss_weight_scheduler="linear_decay",
        total_steps=10,
        **MLM,
    )
    proj_lrs = {"m0": 0.05}
    tx = train.make_optimizer(learning_rate=1e-3, total_steps=10, proj_lrs=proj_lrs)
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    step = train.jit_train_step(obj, Model(STUDENT, "mlm"), Model(TEACHER, "mlm"), tx, mesh, rep,
                                rep)  # fmt: skip
    proj = objective.init_projections(obj, jax.random.key(2))
    # The step donates its state: each test takes a fresh copy.
    s_params, proj = jax.device_get((s_params, proj))  # host copies: never donated
    fresh = lambda: jax.device_put(train.create_state(s_params, tx, proj), rep)
    return obj, step, fresh, t_params


def test_projection_trains_and_the_total_is_the_weighted_sum(engine):
    obj, step, fresh, t_params = engine
    state = fresh()
    hp = objective.hparams({"temperature": 2.0, "hard_label_weight": 1.5, "kd_loss_weight": 4.0},
                           obj)  # fmt: skip
    before = jax.tree.map(np.array, jax.device_get(state.proj))
    assert before["m0"]["kernel"].shape == (16, 32)
    new, m = step(state, t_params, _batch(), jax.random.key(0), hp, None)
    after = jax.device_get(new.proj)
    assert np.abs(after["m0"]["kernel"] - before["m0"]["kernel"]).max() > 1e-3  # it learns
    m = jax.device_get(m)
    k0, k1 = (obj.matches[i].key(i) for i in (0, 1))
    # kd weight 4 scaled by linear_decay at progress 0/10; match weights 3 and 1
    assert float(m["kd_loss_weight"]) == pytest.approx(4.0)
    want = 1.5 * m["loss_hard"] + 4.0 * m["loss_kd"] + 3.0 * m[k0] + 1.0 * m[k1]
    assert float(m["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in (m[k0], m[k1], m["loss_kd"]))


def test_schedulers_are_traced_and_logged(engine):
    """New temperatures and weights, and a step later in the schedule: no recompilation."""
    obj, step, fresh, t_params = engine
    seen, sizes = [], []
    for i, (temp, kd) in enumerate([(2.0, 4.0), (5.0, 1.0), (1.0, 8.0)]):
        s = fresh().replace(step=jnp.int32(3 * i))
        hp = objective.hparams({"temperature": temp, "hard_label_weight": 1.0,
                                "kd_loss_weight": kd}, obj)  # fmt: skip
        _, m = step(s, t_params, _batch(), jax.random.key(0), hp, None)
        seen.append((float(m["temperature"]), float(m["kd_loss_weight"])))
        sizes.append(step._cache_size())
    assert sizes[1] == sizes[2] == sizes[0]  # compiled at most once, for the first call
    # linear_decay: weight x (1 - step / total_steps), steps 0, 3, 6 of 10
    np.testing.assert_allclose(seen, [(2.0, 4.0), (5.0, 0.7), (1.0, 8.0 * 0.4)], rtol=1e-6)


def test_projections_survive_checkpoint_and_resume_bit_exactly(engine, tmp_path):
    obj, step, fresh, t_params = engine
    hp = objective.hparams({"temperature": 2.0, "hard_label_weight": 1.0, "kd_loss_weight": 1.0},
                           obj)  # fmt: skip
    state, _ = step(fresh(), t_params, _batch(1), jax.random.key(0), hp, None)
    state, _ = step(state, t_params, _batch(1), jax.random.key(0), hp, None)
    ckpt = Checkpointer(tmp_path / "ck", every=0)
    ckpt.save(1, state, {"data": 1}, force=True)
    template = jax.tree.map(jnp.zeros_like, state)
    restored, pos = ckpt.restore(template)
    assert pos == {"data": 1}
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the next step from the restored state equals the next step from the live one
    a, ma = step(state, t_params, _batch(2), jax.random.key(0), hp, None)
    b, mb = step(jax.device_put(restored), t_params, _batch(2), jax.random.key(0), hp, None)
    np.testing.assert_array_equal(np.asarray(a.proj["m0"]["kernel"]),
                                  np.asarray(b.proj["m0"]["kernel"]))  # fmt: skip
    assert float(ma["loss"]) == float(mb["loss"])


def test_minilm_presets_run_in_the_step():
    """MiniLM's attention + value relations read the q/k/v and scores features through the
    same step; MiniLMv2's 12 relation heads must divide both widths."""
    with pytest.raises(ValueError, match="width 16 is not a multiple of num_relation_heads 12"):
        matches.parse_matches(
            matches.resolve_preset("minilmv2", STUDENT, TEACHER)["intermediate_matches"],
            STUDENT,
            TEACHER,
        )
    raw = matches.resolve_preset("minilm", STUDENT, TEACHER)["intermediate_matches"]
    obj = Objective(task="mlm", use_hard=False, matches=matches.parse_matches(raw, STUDENT,
                    TEACHER), **MLM)  # fmt: skip
    assert obj.outputs == {"output_hidden_states": False, "output_attentions": "scores",
                                "output_qkv": True}  # fmt: skip
    t_params = init_student(TEACHER, "mlm", jax.random.key(0))
    s_params = init_student(STUDENT, "mlm", jax.random.key(1))
    tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
    hp = objective.hparams({"temperature": 1.0, "hard_label_weight": 0.0, "kd_loss_weight": 0.0},
                           obj)  # fmt: skip
    step = jax.jit(
        lambda s, b: train.train_step(
            s, t_params, b, jax.random.key(0), hp, student=Model(STUDENT, "mlm"),
            teacher=Model(TEACHER, "mlm"), obj=obj, tx=tx,
        )
    )  # fmt: skip
    _, m = step(train.create_state(s_params, tx), _batch())
    terms = [obj.matches[i].key(i) for i in range(2)]
    assert all(np.isfinite(float(m[k])) and float(m[k]) > 0 for k in terms)
    assert float(m["loss"]) == pytest.approx(float(m[terms[0]] + m[terms[1]]), rel=1e-5)


@pytest.mark.parametrize("arm, kd, cos", [(None, True, 1), ("mlm_only", False, 0)])
def test_antiberty_arms_resolve_to_the_triple_loss_and_mlm_alone(arm, kd, cos):
    """configs/antiberty_l4.py (make results-antiberty): the default arm is DistilBERT's triple
    loss (KD on the logits, MLM, one cosine match), 'mlm_only' the masked-token loss alone."""
    from types import SimpleNamespace

    from configs import antiberty_l4
    from flaxdistil.jobs.common import build_objective
    from flaxdistil.teachers import Teacher

    teacher = Teacher(pre=SimpleNamespace(config=TEACHER), path="antiberty")
    tok = SimpleNamespace(mask_token_id=4, all_special_ids=[0, 1, 2, 3, 4])
    student = TEACHER.replace(num_hidden_layers=2)
    obj, hp = build_objective(antiberty_l4.get_config(arm), "mlm", student, [teacher], tok, 60)
    assert (obj.use_kd, obj.use_hard, len(obj.matches)) == (kd, True, cos)
    assert all(m.loss == "cos" for m in obj.matches)
