"""Every family through the one engine: a student sliced from a tiny random teacher of each
family, distilled for a few steps on one task batch (KD on logits + the cosine of the last hidden
states + the hard loss) and, where the family has an MLM head, a general-distillation step."""

import jax
import numpy as np
import pytest

from flaxdistil import derive_student, sharding, train
from flaxdistil.hf import load_pretrained
from flaxdistil.models import FAMILY_HEADS, Model
from flaxdistil.objective import Match, Objective, hparams

from .test_families import CASES, _batch

pytest.importorskip("torch")
WEIGHTS = {"temperature": 2.0, "hard_label_weight": 1.0, "kd_loss_weight": 1.0}


def _distil(teacher, head, obj, batch, steps=6):
    student, s_cfg, _ = derive_student(teacher.params, teacher.config, layers=[0, 2])
    tx = train.make_optimizer(learning_rate=3e-3, total_steps=steps)
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    step = train.jit_train_step(obj, Model(s_cfg, head), teacher.model, tx, mesh, rep, rep)
    state = jax.device_put(train.create_state(student, tx), rep)
    hp, seen = hparams(WEIGHTS, obj), []
    for i in range(steps):
        state, m = step(state, teacher.params, batch, jax.random.key(i), hp, None)
        seen.append({k: float(v) for k, v in m.items()})
    return seen


@pytest.mark.parametrize("family", [f for f in CASES if f != "electra-square"])
def test_task_distillation_per_family(family, make_hf_model, tmp_path):
    make_hf_model(family, "seq_cls", **CASES[family]).save_pretrained(tmp_path / "t")
    teacher = load_pretrained(tmp_path / "t", head="seq_cls")
    ids, mask, types = _batch(_hf_config(tmp_path))
    labels = np.array([0, 2, 1], np.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if types is not None:
        batch["token_type_ids"] = types
    cos = Match(layer_T=3, layer_S=2, feature="hidden", loss="cos")
    obj = Objective(task="classification", use_kd=True, kd_loss_type="kl_t2", matches=(cos,))
    seen = _distil(teacher, "seq_cls", obj, batch)
    assert all(np.isfinite(v) for m in seen for v in m.values())
    assert seen[0]["loss_kd"] > 0 and seen[0][cos.key(0)] > 0
    assert seen[-1]["loss"] < seen[0]["loss"], [m["loss"] for m in seen]


@pytest.mark.parametrize("family", [f for f in CASES if "mlm" in FAMILY_HEADS.get(f, ())])
def test_general_distillation_per_family(family, make_hf_model, tmp_path):
    make_hf_model(family, "mlm", **CASES[family]).save_pretrained(tmp_path / "t")
    teacher = load_pretrained(tmp_path / "t", head="mlm")
    ids, mask, _ = _batch(_hf_config(tmp_path))
    cos = Match(layer_T=3, layer_S=2, feature="hidden", loss="cos")
    specials = tuple(range(6))  # _batch draws ids >= 6
    obj = Objective(task="mlm", use_kd=True, matches=(cos,), mlm_probability=0.3,
                    mask_token_id=3, vocab_size=teacher.config.vocab_size,
                    special_ids=specials)  # fmt: skip
    seen = _distil(teacher, "mlm", obj, {"input_ids": ids, "attention_mask": mask})
    assert all(np.isfinite(v) for m in seen for v in m.values())
    assert seen[0]["masked_tokens"] > 0 and seen[-1]["loss"] < seen[0]["loss"]


def _hf_config(tmp_path):
    import transformers

    return transformers.AutoConfig.from_pretrained(tmp_path / "t")
