"""DeBERTa-v2/v3 variants against transformers' PyTorch DebertaV2 models (the v3 layout x every
head runs in test_families.py): absolute positions and token types, unshared position
projections, c2p or p2c alone, plain clamped distances, no relative attention, factorised
embeddings, both MLM head layouts; the log buckets against transformers' own function; gathered
MLM logits, bf16, remat, refusals, and what a released checkpoint carries beyond our heads.

Every variant: each hidden state, attention and the logits within 1e-5 in float32 on a padded
batch, the export reloaded bit-exact by DebertaV2's own classes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil.hf import load_pretrained, save_pretrained
from flaxdistil.models import Model, ModelConfig, deberta

from .test_families import (
    TOL,
    _assert_same_model,
    _batch,
    _max_diffs,
    _ours,
    _reload,
    _torch_forward,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mdv2 = transformers.models.deberta_v2.modeling_deberta_v2

BASE = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, relative_attention=True)
VARIANTS = {
    # DeBERTa-v2's layout: absolute positions too, segments, own pos_key/pos_query projections,
    # 6 buckets with distances up to 16 (the 11 tokens reach the log-spaced ones).
    "v2": dict(position_buckets=6, max_relative_positions=16, pos_att_type="c2p|p2c",
               position_biased_input=True, type_vocab_size=2, hidden_act="gelu_new"),
    # No buckets: distances clamped at +-5 (< the 11 tokens), no LayerNorm on the table.
    "clamped": dict(max_relative_positions=5, pos_att_type="p2c|c2p", share_att_key=True,
                    position_biased_input=False, type_vocab_size=0),
    "c2p": dict(position_buckets=4, pos_att_type="c2p", norm_rel_ebd="layer_norm",
                position_biased_input=False, type_vocab_size=0, num_hidden_layers=2),
    "p2c": dict(position_buckets=4, pos_att_type="p2c", norm_rel_ebd="layer_norm",
                position_biased_input=False, type_vocab_size=0, num_hidden_layers=2),
    # Narrower embeddings projected to hidden_size (embed_proj); the legacy MLM head decodes at 20.
    "factorised": dict(embedding_size=20, position_buckets=4, pos_att_type="p2c|c2p",
                       norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                       position_biased_input=False, num_hidden_layers=4),
    # Microsoft's MLM layout (lm_predictions.lm_head) rather than transformers' legacy one.
    "lm_predictions": dict(legacy=False, position_buckets=4, pos_att_type="p2c|c2p",
                           norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                           position_biased_input=False),
    "absolute_only": dict(relative_attention=False, pos_att_type="p2c|c2p", type_vocab_size=2),
}  # fmt: skip
# What transformers' modeling file falls back to for fields DebertaV2Config does not declare.
GETATTR_DEFAULTS = {"share_att_key": False, "position_buckets": -1, "norm_rel_ebd": "none"}
# The MLM head reads every hidden state; the bare model of each is in test_families' v3 case.
PAIRS = [(v, "mlm") for v in VARIANTS] + [("v2", h) for h in ("seq_cls", "token_cls", "qa")]


def _hf(make_hf_model, variant, head, tmp_path):
    hf = make_hf_model("deberta-v2", head, **(BASE | VARIANTS[variant]))
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_pretrained(tmp_path / "hf", head=head)


@pytest.mark.parametrize(("variant", "head"), PAIRS)
def test_variant_vs_transformers_and_back(variant, head, make_hf_model, tmp_path, parity_report):
    hf, pre = _hf(make_hf_model, variant, head, tmp_path)
    assert pre.report.new_init == [] and pre.report.unused == []
    ids, mask, types = _batch(hf.config)
    logits, aux = _ours(pre, ids, mask, types)
    diffs = _max_diffs(logits, aux, _torch_forward(hf, ids, mask, types), head)
    print(f"\ndeberta-v2 {variant}/{head}: {diffs}")
    parity_report[f"tiny/deberta-v2-{variant}/{head}"] = diffs
    assert max(diffs.values()) <= TOL, diffs

    out = save_pretrained(tmp_path / "out", pre.params, pre.config, head)
    back = _reload(out, head)
    assert type(back) is type(hf)
    _assert_same_model(hf, back)
    saved = json.loads((out / "config.json").read_text())
    for field in ("pos_att_type", "position_buckets", "max_relative_positions", "share_att_key",
                  "position_biased_input", "relative_attention", "norm_rel_ebd", "legacy",
                  "type_vocab_size", "layer_norm_eps"):  # fmt: skip
        value = lambda c, f=field: getattr(c, f, GETATTR_DEFAULTS.get(f))
        assert value(back.config) == value(hf.config), field
    assert ModelConfig.from_hf(saved).replace(id2label=None) == pre.config.replace(id2label=None)


def test_log_buckets_vs_transformers():
    """Our NumPy buckets equal transformers' torch ones, the released settings (256 buckets, 512
    positions) included, over distances far past max_position."""
    rel = np.arange(-1500, 1501)[None]
    for buckets, max_pos in [(4, 64), (6, 16), (32, 64), (256, 512), (256, 1024), (7, 9)]:
        theirs = mdv2.make_log_bucket_position(torch.tensor(rel), buckets, max_pos).numpy()
        np.testing.assert_array_equal(deberta.log_bucket(rel, buckets, max_pos), theirs)
    cfg = ModelConfig(model_type="deberta-v2", hidden_size=32, num_attention_heads=4,
                      position_buckets=256, max_relative_positions=-1)  # fmt: skip
    x = torch.zeros(1, 300, 8)
    theirs = mdv2.build_relative_position(x, x, bucket_size=256, max_position=512)[0].numpy()
    np.testing.assert_array_equal(deberta.relative_positions(cfg, 300), theirs)


def test_gathered_mlm_and_fused_request(make_hf_model, tmp_path):
    """masked_positions [B, P] and flat [N] give transformers' logits at those tokens;
    attention_impl='fused' runs the same einsum attention."""
    hf, pre = _hf(make_hf_model, "v2", "mlm", tmp_path)
    ids, mask, types = _batch(hf.config)
    theirs = _torch_forward(hf, ids, mask, types).logits.numpy()
    per_row = np.array([[0, 5, 10], [1, 2, 6], [0, 3, 3]])
    flat = np.array([0, 5, 11 + 6, 22 + 3])
    for pos, want in [
        (per_row, np.take_along_axis(theirs, per_row[..., None], 1)),
        (flat, theirs.reshape(-1, theirs.shape[-1])[flat]),
    ]:
        got, _ = pre.model.apply({"params": pre.params}, ids, mask, types, masked_positions=pos)
        assert got.shape == want.shape and np.abs(np.asarray(got) - want).max() <= TOL
    fused, _ = Model(pre.config, "mlm", attention_impl="fused").apply(
        {"params": pre.params}, ids, mask, types
    )
    assert np.abs(np.asarray(fused) - theirs).max() <= TOL


def test_bf16_and_remat(make_hf_model, tmp_path):
    """bf16 compute stays near transformers' float32 logits (bf16 keeps 8 bits of mantissa: 3e-2
    of logits of size ~1); remat policies give the gradient of the plain model."""
    hf, pre = _hf(make_hf_model, "v2", "seq_cls", tmp_path)
    ids, mask, types = _batch(hf.config)
    theirs = _torch_forward(hf, ids, mask, types).logits.numpy()
    bf16, _ = Model(pre.config, "seq_cls", jnp.bfloat16).apply(
        {"params": pre.params}, ids, mask, types
    )
    assert bf16.dtype == jnp.bfloat16
    assert np.abs(np.asarray(bf16, np.float32) - theirs).max() <= 3e-2 * max(
        1, np.abs(theirs).max()
    )

    def loss(params, remat):
        logits, _ = Model(pre.config, "seq_cls", remat=remat).apply(
            {"params": params}, ids, mask, types
        )
        return jnp.tanh(logits).sum()

    plain = jax.grad(loss)(pre.params, None)
    for policy in ("none", "dots"):
        remat = jax.grad(loss)(pre.params, policy)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     remat, plain)  # fmt: skip


def test_released_config_and_extra_keys(make_hf_model, tmp_path):
    """A config.json as Microsoft's DeBERTa-v3 ones are written (no type_vocab_size, legacy,
    pooler fields, pos_att_type as 'p2c|c2p') takes DebertaV2Config's defaults; without legacy,
    lm_predictions weights load as that head (transformers would re-initialise cls.predictions);
    the replaced-token detector and an unused position table are reported, not refused."""
    cfg = ModelConfig.from_hf({"model_type": "deberta-v2", "hidden_size": 768,
                               "num_attention_heads": 12, "relative_attention": True,
                               "pos_att_type": "p2c|c2p", "position_buckets": 256,
                               "norm_rel_ebd": "layer_norm", "share_att_key": True,
                               "position_biased_input": False})  # fmt: skip
    assert (cfg.pos_att_type, cfg.type_vocab_size, cfg.layer_norm_eps) == (("p2c", "c2p"), 0, 1e-7)
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.legacy) == (128100, 24, True)
    assert cfg.embedding_size is None and not cfg.add_pooler

    from safetensors.numpy import load_file, save_file

    hf, _ = _hf(make_hf_model, "lm_predictions", "mlm", tmp_path)
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["deberta.embeddings.position_embeddings.weight"] = np.zeros((64, 32), np.float32)
    sd["mask_predictions.dense.weight"] = np.zeros((32, 32), np.float32)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["legacy"]  # as in Microsoft's files: the lm_predictions weights decide
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    pre = load_pretrained(tmp_path / "hf", head="mlm")
    assert pre.report.unused == [
        "embeddings.position_embeddings.weight",
        "mask_predictions.dense.weight",
    ]
    assert not pre.config.legacy and pre.report.new_init == []
    ids, mask, types = _batch(hf.config)
    logits, _ = pre.model.apply({"params": pre.params}, ids, mask, types)
    theirs = _torch_forward(hf, ids, mask, types).logits.numpy()
    assert np.abs(np.asarray(logits) - theirs).max() <= TOL


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ({"conv_kernel_size": 3}, "conv_kernel_size=3"),
        ({"attention_head_size": 4}, "attention_head_size=4"),
        ({"pos_att_type": "c2p|p2p"}, "pos_att_type ('c2p', 'p2p')"),
        ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd 'batch_norm'"),
        ({"legacy": False, "embedding_size": 16}, "legacy=False with embedding_size 16"),
    ],
)
def test_refusals(bad, shown):
    with pytest.raises(ValueError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_hf({"model_type": "deberta-v2", "hidden_size": 32,
                             "num_attention_heads": 4} | bad)  # fmt: skip
