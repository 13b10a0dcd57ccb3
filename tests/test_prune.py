"""Magnitude pruning (hand-computed masks, the iterative schedule, masks held by the optimizer)
and structured pruning (importance vs TextPruner / torch, physically smaller == zeroed, export to
transformers). Tiny random BERTs (hidden 32)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxdistil import prune, train
from tests.test_finetune import _tiny_cfg, tiny_dir  # noqa: F401, F811 (a fixture)


def toy_params():
    """Encoder kernels (one stacked over 2 layers), a bias, a LayerNorm, embeddings, a head."""
    return {
        "encoder": {
            "layer": {
                "fc1": {
                    "kernel": np.array([[[1.0, -8.0], [3.0, 0.5]], [[-2.0, 7.0], [6.0, -4.0]]]),
                    "bias": np.array([[0.01, 0.02], [0.03, 0.04]]),
                },
                "mlp_norm": {"scale": np.array([[0.001, 1.0], [1.0, 1.0]])},
            },
            "pooler": {"kernel": np.array([[5.0, -0.25], [2.5, 9.0]])},
            "embeddings": {"word_embeddings": {"embedding": np.array([[0.0001, 1.0]])}},
        },
        "classifier": {"out": {"kernel": np.array([[0.002, 3.5]])}},
    }


def test_eligible_excludes_embeddings_norms_biases_pooler_and_heads():
    inc = prune.eligible(toy_params())
    assert inc["encoder"]["layer"]["fc1"] == {"kernel": True, "bias": False}
    assert inc["encoder"]["layer"]["mlp_norm"]["scale"] is False
    assert inc["encoder"]["pooler"]["kernel"] is False
    assert inc["encoder"]["embeddings"]["word_embeddings"]["embedding"] is False
    assert inc["classifier"]["out"]["kernel"] is False
    inc = prune.eligible(toy_params(), embeddings=True, heads=True)
    assert inc["encoder"]["embeddings"]["word_embeddings"]["embedding"] is True
    assert inc["encoder"]["pooler"]["kernel"] is True
    assert inc["classifier"]["out"]["kernel"] is True


def test_global_mask_by_hand():
    # The 8 eligible magnitudes: fc1 1 8 3 .5 | 2 7 6 4. Half (4) go: .5 1 2 3; everything else
    # (norm 0.001, embedding 1e-4, pooler, head .002) is untouched.
    m = prune.magnitude_masks(toy_params(), 0.5, scope="global")
    np.testing.assert_array_equal(
        m["encoder"]["layer"]["fc1"]["kernel"], [[[0, 1], [0, 0]], [[0, 1], [1, 1]]]
    )
    for leaf in (
        m["encoder"]["layer"]["fc1"]["bias"],
        m["encoder"]["pooler"]["kernel"],
        m["classifier"]["out"]["kernel"],
    ):
        assert np.shape(leaf) == () and bool(leaf)
    # With the pooler and head (heads=True), 14 magnitudes: fc1's, pooler 5 .25 2.5 9, head
    # .002 3.5. Half (7) go: .002 .25 .5 1 2 2.5 3.
    inc = prune.eligible(toy_params(), heads=True)
    m = prune.magnitude_masks(toy_params(), 0.5, scope="global", include=inc)
    np.testing.assert_array_equal(
        m["encoder"]["layer"]["fc1"]["kernel"], [[[0, 1], [0, 0]], [[0, 1], [1, 1]]]
    )
    np.testing.assert_array_equal(m["encoder"]["pooler"]["kernel"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(m["classifier"]["out"]["kernel"], [[0, 1]])


def test_layer_mask_by_hand():
    # Per layer, half of each: layer 0 (1 8 3 .5) drops .5 1; layer 1 (2 7 6 4) drops 2 4; with
    # heads=True the pooler (5 .25 2.5 9) on its own drops .25 2.5.
    m = prune.magnitude_masks(toy_params(), 0.5, scope="layer")
    np.testing.assert_array_equal(
        m["encoder"]["layer"]["fc1"]["kernel"], [[[0, 1], [1, 0]], [[0, 1], [1, 0]]]
    )
    assert np.shape(m["encoder"]["pooler"]["kernel"]) == ()
    inc = prune.eligible(toy_params(), heads=True)
    m = prune.magnitude_masks(toy_params(), 0.5, scope="layer", include=inc)
    np.testing.assert_array_equal(m["encoder"]["pooler"]["kernel"], [[1, 0], [0, 1]])


def test_embeddings_included_on_request():
    p = toy_params()
    inc = prune.eligible(p, embeddings=True)
    m = prune.magnitude_masks(p, 1 / 10, scope="global", include=inc)  # 10 weights: 1 goes
    assert not m["encoder"]["embeddings"]["word_embeddings"]["embedding"][0, 0]
    assert prune.sparsity_of(prune.apply_masks(p, m), inc) == pytest.approx(1 / 10)


def test_round_schedule_by_hand():
    # 3 rounds to 0.875 = 1 - 0.5^3: each round halves what is left.
    assert prune.round_sparsities(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    # Seed 004's 15% per round: four rounds reach 1 - 0.85^4.
    s = 1 - 0.85**4
    assert prune.round_sparsities(s, 4) == pytest.approx([0.15, 1 - 0.85**2, 1 - 0.85**3, s])
    assert prune.round_steps(100, 4) == [0, 25, 50, 75]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        prune.round_sparsities(1.0, 2)
    with pytest.raises(ValueError, match="do not fit"):
        prune.round_steps(3, 4)


def test_pruned_weights_stay_zero_through_adamw_and_rounds_narrow():
    """Iterative pruning inside the optimizer: after steps 0 / 2 / 4 the sparsity is 50 / 75 /
    87.5 % of the kernels, earlier zeros stay zero, while gradients push every weight."""
    rng = np.random.RandomState(0)
    params = {
        "encoder": {"layer": {"fc1": {"kernel": rng.randn(2, 8, 8), "bias": rng.randn(2, 8)}}}
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    tx = prune.pruning(
        optax.adamw(0.1, weight_decay=0.1), sparsity=0.875, rounds=3, total_steps=6, scope="layer"
    )
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)  # pushes pruned weights away from zero
    update = jax.jit(tx.update)
    seen, zeros_before = [], None
    for _ in range(6):
        upd, state = update(grads, state, params)
        params = optax.apply_updates(params, upd)
        k = np.asarray(params["encoder"]["layer"]["fc1"]["kernel"])
        seen.append(float((k == 0).mean()))
        if zeros_before is not None:
            assert np.all(k[zeros_before] == 0)
        zeros_before = k == 0
        # each layer on its own
        np.testing.assert_allclose((k == 0).reshape(2, -1).mean(1), seen[-1])
    np.testing.assert_allclose(seen, [0.5, 0.5, 0.75, 0.75, 0.875, 0.875])
    assert np.all(np.asarray(params["encoder"]["layer"]["fc1"]["bias"]) != 0)
    assert prune.masks_of(state) is not None


def test_make_optimizer_prunes_student_not_projections():
    params = {"encoder": {"layer": {"fc1": {"kernel": jnp.arange(1.0, 17.0).reshape(1, 4, 4)}}}}
    proj = {"m0": {"kernel": jnp.full((4, 4), 1e-3)}}
    tx = train.make_optimizer(
        learning_rate=1e-3, total_steps=4, prune_sparsity=0.25, prune_rounds=1, max_grad_norm=None
    )
    tree = {"params": params, "proj": proj}
    state = tx.init(tree)
    grads = jax.tree.map(jnp.zeros_like, tree)
    upd, state = tx.update(grads, state, tree)
    new = optax.apply_updates(tree, upd)
    k = np.asarray(new["params"]["encoder"]["layer"]["fc1"]["kernel"]).reshape(-1)
    np.testing.assert_array_equal(k[:4], 0)  # the 4 smallest of 16
    assert np.all(k[4:] != 0) and np.all(np.asarray(new["proj"]["m0"]["kernel"]) != 0)


# ---------------------------------------------------------------- structured pruning

L, H, K, INTER = 3, 4, 8, 48


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    """A tiny random BertForSequenceClassification saved by transformers, loaded in flaxdistil,
    and some labelled batches."""
    torch = pytest.importorskip("torch")
    import transformers

    tcfg = transformers.BertConfig(
        vocab_size=50, hidden_size=H * K, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=INTER, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(tcfg).eval()
    d = tmp_path_factory.mktemp("tiny_cls")
    model.save_pretrained(d)
    from flaxdistil import load_pretrained

    pre = load_pretrained(d, "seq_cls")
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(3):
        ids = rng.randint(1, 50, (4, 10)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 6:] = 0
        mask[3, 3:] = 0
        ids[mask == 0] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": rng.randint(0, 3, 4)})
    return model, d, pre, batches


def _torch_batches(batches):
    import torch

    return [{k: torch.tensor(v) for k, v in b.items()} for b in batches]


def test_importance_matches_textpruner(tiny_cls, tmp_path):
    textpruner = pytest.importorskip("textpruner")  # `make setup` installs it (--no-deps)
    from flaxdistil import prune_structured as ps

    model, _, pre, batches = tiny_cls
    pruner = textpruner.TransformerPruner(
        model, general_config=textpruner.GeneralConfig(use_device="cpu", output_dir=str(tmp_path))
    )
    ref_h, ref_f = pruner.get_importance_score(_torch_batches(batches))
    heads, ffn = ps.importance(pre.config, "seq_cls", pre.params, batches)
    np.testing.assert_allclose(heads, ref_h.numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ffn, ref_f.numpy(), rtol=1e-4, atol=1e-9)
    # The kept units: TextPruner's even masking keeps the same ones.
    from textpruner.pruners.utils import generate_mask

    mask = generate_mask(ref_h, 2 * L, even_masking=True).numpy()
    np.testing.assert_array_equal(np.nonzero(mask)[1].reshape(L, 2), ps.choose(heads, 2))
    model.zero_grad()


# Two settings where re-ranking keeps other units than one shot (heads in the first, FFN in the
# second), so the test tells iterative from one-shot pruning.
@pytest.mark.parametrize("heads_keep, ffn_keep, iterations", [(1, 9, 3), (2, 8, 4)])
def test_iterative_structured_pruning_matches_textpruner(
    tiny_cls, tmp_path, heads_keep, ffn_keep, iterations
):
    """ps.iterative_prune keeps the heads and FFN neurons TextPruner's iterative_pruning keeps
    (n_iters, even masking, importance re-computed on the model pruned so far), and the pruned
    model equals TextPruner's torch model with those units zeroed, on the batches."""
    import copy

    import torch

    textpruner = pytest.importorskip("textpruner")
    from flaxdistil import prune_structured as ps
    from flaxdistil.models import Model

    model, _, pre, batches = tiny_cls
    ref = copy.deepcopy(model)
    pruner = textpruner.TransformerPruner(
        ref,
        transformer_pruning_config=textpruner.TransformerPruningConfig(
            target_num_of_heads=heads_keep,
            target_ffn_size=ffn_keep,
            pruning_method="iterative",
            n_iters=iterations,
            head_even_masking=True,
            ffn_even_masking=True,
        ),  # fmt: skip
        general_config=textpruner.GeneralConfig(use_device="cpu", output_dir=str(tmp_path)),
    )
    # keep_shape: zeroed, not removed (removal calls prune_heads, which transformers 5 lacks)
    pruner.prune(_torch_batches(batches), keep_shape=True, save_model=False)
    params, cfg, kept_h, kept_f = ps.iterative_prune(
        pre.config, "seq_cls", pre.params, batches, heads_keep=heads_keep, ffn_keep=ffn_keep,
        iterations=iterations,
    )  # fmt: skip
    ref_h = np.nonzero(pruner.head_mask.numpy())[1].reshape(L, heads_keep)
    ref_f = np.nonzero(pruner.ffn_mask.numpy())[1].reshape(L, ffn_keep)
    np.testing.assert_array_equal(kept_h, ref_h)
    np.testing.assert_array_equal(kept_f, ref_f)
    one_shot = ps.importance(pre.config, "seq_cls", pre.params, batches)
    differs = not np.array_equal(ps.choose(one_shot[0], heads_keep), ref_h) or not (
        np.array_equal(ps.choose(one_shot[1], ffn_keep, "FFN neurons"), ref_f)
    )
    assert differs, "re-ranking changed nothing here: the test would not tell one shot apart"
    assert (cfg.num_attention_heads, cfg.intermediate_size) == (heads_keep, ffn_keep)
    b = batches[0]
    got, _ = Model(cfg, "seq_cls").apply({"params": params}, b["input_ids"], b["attention_mask"])
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(b["input_ids"]),
                   attention_mask=torch.tensor(b["attention_mask"])).logits.numpy()  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_iteration_schedule_is_textpruners():
    from flaxdistil import prune_structured as ps

    # TextPruner's totals: 3 layers x 4 heads -> 3 x 1 in 2 iterations removes 5 then 4 heads
    # (12 -> 7 -> 3), even per layer 7 // 3 = 2, then 1.
    assert ps.schedule(3, 4, 1, 2) == [2, 1]
    assert ps.schedule(3, 48, 9, 3) == [35, 22, 9]  # 144 - 39 = 105, 66, 27 in all
    assert ps.schedule(2, 4, 2, 1) == [2]
    with pytest.raises(ValueError, match="iterations must be an integer >= 1, got 0"):
        ps.schedule(2, 4, 2, 0)


def _torch_importance(model, batches, labels_of):
    """TextPruner's sums in torch, the loss the HF cross entropy on labels_of(logits, batch)."""
    import torch

    ref_h, ref_f, n = np.zeros((L, H)), np.zeros((L, INTER)), 0
    for b in _torch_batches(batches):
        model.zero_grad()
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits, labels_of(logits, b)).backward()
        for i, layer in enumerate(model.bert.encoder.layer):
            g = lambda w: (w * w.grad).detach()
            w, w1 = layer.attention.output.dense.weight, layer.intermediate.dense.weight
            b1, w2 = layer.intermediate.dense.bias, layer.output.dense.weight
            ref_h[i] += g(w).view(H * K, H, K).sum((0, 2)).abs().numpy()
            ref_f[i] += (g(w1).sum(1) + g(b1)).abs().numpy() + g(w2).sum(0).abs().numpy()
        n += len(b["input_ids"])
    model.zero_grad()
    return ref_h / n, ref_f / n


def test_label_free_importance_vs_torch(tiny_cls):
    """Label-free: the model's own argmax as labels (the soft self cross entropy has zero
    gradient: checked too, it is why TextPruner's use_logits variant is not copied)."""
    import torch

    from flaxdistil import prune_structured as ps

    model, _, pre, batches = tiny_cls
    ref_h, ref_f = _torch_importance(model, batches, lambda z, b: z.argmax(-1).detach())
    no_labels = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    heads, ffn = ps.importance(pre.config, "seq_cls", pre.params, no_labels, use_logits=True)
    assert heads.min() > 0 and ffn.max() > 1e-6
    np.testing.assert_allclose(heads, ref_h, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ffn, ref_f, rtol=1e-4, atol=1e-9)
    soft = lambda z, b: torch.softmax(z.detach(), -1)
    zero_h, zero_f = _torch_importance(model, batches, soft)
    assert zero_h.max() < 1e-6 * heads.max() and zero_f.max() < 1e-6 * ffn.max()


def test_physically_pruned_equals_zeroed_torch_model_and_exports(tiny_cls, tmp_path):
    """Removing heads / neurons in flaxdistil == zeroing them in the transformers model; the
    export loads in transformers (pruned heads as zeros, FFN through intermediate_size)."""
    import copy

    import torch
    import transformers

    from flaxdistil import Model, save_pretrained
    from flaxdistil import prune_structured as ps

    model, _, pre, batches = tiny_cls
    heads, ffn = ps.importance(pre.config, "seq_cls", pre.params, batches)
    keep_h, keep_f = ps.choose(heads, 2), ps.choose(ffn, 20, "FFN neurons")
    params, cfg = ps.prune_heads_ffn(pre.params, pre.config, keep_h, keep_f)
    assert (cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size) == (2, K, 20)
    q = params["encoder"]["layer"]["attention"]["query"]["kernel"]
    assert q.shape == (L, H * K, 2 * K)

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(zeroed.bert.encoder.layer):
            for h in set(range(H)) - set(keep_h[i].tolist()):
                layer.attention.output.dense.weight[:, h * K : (h + 1) * K] = 0
            drop = sorted(set(range(INTER)) - set(keep_f[i].tolist()))
            layer.output.dense.weight[:, drop] = 0
    b = batches[0]
    tb = _torch_batches([b])[0]
    with torch.no_grad():
        ref = zeroed(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
    ours, _ = Model(cfg, "seq_cls").apply({"params": params}, b["input_ids"], b["attention_mask"])
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-5)

    out = save_pretrained(tmp_path / "hf", params, cfg, "seq_cls")
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.intermediate_size == 20 and hf.config.num_attention_heads == H
    with torch.no_grad():
        theirs = hf(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-5)


def test_structured_bad_requests():
    from flaxdistil import prune_structured as ps

    imp = np.ones((3, 4))
    with pytest.raises(ValueError, match="cannot keep 5 heads per layer: the model has 4"):
        ps.choose(imp, 5)
    with pytest.raises(ValueError, match="integer >= 1"):
        ps.choose(imp, 0)
    with pytest.raises(ValueError, match="uneven sizes per layer"):
        ps.check_even([2, 3, 2])


def test_task_job_prunes_iteratively_and_exports_zeros(tiny_dir, tmp_path):  # noqa: F811
    """prune.* in the task job: 2 rounds to 75% over 6 steps; the exported model has 75% of its
    encoder kernels at zero (counted in the safetensors transformers reads)."""
    from safetensors.numpy import load_file

    from flaxdistil.jobs import task as task_job

    cfg = _tiny_cfg(tiny_dir, tmp_path, steps=6, evals=dict(every=6))
    cfg.prune.update(sparsity=0.75, rounds=2, scope="global")
    res = task_job.run(cfg, tmp_path / "job")
    assert res["best_step"] == 6 and res["sparsity"] == pytest.approx(0.75, abs=1e-4)
    sd = load_file(str(tmp_path / "job" / "best_hf" / "model.safetensors"))
    linear = [v for k, v in sd.items() if ".encoder.layer." in k and k.endswith("dense.weight")]
    linear += [v for k, v in sd.items() if ".attention.self." in k and k.endswith("weight")]
    zeros = sum(int((v == 0).sum()) for v in linear) / sum(v.size for v in linear)
    assert zeros == pytest.approx(0.75, abs=1e-4)
    pooler = sd[next(k for k in sd if k.endswith("pooler.dense.weight"))]
    assert np.count_nonzero(pooler) == pooler.size
    emb = [v for k, v in sd.items() if "embeddings" in k]
    assert all(np.count_nonzero(v) > 0.99 * v.size for v in emb if v.ndim == 2)
