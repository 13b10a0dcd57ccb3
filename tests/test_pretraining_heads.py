"""The pretraining heads against transformers in float32: XLNetLMHeadModel ('xlnet_lm') with
XLNet pretraining's perm_mask and target_mapping (the two-stream attention) and with mems (the
previous segment's memories), ALBERT's AlbertForPreTraining ('albert_pretraining': MLM and
sentence-order logits). Plain forwards, loading and the bit-exact export round trip of both heads
run in test_families.py with every other (family, head) pair."""

import jax
import numpy as np
import pytest

from flaxdistil.hf import load_pretrained, save_pretrained
from flaxdistil.models import Model, ModelConfig, inference_fn, unstack_layers, xlnet

from .test_families import CASES, TOL, _batch, _reload

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _pretraining_inputs(T, B=3, M=4, seed=1):
    """XLNet pretraining's inputs: per row a random factorisation order (perm_mask[b, i, j] = 1:
    i may not see j, i.e. j comes at or after i in the order) and M targets one-hot over T."""
    rng = np.random.RandomState(seed)
    perm = np.zeros((B, T, T), np.float32)
    target = np.zeros((B, M, T), np.float32)
    for b in range(B):
        rank = np.argsort(rng.permutation(T))
        perm[b] = rank[None, :] >= rank[:, None]
        target[b, np.arange(M), rng.choice(T, M, replace=False)] = 1
    return perm, target


@pytest.fixture(scope="module")
def xlnet_lm(make_hf_model, tmp_path_factory):
    hf = make_hf_model("xlnet", "xlnet_lm", **CASES["xlnet"])
    path = tmp_path_factory.mktemp("xlnet_lm")
    hf.save_pretrained(path)
    return hf, load_pretrained(path, head="xlnet_lm")


def _torch(hf, **kw):
    with torch.no_grad():
        return hf(**{k: None if v is None else torch.tensor(v) for k, v in kw.items()})


@pytest.mark.parametrize("inputs", ["perm_mask+target_mapping", "perm_mask", "target_mapping"])
def test_xlnet_lm_two_streams(inputs, xlnet_lm, parity_report):
    """With target_mapping the logits are the query stream's at the M targets ([B, M, V]); with
    perm_mask alone the content stream's under the permuted mask. Padded on the left, segments."""
    hf, pre = xlnet_lm
    ids, mask, types = _batch(hf.config)
    perm, target = _pretraining_inputs(ids.shape[1])
    kw = {"perm_mask": perm, "target_mapping": target}
    kw = {k: v for k, v in kw.items() if k in inputs.split("+")}
    theirs = _torch(hf, input_ids=ids, attention_mask=mask, token_type_ids=types, **kw)
    logits, aux = pre.model.apply({"params": pre.params}, ids, mask, types, **kw)
    assert logits.shape == theirs.logits.shape
    diff = float(np.abs(np.asarray(logits) - theirs.logits.numpy()).max())
    print(f"\nxlnet_lm/{inputs}: {diff}")
    parity_report[f"tiny/xlnet/xlnet_lm/{inputs}"] = {"logits": diff}
    assert diff <= TOL
    assert ("query_hidden_state" in aux) == ("target_mapping" in kw)


@pytest.mark.parametrize("unroll", [False, True])
def test_xlnet_lm_mems(unroll, xlnet_lm, parity_report):
    """new_mems gives transformers' mems (every layer's input; mem_len 512 keeps all 11), and a
    second segment that attends to them under perm_mask/target_mapping gives its logits, scanned
    and with per-layer params (the mems then go one to a layer)."""
    hf, pre = xlnet_lm
    ids, mask, types = _batch(hf.config)
    first = _torch(hf, input_ids=ids, attention_mask=mask, token_type_ids=types, use_mems=True)
    _, aux = pre.model.apply({"params": pre.params}, ids, mask, types, output_hidden_states=True)
    mems = xlnet.new_mems(aux["hidden_states"][:-1], None, hf.config.mem_len, hf.config.reuse_len)
    theirs_mems = torch.stack(first.mems).transpose(1, 2).numpy()  # [L, T, B, D] -> [L, B, T, D]
    assert mems.shape == theirs_mems.shape
    assert np.abs(np.asarray(mems) - theirs_mems).max() <= TOL

    nxt = np.random.RandomState(2).randint(6, hf.config.vocab_size, (3, 6))
    perm, target = _pretraining_inputs(6, M=2)
    kw = dict(perm_mask=perm, target_mapping=target)
    with torch.no_grad():
        second = hf(
            input_ids=torch.tensor(nxt),
            token_type_ids=torch.tensor(types[:, :6]),
            mems=list(first.mems),
            **{k: torch.tensor(v) for k, v in kw.items()},
        )
    params = unstack_layers(pre.params) if unroll else pre.params
    model = Model(pre.config, "xlnet_lm", scan_layers=not unroll)
    logits, _ = model.apply({"params": params}, nxt, None, types[:, :6], mems=mems, **kw)
    diff = float(np.abs(np.asarray(logits) - second.logits.numpy()).max())
    print(f"\nxlnet_lm/mems (unroll={unroll}): {diff}")
    parity_report[f"tiny/xlnet/xlnet_lm/mems/unroll={unroll}"] = {"logits": diff}
    assert diff <= TOL

    again = xlnet.new_mems(jax.numpy.zeros((3, 3, 6, 36)), mems, mem_len=8)
    assert again.shape[2] == 8  # the last 8: 2 old memories, then the 6 new states
    np.testing.assert_array_equal(again[:, :, :2], mems[:, :, -2:])
    assert xlnet.new_mems(aux["hidden_states"][:-1], reuse_len=4).shape[2] == 4


def test_albert_pretraining_masked_positions_and_inference(make_hf_model, tmp_path):
    """AlbertForPreTraining's two outputs from the MLM head gathered at masked positions and from
    inference_fn (per-layer params), as transformers computes them."""
    hf = make_hf_model("albert", "albert_pretraining", **CASES["albert"])
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head="albert_pretraining")
    ids, mask, types = _batch(hf.config)
    theirs = _torch(hf, input_ids=ids, attention_mask=mask, token_type_ids=types)
    positions = np.array([[0, 5], [1, 6], [2, 3]])
    logits, _ = pre.model.apply(
        {"params": pre.params}, ids, mask, types, masked_positions=positions
    )
    want = np.take_along_axis(theirs.prediction_logits.numpy(), positions[..., None], 1)
    assert np.abs(np.asarray(logits["mlm"]) - want).max() <= TOL
    fn, params = inference_fn(pre.config, "albert_pretraining", pre.params)
    out = fn(params, ids, mask, types)
    assert np.abs(np.asarray(out["sop"]) - theirs.sop_logits.numpy()).max() <= TOL
    assert np.abs(np.asarray(out["mlm"]) - theirs.prediction_logits.numpy()).max() <= TOL
    # Loaded as a masked LM, the sentence-order classifier is reported unused and left out.
    mlm = load_pretrained(tmp_path, head="mlm")
    assert {"sop_classifier.classifier.bias", "sop_classifier.classifier.weight"} <= set(
        mlm.report.unused
    )
    back = _reload(save_pretrained(tmp_path / "mlm", mlm.params, mlm.config, "mlm"), "mlm")
    assert type(back) is transformers.AlbertForMaskedLM


def test_xlnet_inputs_are_xlnet_only():
    cfg = ModelConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="perm_mask, target_mapping and mems are XLNet's"):
        Model(cfg, "mlm").init(jax.random.key(0), ids, perm_mask=np.zeros((1, 4, 4)))
