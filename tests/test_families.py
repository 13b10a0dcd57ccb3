"""The families beyond BERT/RoBERTa/DistilBERT against transformers' PyTorch models: XLM-R and
CamemBERT (RoBERTa underneath, their own model_type), ELECTRA (factorised embeddings, its own
heads), ALBERT (one shared layer), XLNet (relative attention), DeBERTa-v2/v3 (disentangled
attention; more of its variants in test_deberta.py); DistilRoBERTa; a
multilingual-BERT-sized vocabulary.

Every family x head: every hidden state, attention and the logits within 1e-5 of transformers in
float32 (padded on the side the family's tokenizer pads: the right, XLNet the left), the export
reloaded by the family's own transformers class bit-exact, students by slicing equal to the
teacher's layers.
"""

import json

import jax
import numpy as np
import pytest

from flaxdistil import derive_student
from flaxdistil.hf import load_pretrained, save_pretrained
from flaxdistil.hf_table import AUTO_CLASSES
from flaxdistil.models import (
    FAMILY_HEADS,
    Model,
    ModelConfig,
    inference_fn,
    init_params,
    unstack_layers,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
# Odd widths (head dim 9, FFN 37, embeddings 20) and a different activation per family.
CASES = {
    "xlm-roberta": dict(hidden_size=36, intermediate_size=37, hidden_act="gelu"),
    "camembert": dict(hidden_size=36, intermediate_size=37, hidden_act="silu"),
    # ELECTRA's classification and generator heads use gelu whatever hidden_act says.
    "electra": dict(hidden_size=36, intermediate_size=37, embedding_size=20, hidden_act="gelu_new"),
    "albert": dict(hidden_size=36, intermediate_size=37, embedding_size=20, hidden_act="relu"),
    "xlnet": dict(hidden_size=36, intermediate_size=37, hidden_act="gelu_new"),
    # DeBERTa-v3's layout: no absolute positions or token types, shared attention keys,
    # LayerNorm'ed relative embeddings, 4 buckets (< the 11 tokens); variants in test_deberta.py.
    "deberta-v2": dict(hidden_size=36, intermediate_size=37, hidden_act="gelu",
                       relative_attention=True, position_buckets=4, pos_att_type="p2c|c2p",
                       share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                       type_vocab_size=0, layer_norm_eps=1e-7),
}  # fmt: skip
PAIRS = [(f, h) for f in CASES for h in FAMILY_HEADS[f]]
CONFIG_FIELDS = {  # that survive the round trip, in each family's own names
    "bert": ["hidden_size", "intermediate_size", "hidden_act", "vocab_size", "pad_token_id",
             "type_vocab_size", "layer_norm_eps", "num_hidden_layers", "hidden_dropout_prob",
             "attention_probs_dropout_prob", "max_position_embeddings", "num_labels"],
    "xlnet": ["d_model", "n_layer", "n_head", "d_inner", "ff_activation", "vocab_size",
              "pad_token_id", "layer_norm_eps", "dropout", "summary_last_dropout", "summary_type",
              "summary_use_proj", "summary_activation", "attn_type", "num_labels"],
}  # fmt: skip
# ELECTRA with embedding_size == hidden_size (its large models): no embeddings_project.
PAIRS += [("electra-square", h) for h in (None, "seq_cls")]
CASES["electra-square"] = dict(CASES["electra"], embedding_size=36)


def _batch(hf_config, B=3, T=11):
    """Ids avoiding special tokens, rows of lengths T, 7, 4 padded with the family's pad on its
    tokenizer's side (XLNet's: the left)."""
    rng = np.random.RandomState(0)
    ids = rng.randint(6, hf_config.vocab_size, (B, T))
    mask = (np.arange(T)[None] < np.array([T, 7, 4])[:, None]).astype(np.int64)
    if hf_config.model_type == "xlnet":
        mask = mask[:, ::-1].copy()
    ids = np.where(mask, ids, hf_config.pad_token_id)
    types = None
    if getattr(hf_config, "type_vocab_size", 2) > 1:  # XLNet compares segments: give them
        types = (rng.rand(B, T) < 0.5).astype(np.int64) * mask
    return ids, mask, types


def _torch_forward(model, ids, mask, types):
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if types is not None:
        kw["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return model(**kw, output_hidden_states=True, output_attentions=True)


def _torch_logits(out, head):
    if head == "qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    if head == "albert_pretraining":
        return {"mlm": out.prediction_logits.numpy(), "sop": out.sop_logits.numpy()}
    return out.logits.numpy()


def _max_abs(ours, theirs) -> float:
    """Over every array of a (possibly dict of) logits: ALBERT's pretraining head has two."""
    diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), ours, theirs)
    return max(jax.tree.leaves(diffs))


def _ours(pre, ids, mask, types, **kw):
    return pre.model.apply(
        {"params": pre.params},
        ids,
        mask,
        types,
        output_hidden_states=True,
        output_attentions=True,
        **kw,
    )


def _max_diffs(logits, aux, theirs, head) -> dict:
    """Max abs differences over every position, padding included."""
    d = {
        "hidden_states": max(
            float(np.abs(np.asarray(h) - t.numpy()).max())
            for h, t in zip(aux["hidden_states"], theirs.hidden_states, strict=True)
        ),
        "attentions": max(
            float(np.abs(np.asarray(a) - t.numpy()).max())
            for a, t in zip(aux["attentions"], theirs.attentions, strict=True)
        ),
    }
    if head is not None:
        d["logits"] = _max_abs(logits, _torch_logits(theirs, head))
    if "pooled" in aux and getattr(theirs, "pooler_output", None) is not None:
        d["pooled"] = float(np.abs(np.asarray(aux["pooled"]) - theirs.pooler_output.numpy()).max())
    return d


def _assert_same_model(a, b):
    """Identical key sets and bit-identical tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, differ


def _reload(out, head):
    auto = getattr(transformers, AUTO_CLASSES[head])
    back, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    return back.eval()


@pytest.mark.parametrize(("case", "head"), PAIRS)
def test_vs_transformers_and_back(case, head, make_hf_model, tmp_path, parity_report):
    family = case.removesuffix("-square")
    hf = make_hf_model(family, head, **CASES[case])
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head=head)
    assert pre.config.model_type == family
    assert pre.report.new_init == [] and pre.report.unused == []
    ids, mask, types = _batch(hf.config)
    logits, aux = _ours(pre, ids, mask, types)
    theirs = _torch_forward(hf, ids, mask, types)
    assert aux["hidden_states"].shape == (4, 3, 11, 36)
    if head is not None:
        shapes = lambda tree: jax.tree.map(np.shape, tree)
        assert shapes(logits) == shapes(_torch_logits(theirs, head))
    diffs = _max_diffs(logits, aux, theirs, head)
    print(f"\n{case}/{head}: {diffs}")
    parity_report[f"tiny/{case}/{head}"] = diffs
    assert max(diffs.values()) <= TOL, diffs

    out = save_pretrained(tmp_path / "out", pre.params, pre.config, head)
    back = _reload(out, head)
    assert type(back) is type(hf)  # XLMRobertaForMaskedLM, not RobertaForMaskedLM
    _assert_same_model(hf, back)
    a, b = _torch_forward(hf, ids, mask, types), _torch_forward(back, ids, mask, types)
    for k in a:
        pairs = zip(a[k], b[k], strict=True) if isinstance(a[k], tuple) else [(a[k], b[k])]
        assert all(torch.equal(x, y) for x, y in pairs), k
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == family
    assert saved["architectures"] == [type(hf).__name__]
    for field in CONFIG_FIELDS.get(family, CONFIG_FIELDS["bert"]):
        assert getattr(back.config, field) == getattr(hf.config, field), field
    if family in ("electra", "albert"):
        assert back.config.embedding_size == hf.config.embedding_size
    assert ModelConfig.from_hf(saved).replace(id2label=None) == pre.config.replace(id2label=None)


@pytest.mark.parametrize("family", CASES)
def test_students_by_slicing(family, make_hf_model, tmp_path):
    """A 2-layer student is the teacher's layers (ALBERT: its one shared layer applied twice),
    computes the teacher's hidden states up to its depth, and exports as the same family."""
    base = family.removesuffix("-square")
    head = "mlm" if "mlm" in FAMILY_HEADS[base] else "seq_cls"
    hf = make_hf_model(base, head, **CASES[family])
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head=head)
    t_layer = pre.params["encoder"]["layer"]

    student, cfg, ids = derive_student(pre.params, pre.config, layers=[0, 2])
    assert cfg.model_type == base and cfg.num_hidden_layers == 2
    assert cfg.embedding_size == pre.config.embedding_size
    s_layer = student["encoder"]["layer"]
    if base == "albert":
        assert ids == [0, 1]  # the depths an ALBERT student reproduces
        jax.tree.map(np.testing.assert_array_equal, s_layer, t_layer)
        assert jax.tree.leaves(s_layer)[0].shape[0] == 1
    else:
        assert ids == [0, 2]
        jax.tree.map(
            lambda s, t: np.testing.assert_array_equal(s, t[np.array(ids)]), s_layer, t_layer
        )

    first, cfg1, _ = derive_student(pre.params, pre.config, layers="first", num_layers=2)
    ids_, mask, types = _batch(hf.config)
    _, t_aux = _ours(pre, ids_, mask, types)
    _, s_aux = Model(cfg1, head).apply(
        {"params": first}, ids_, mask, types, output_hidden_states=True
    )
    np.testing.assert_allclose(s_aux["hidden_states"], t_aux["hidden_states"][:3], atol=1e-6)

    out = save_pretrained(tmp_path / "student", student, cfg, head)
    back = _reload(out, head)
    assert type(back) is type(hf) and back.config.num_hidden_layers == 2
    ours, _ = Model(cfg, head).apply({"params": student}, ids_, mask, types)
    theirs = _torch_forward(back, ids_, mask, types).logits.numpy()
    assert np.abs(np.asarray(ours) - theirs).max() <= TOL


def test_distilroberta(make_hf_model, tmp_path):
    """DistilRoBERTa is a 6-layer RoBERTa: it loads, matches, and exports as a RoBERTa; so does
    every other layer of a 12-layer RoBERTa."""
    hf = make_hf_model("roberta", "mlm", num_hidden_layers=6)
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head="mlm")
    assert pre.config.num_hidden_layers == 6
    ids, mask, _ = _batch(hf.config)
    logits, aux = _ours(pre, ids, mask, None)
    assert max(_max_diffs(logits, aux, _torch_forward(hf, ids, mask, None), "mlm").values()) <= TOL
    _assert_same_model(hf, _reload(save_pretrained(tmp_path / "o", pre.params, pre.config), "mlm"))

    big = make_hf_model("roberta", "mlm", num_hidden_layers=12)
    big.save_pretrained(tmp_path / "big")
    teacher = load_pretrained(tmp_path / "big", head="mlm")
    params, cfg, ids_ = derive_student(teacher.params, teacher.config)
    assert ids_ == [0, 2, 4, 6, 8, 10] and cfg.model_type == "roberta"
    back = _reload(save_pretrained(tmp_path / "s", params, cfg), "mlm")
    assert type(back) is transformers.RobertaForMaskedLM and back.config.num_hidden_layers == 6


def test_multilingual_bert_vocab_and_gathered_mlm(make_hf_model, tmp_path):
    """mBERT's 119,547-token vocabulary; the gathered MLM head returns [N, V] for the N masked
    tokens only, equal to transformers' logits at those positions."""
    hf = make_hf_model("bert", "mlm", num_hidden_layers=2, vocab_size=119547)
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head="mlm")
    assert pre.config.vocab_size == 119547
    ids, mask, types = _batch(hf.config)
    ids[0, 0] = 119546  # the last row of the table
    flat = np.array([0, 3, 11 + 2, 11 + 6, 22 + 1])  # into the B*T tokens, real ones only
    logits, _ = pre.model.apply({"params": pre.params}, ids, mask, types, masked_positions=flat)
    assert logits.shape == (5, 119547)
    theirs = _torch_forward(hf, ids, mask, types).logits.numpy().reshape(-1, 119547)[flat]
    assert np.abs(np.asarray(logits) - theirs).max() <= TOL


def test_albert_layer_groups_are_refused():
    with pytest.raises(ValueError, match="num_hidden_groups=2, inner_group_num=1"):
        ModelConfig.from_hf({"model_type": "albert", "num_hidden_groups": 2, "hidden_size": 32})
    with pytest.raises(ValueError, match="inner_group_num=2"):
        ModelConfig.from_hf({"model_type": "albert", "inner_group_num": 2, "hidden_size": 32})


def test_family_heads_are_checked():
    cfg = ModelConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match="head 'electra_disc' does not exist for bert"):
        Model(cfg, "electra_disc").init(jax.random.key(0), np.ones((1, 4), np.int32))


@pytest.mark.parametrize(
    ("family", "head"),
    [
        ("albert", "seq_cls"),
        ("electra", "electra_disc"),
        ("xlnet", "qa"),
        ("deberta-v2", "seq_cls"),
    ],
)
@pytest.mark.parametrize("unroll", [True, False])
def test_inference_fn(family, head, unroll, make_hf_model, tmp_path):
    """inference_fn's per-layer params (ALBERT: layer_0 applied num_hidden_layers times) and the
    scanned ones give transformers' logits."""
    hf = make_hf_model(family, head, **CASES[family])
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head=head)
    fn, params = inference_fn(pre.config, head, pre.params, unroll_layers=unroll)
    n_layer_modules = sum(k.startswith("layer_") for k in params["encoder"])
    assert n_layer_modules == (pre.config.num_distinct_layers if unroll else 0)
    ids, mask, types = _batch(hf.config)
    ours = np.asarray(fn(params, ids, mask, types))
    theirs = _torch_logits(_torch_forward(hf, ids, mask, types), head)
    assert np.abs(ours - theirs).max() <= TOL


def test_config_errors():
    with pytest.raises(
        ValueError, match="embedding_size 16 != hidden_size 32 needs a model_type in"
    ):
        ModelConfig(hidden_size=32, num_attention_heads=4, embedding_size=16)
    cfg = ModelConfig(model_type="albert", vocab_size=99, hidden_size=32, num_attention_heads=4,
                      num_hidden_layers=1, embedding_size=16, add_pooler=False)  # fmt: skip
    with pytest.raises(ValueError, match="albert sequence classifier reads the pooler"):
        Model(cfg, "seq_cls").init(jax.random.key(0), np.ones((1, 4), np.int32))
    with pytest.raises(ValueError, match="albert sentence-order classifier reads the pooler"):
        Model(cfg, "albert_pretraining").init(jax.random.key(0), np.ones((1, 4), np.int32))


def test_xlnet_without_segments_and_refusals(make_hf_model, tmp_path):
    """token_type_ids=None drops XLNet's segment term, as in transformers; settings flaxdistil
    does not compute are named."""
    hf = make_hf_model("xlnet", None, **CASES["xlnet"])
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head=None)
    ids, mask, types = _batch(hf.config)
    _, aux = _ours(pre, ids, mask, None)
    diffs = _max_diffs(None, aux, _torch_forward(hf, ids, mask, None), None)
    assert max(diffs.values()) <= TOL, diffs
    for bad, shown in [
        ({"attn_type": "uni"}, "attn_type='uni'"),
        ({"clamp_len": 8}, "clamp_len=8"),
    ]:
        with pytest.raises(ValueError, match=shown):
            ModelConfig.from_hf({"model_type": "xlnet", "d_model": 32, "n_head": 4} | bad)


def test_albert_shared_layer_gradient():
    """The scanned shared layer's gradient sums its num_hidden_layers applications: equal to that
    of the unrolled model's one layer_0 module called three times."""
    cfg = ModelConfig(model_type="albert", vocab_size=99, hidden_size=36, num_hidden_layers=3,
                      num_attention_heads=4, intermediate_size=37, embedding_size=20,
                      max_position_embeddings=64)  # fmt: skip
    p = init_params(cfg, "mlm", jax.random.key(0))
    ids = np.random.RandomState(0).randint(0, 99, (2, 7))

    def loss(params, scan):
        logits, _ = Model(cfg, "mlm", scan_layers=scan).apply({"params": params}, ids)
        return jax.numpy.tanh(logits).sum()

    scanned = jax.jit(jax.grad(loss), static_argnums=1)(p, True)["encoder"]["layer"]
    unrolled = jax.jit(jax.grad(loss), static_argnums=1)(unstack_layers(p), False)
    pairs = zip(
        jax.tree_util.tree_flatten_with_path(scanned)[0],
        jax.tree.leaves(unrolled["encoder"]["layer_0"]),
        strict=True,
    )
    for (path, a), b in pairs:
        if jax.tree_util.keystr(path) != "['attention']['key']['bias']":  # softmax ignores it
            np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7, err_msg=str(path))
