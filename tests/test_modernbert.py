"""ModernBERT against transformers' PyTorch ModernBert models (eager attention) in float32.

Tiny random configs whose sliding window (local_attention 4: |i - j| <= 2) is smaller than the
sequence (11), in padded batches: every hidden state, attention and the logits within 1e-5, the
export reloaded bit-exact, students by slicing equal to transformers' own layers run in the same
order (any slicing), the slicings transformers cannot rebuild refused, a few distillation steps.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import derive_student, sharding, train
from flaxdistil.hf import load_pretrained, save_pretrained
from flaxdistil.hf_table import AUTO_CLASSES
from flaxdistil.models import FAMILY_HEADS, Model, ModelConfig, inference_fn
from flaxdistil.objective import Match, Objective, hparams
from flaxdistil.student import student_config

from .test_families import _assert_same_model, _max_diffs, _ours, _reload, _torch_forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
B, T = 3, 11
TINY = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37,
            num_hidden_layers=4, global_attn_every_n_layers=3, local_attention=4,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2)  # fmt: skip
# Every bias switched on, mean pooling, other activations and rotary bases.
BIASED = dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
              classifier_pooling="mean", hidden_activation="gelu_new",
              classifier_activation="silu", global_rope_theta=500.0,
              local_rope_theta=50.0)  # fmt: skip
CASES = {"default": {}, "biased": BIASED, "no-decoder-bias": dict(decoder_bias=False)}
PAIRS = [("default", h) for h in FAMILY_HEADS["modernbert"]]
PAIRS += [("biased", h) for h in ("mlm", "seq_cls", "token_cls")]
PAIRS += [("no-decoder-bias", "mlm")]


def make(head, seed=0, **overrides):
    """A tiny ModernBERT with noise on every parameter (HF's zero biases and unit norms would
    hide a dropped bias or a swapped norm)."""
    torch.manual_seed(seed)
    cfg = transformers.ModernBertConfig(**TINY | overrides)
    cfg.num_labels = 2 if head == "qa" else 3
    auto = getattr(transformers, AUTO_CLASSES[head])
    model = auto.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "norm" in name else 0.05))
    return model


def batch(seed=0):
    """Rows of lengths 11, 7, 4, right-padded with pad id 0; ids avoid the special ones."""
    rng = np.random.RandomState(seed)
    mask = (np.arange(T)[None] < np.array([T, 7, 4])[:, None]).astype(np.int64)
    return np.where(mask, rng.randint(3, 99, (B, T)), 0), mask


def torch_logits(out, head):
    if head == "qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return out.logits.numpy()


@pytest.mark.parametrize(("case", "head"), PAIRS)
def test_vs_transformers_and_back(case, head, tmp_path, parity_report):
    hf = make(head, **CASES[case])
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head=head)
    assert pre.config.model_type == "modernbert"
    assert pre.config.layer_types == tuple(hf.config.layer_types)
    assert pre.report.new_init == [] and pre.report.unused == []
    ids, mask = batch()
    logits, aux = _ours(pre, ids, mask, None)
    theirs = _torch_forward(hf, ids, mask, None)
    assert aux["hidden_states"].shape == (5, B, T, 32)
    diffs = _max_diffs(logits, aux, theirs, head)
    if head is not None:
        assert np.shape(logits) == torch_logits(theirs, head).shape
    print(f"\nmodernbert-{case}/{head}: {diffs}")
    parity_report[f"tiny/modernbert-{case}/{head}"] = diffs
    assert max(diffs.values()) <= TOL, diffs

    out = save_pretrained(tmp_path / "out", pre.params, pre.config, head)
    back = _reload(out, head)
    assert type(back) is type(hf)
    _assert_same_model(hf, back)
    a, b = _torch_forward(hf, ids, mask, None), _torch_forward(back, ids, mask, None)
    for k in a:
        pairs = zip(a[k], b[k], strict=True) if isinstance(a[k], tuple) else [(a[k], b[k])]
        assert all(torch.equal(x, y) for x, y in pairs), k
    saved = json.loads((out / "config.json").read_text())
    for field in ("layer_types", "local_attention", "norm_eps", "hidden_activation", "norm_bias",
                  "attention_bias", "mlp_bias", "decoder_bias", "classifier_bias",
                  "classifier_pooling", "classifier_activation", "rope_parameters",
                  "intermediate_size", "pad_token_id", "num_labels"):  # fmt: skip
        assert getattr(back.config, field) == getattr(hf.config, field), field
    assert saved["global_attn_every_n_layers"] == 3
    assert ModelConfig.from_hf(saved).replace(id2label=None) == pre.config.replace(id2label=None)
    # A second load of the export is the first one, bit for bit.
    again = load_pretrained(out, head=head)
    jax.tree.map(np.testing.assert_array_equal, again.params, pre.params)


def test_the_window_is_what_transformers_masks(tmp_path):
    """A sliding layer's token i sees |i - j| <= local_attention // 2 (2 here): transformers'
    attention probabilities of layer 1 vanish outside that band, and so do ours."""
    hf = make(None)
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head=None)
    ids, mask = batch()
    _, aux = _ours(pre, ids, mask, None)
    theirs = _torch_forward(hf, ids, mask, None).attentions[1][0].numpy()  # row 0: no padding
    far = np.abs(np.arange(T)[:, None] - np.arange(T)[None]) > 2
    assert (theirs[:, far] == 0).all() and (theirs[:, ~far] > 0).all()
    assert (np.asarray(aux["attentions"][1][0])[:, far] == 0).all()
    assert (np.asarray(aux["attentions"][0][0]) > 0).all()  # layer 0 is global


def test_old_config_names_and_refusals():
    """transformers 4.x's config.json (global_attn_every_n_layers, global_rope_theta,
    local_rope_theta, no layer_types) reads the same; rope scaling is refused."""
    old = dict(model_type="modernbert", hidden_size=32, num_attention_heads=4,
               num_hidden_layers=5, global_attn_every_n_layers=2, global_rope_theta=1e3,
               local_rope_theta=1e2, norm_eps=1e-6)  # fmt: skip
    cfg = ModelConfig.from_hf(old)
    assert cfg.layer_types == ("full_attention", "sliding_attention") * 2 + ("full_attention",)
    assert (cfg.global_rope_theta, cfg.local_rope_theta, cfg.layer_norm_eps) == (1e3, 1e2, 1e-6)
    assert cfg.vocab_size == 50368 and cfg.intermediate_size == 1152  # ModernBertConfig's
    hf = transformers.ModernBertConfig(**{k: v for k, v in old.items() if k != "model_type"})
    assert list(cfg.layer_types) == hf.layer_types
    with pytest.raises(ValueError, match="rope scaling"):
        ModelConfig.from_hf(old | {"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="layer_types must hold 5 entries"):
        cfg.replace(layer_types=("full_attention",) * 4)


def _sliced_torch(hf, ids):
    """transformers' own layers, in the student's order: each keeps its attention kind, window
    and (layer 0's) identity attn_norm."""
    import copy

    sliced = copy.deepcopy(hf)
    sliced.model.layers = torch.nn.ModuleList([sliced.model.layers[i] for i in ids])
    sliced.config.num_hidden_layers = len(ids)
    return sliced


@pytest.mark.parametrize(
    "layers", [[0, 2, 4], [0, 1, 3], [0, 3, 4, 5], [1, 3, 5], [2, 0], [0, 1, 2, 3, 4, 5]]
)
def test_students_equal_the_teacher_layers(layers, tmp_path):
    """A 6-layer teacher (global at 0 and 3): any slicing computes what transformers' layers
    compute in that order; those transformers can rebuild export and reload to the same logits,
    the others are refused with one line naming the pattern."""
    hf = make("mlm", num_hidden_layers=6)
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head="mlm")
    student, cfg, ids = derive_student(pre.params, pre.config, layers=layers)
    assert ids == layers and cfg.num_hidden_layers == len(layers)
    assert cfg.layer_types == tuple(pre.config.layer_types[i] for i in layers)
    assert cfg.identity_attn_norm_layers == tuple(p for p, i in enumerate(layers) if i == 0)
    jax.tree.map(
        lambda s, t: np.testing.assert_array_equal(s, t[np.array(layers)]),
        student["encoder"]["layer"],
        pre.params["encoder"]["layer"],
    )
    ids_, mask = batch()
    logits, aux = Model(cfg, "mlm").apply(
        {"params": student}, ids_, mask, output_hidden_states=True, output_attentions=True
    )
    theirs = _torch_forward(_sliced_torch(hf, layers), ids_, mask, None)
    diffs = _max_diffs(logits, aux, theirs, "mlm")
    assert max(diffs.values()) <= TOL, diffs

    pattern = "".join("G" if t == "full_attention" else "L" for t in cfg.layer_types)
    if layers[0] != 0 or 0 in layers[1:]:
        with pytest.raises(ValueError, match="identity attn_norm layers are") as e:
            save_pretrained(tmp_path / "s", student, cfg, "mlm")
    elif pattern == "GGLL":
        with pytest.raises(
            ValueError, match="attention pattern GGLL .*global layers \\[0, 1\\]"
        ) as e:
            save_pretrained(tmp_path / "s", student, cfg, "mlm")
    else:
        back = _reload(save_pretrained(tmp_path / "s", student, cfg, "mlm"), "mlm")
        assert back.config.layer_types == list(cfg.layer_types)
        out = _torch_forward(back, ids_, mask, None).logits.numpy()
        assert np.abs(np.asarray(logits) - out).max() <= TOL
        return
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()


def test_student_config_of_another_depth():
    """A random student of another depth takes the teacher's every-n pattern."""
    teacher = ModelConfig.from_hf(dict(model_type="modernbert", num_hidden_layers=22,
                                       hidden_size=32, num_attention_heads=4))  # fmt: skip
    s = student_config(teacher, num_hidden_layers=7)
    assert list(s.layer_types) == transformers.ModernBertConfig(num_hidden_layers=7).layer_types
    assert s.identity_attn_norm_layers == (0,)


def test_gathered_mlm_fused_unrolled_remat_bf16(tmp_path):
    """The gathered MLM head gives transformers' logits at the masked positions; fused attention
    (global layers by lengths, sliding ones by lengths and a window), unrolled layers and remat
    give the einsum path's results; bf16 stays near float32."""
    hf = make("mlm")
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head="mlm")
    ids, mask = batch()
    flat = np.array([0, 5, 10, T + 3, 2 * T + 1])  # into the B*T tokens, real ones only
    gathered, _ = pre.model.apply({"params": pre.params}, ids, mask, masked_positions=flat)
    theirs = _torch_forward(hf, ids, mask, None).logits.numpy().reshape(B * T, -1)
    assert np.abs(np.asarray(gathered) - theirs[flat]).max() <= TOL

    want, _ = pre.model.apply({"params": pre.params}, ids, mask)
    real = mask.astype(bool)
    for kw in (dict(attention_impl="fused"), dict(remat="dots"), dict(remat="none")):
        got, _ = Model(pre.config, "mlm", **kw).apply({"params": pre.params}, ids, mask)
        assert np.abs(np.asarray(got - want)[real]).max() <= TOL, kw
    for impl in ("einsum", "fused"):
        fn, p = inference_fn(pre.config, "mlm", pre.params, attention_impl=impl)
        assert np.abs(np.asarray(fn(p, ids, mask) - want)[real]).max() <= TOL, impl
    bf16, _ = Model(pre.config, "mlm", jnp.bfloat16).apply({"params": pre.params}, ids, mask)
    assert bf16.dtype == jnp.bfloat16
    err = np.abs(np.asarray(bf16, np.float32) - np.asarray(want))[real].max()
    print(f"\nbf16 vs float32 logits: max abs {err:.3g} (logits up to {np.abs(want).max():.3g})")
    assert err < 0.1

    # remat and fused attention under a gradient: the same as the plain path.
    def loss(params, **kw):
        out, _ = Model(pre.config, "mlm", **kw).apply({"params": params}, ids, mask)
        return jnp.sum(jnp.tanh(out) * real[..., None])

    g0 = jax.grad(loss)(pre.params)
    for kw in (dict(remat="dots"), dict(attention_impl="fused")):
        g = jax.grad(lambda p, kw=kw: loss(p, **kw))(pre.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g, g0)


def _distil(teacher, head, obj, batch_, steps=6):
    student, s_cfg, _ = derive_student(teacher.params, teacher.config, layers=[0, 3])
    tx = train.make_optimizer(learning_rate=3e-3, total_steps=steps)
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    step = train.jit_train_step(obj, Model(s_cfg, head), teacher.model, tx, mesh, rep, rep)
    state = jax.device_put(train.create_state(student, tx), rep)
    weights = {"temperature": 2.0, "hard_label_weight": 1.0, "kd_loss_weight": 1.0}
    hp, seen = hparams(weights, obj), []
    for i in range(steps):
        state, m = step(state, teacher.params, batch_, jax.random.key(i), hp, None)
        seen.append({k: float(v) for k, v in m.items()})
    return seen


def test_task_and_general_distillation(tmp_path):
    """A 2-layer student (teacher layers 0 and 3: global, global) through the one engine: KD on
    logits + the cosine of the last hidden states + the hard loss; then masked-LM distillation
    with an attention match (the sliding layer's probabilities)."""
    make("seq_cls").save_pretrained(tmp_path / "cls")
    teacher = load_pretrained(tmp_path / "cls", head="seq_cls")
    ids, mask = batch()
    cos = Match(layer_T=4, layer_S=2, feature="hidden", loss="cos")
    obj = Objective(task="classification", use_kd=True, kd_loss_type="kl_t2", matches=(cos,))
    b = {"input_ids": ids, "attention_mask": mask, "labels": np.array([0, 2, 1], np.int32)}
    seen = _distil(teacher, "seq_cls", obj, b)
    assert all(np.isfinite(v) for m in seen for v in m.values())
    assert seen[0]["loss_kd"] > 0 and seen[0][cos.key(0)] > 0
    assert seen[-1]["loss"] < seen[0]["loss"], [m["loss"] for m in seen]

    make("mlm").save_pretrained(tmp_path / "mlm")
    teacher = load_pretrained(tmp_path / "mlm", head="mlm")
    att = Match(layer_T=4, layer_S=2, feature="attention", loss="attention_mse")
    obj = Objective(task="mlm", use_kd=True, matches=(cos, att), mlm_probability=0.3,
                    mask_token_id=3, vocab_size=99, special_ids=(0, 1, 2))  # fmt: skip
    seen = _distil(teacher, "mlm", obj, {"input_ids": ids, "attention_mask": mask})
    assert all(np.isfinite(v) for m in seen for v in m.values())
    assert seen[0]["masked_tokens"] > 0 and seen[-1]["loss"] < seen[0]["loss"]


def test_general_job_exports_a_student_and_refuses_one_early(tmp_path):
    """scripts/distill.py with a ModernBERT teacher (the MiniLM tokenizer's vocabulary): every
    other layer distils and exports as a ModernBertForMaskedLM; layers 1 and 3 (no identity
    attn_norm first) stop with one line before training."""
    import subprocess

    from flaxdistil import assets

    from .test_distill_job import ENV, command

    teacher = tmp_path / "teacher"
    make("mlm", vocab_size=30522, cls_token_id=101, sep_token_id=102, bos_token_id=101,
         eos_token_id=102).save_pretrained(teacher)  # fmt: skip
    transformers.AutoTokenizer.from_pretrained(assets.minilm_dir()).save_pretrained(teacher)
    runs = {
        "ok": command(tmp_path / "ok", teacher, "--config.export.hf=True"),
        "refused": command(tmp_path / "no", teacher, "--config.export.hf=True",
                           "--config.student.layers=1,3"),
    }  # fmt: skip
    procs = {
        k: subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
        for k, cmd in runs.items()
    }  # fmt: skip
    out = {k: p.communicate(timeout=600) + (p.returncode,) for k, p in procs.items()}
    _, err, rc = out["refused"]
    assert rc != 0 and "distill:" not in err, err[-2000:]
    assert "cannot export this ModernBERT to transformers" in err.strip().splitlines()[-1]
    _, err, rc = out["ok"]
    assert rc == 0, err[-3000:]
    back = _reload(tmp_path / "ok" / "student_hf", "mlm")
    assert type(back) is transformers.ModernBertForMaskedLM
    assert back.config.layer_types == ["full_attention", "sliding_attention"]
