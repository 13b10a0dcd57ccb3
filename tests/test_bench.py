"""A tiny smoke run of scripts/bench.py and checks of its FLOP count, peaks and targets.

Benchmarks are not timed tests: nothing here asserts a speed. The options the benchmark measures
(gathered heads, unrolled layers, the decoder's custom gradient) are tested in test_fast_paths.py.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from flaxdistil import objective
from flaxdistil.bench import cases, measure, profile, report
from flaxdistil.models import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str = "bench"):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_smoke(tmp_path):
    pytest.importorskip("torch")
    # scaling is left out: one more compile of the step for a table that says "it runs"
    argv = [
        "--quick",
        "--sections",
        "train,infer",
        "--variants",
        "gather",
        "--steps",
        "1",
        "--latency-repeats",
        "1",
        "--torch-threads",
        "1",
        "--no-check-flops",
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    results = _script().main(argv)
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["machine"]["nproc"] >= 1
    assert [r["section"] for r in saved["runs"]] == ["train", "inference"]
    assert all("--quick" in r["command"] for r in saved["runs"])
    train_rows = {(r["impl"], r["variant"]): r for r in results["train"]}
    assert set(train_rows) == {("flaxdistil", "gather"), ("torch eager", "gather")}
    for key, row in train_rows.items():
        assert "error" not in row, (key, row.get("error"))
        assert row["tokens_per_s"] > 0 and np.isfinite(row["loss"])
        assert "mfu" in row  # None where the peak is unknown (CPU)
    # like with like: the gathered step against the gathered torch step
    assert train_rows["flaxdistil", "gather"]["vs_torch_eager"] == pytest.approx(
        train_rows["flaxdistil", "gather"]["tokens_per_s"]
        / train_rows["torch eager", "gather"]["tokens_per_s"]
    )
    assert {(r["model"], r["variant"]) for r in results["inference"] if "ms" in r} >= {
        ("teacher 2L", "scan"),
        ("teacher 2L", "unrolled"),
        ("student 1L", "1 thr"),
    }
    md = (tmp_path / "smoke.md").read_text()
    assert "## Distillation step" in md and "## Inference" in md and "not measured" in md


def test_step_flops_match_a_hand_count():
    t = ModelConfig(
        vocab_size=10,
        hidden_size=4,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=8,
    )
    s = t.replace(num_hidden_layers=1)
    # per layer and token: 2 * (4*16 + 2*4*8) matmul + 4*T*D attention; head: 2 * (16 + 40)
    layer = lambda T: 2 * (4 * 16 + 2 * 4 * 8) + 4 * T * 4
    want = 6 * (2 * layer(3)) + 5 * 2 * (16 + 40) + 3 * (6 * layer(3) + 5 * 2 * (16 + 40))
    assert measure.step_flops(t, s, batch=2, seq=3, rows=5) == want


def test_peaks_and_variants():
    assert measure.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989
    assert measure.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756
    assert measure.peak_tflops("NVIDIA H200", "float32") == 67
    assert measure.peak_tflops("cpu", "bfloat16") is None
    assert measure.peak_tflops("cpu", "bfloat16", override=2.5) == 2.5
    v = cases.Variant.parse("gather+fused+remat=dots+teacher=bfloat16+rng=rbg")
    assert (v.gather, v.fused, v.remat, v.teacher, v.rng) == (True, True, "dots", "bfloat16", "rbg")
    assert cases.Variant.parse(v.name) == v and cases.Variant.parse("base") == cases.Variant()
    with pytest.raises(ValueError, match="unknown variant part 'fast'"):
        cases.Variant.parse("gather+fast")
    assert cases.Variant.parse("gather+dots=eigen").dots == "eigen"
    with pytest.raises(ValueError, match="unknown variant part 'dots=mkl'"):
        cases.Variant.parse("dots=mkl")


def test_targets_need_a_gpu_for_the_gpu_targets():
    results = {"machine": {"backend": "cpu"}, "train": [], "inference": []}
    statuses = {t["target"]: t["status"] for t in report.targets(results)}
    assert all(s.startswith("not measured") for s in statuses.values())


def test_masked_capacity():
    for n, p in ((1024, 0.15), (65536, 0.15), (16, 0.15), (100, 0.5)):
        cap = objective.masked_capacity(n, p)
        assert cap <= n and (cap % 8 == 0 or cap == n)
        assert cap == n or cap >= p * n + 6 * np.sqrt(n * p * (1 - p))


def test_merge_replaces_only_the_same_section_and_sizes():
    run = lambda section, setup: {"section": section, "setup": setup}
    old = {
        "runs": [run("train", "a"), run("train", "b"), run("inference", "a")],
        "train": [{"setup": "a", "x": 0}, {"setup": "b", "x": 0}],
        "inference": [{"setup": "a", "x": 0}],
    }
    new = {"machine": {}, "runs": [run("train", "a")], "train": [{"setup": "a", "x": 1}]}
    out = report.merge(old, new)
    assert [(r["section"], r["setup"]) for r in out["runs"]] == [
        ("train", "b"),
        ("inference", "a"),
        ("train", "a"),
    ]
    assert out["train"] == [{"setup": "b", "x": 0}, {"setup": "a", "x": 1}]
    assert out["inference"] == old["inference"]


@pytest.mark.parametrize("gather", [False, True])
def test_torch_reference_computes_flaxdistils_loss(gather):
    """The PyTorch step's loss equals objective.compose with the benchmark's objective on the same
    weights and masks, with the heads gathered as in the jitted step (student in eval mode:
    dropout draws differ), so the two frameworks time the same work."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    from flaxdistil import hf
    from flaxdistil.bench import torch_ref
    from flaxdistil.models import Model

    cfg = ModelConfig(
        vocab_size=160,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    s_cfg = cfg.replace(num_hidden_layers=1)
    torch.manual_seed(0)
    t_torch, s_torch = (
        torch_ref.transformers.BertForMaskedLM(torch_ref.bert_config(c)).eval()
        for c in (cfg, s_cfg)
    )
    batch = cases.random_batch(3, 12, cfg.vocab_size)
    batch["attention_mask"][2, 7:] = 0
    ids, mask = (torch.from_numpy(batch[k]).long() for k in ("input_ids", "attention_mask"))
    masked, labels = torch_ref.mask_tokens(ids, mask, cfg.vocab_size, p=0.4)
    want = torch_ref.distil_loss(t_torch, s_torch, masked, labels, mask, gather)

    obj = cases.distilbert_objective(cfg, s_cfg, gather)
    positions, head_labels = None, jnp.asarray(labels.numpy())
    if gather:  # the first masked_capacity masked tokens, as both steps take them
        positions, head_labels, _ = objective.masked_rows(head_labels, obj.mlm_probability)

    def flax_out(model, c):
        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        params = hf.convert_from_hf(sd, c, "mlm")[0]
        return Model(c).apply(
            {"params": params},
            masked.numpy(),
            mask.numpy(),
            masked_positions=positions,
            **obj.outputs,
        )

    total, terms = objective.compose(
        obj,
        flax_out(s_torch, s_cfg),
        [objective.teacher_targets(obj, 0, flax_out(t_torch, cfg))],
        {"attention_mask": mask.numpy()},
        head_labels,
        {},
        objective.hparams(cases.DISTILBERT_WEIGHTS, obj),
        jnp.zeros((), jnp.int32),
    )
    assert int((labels != -100).sum()) > 0
    assert set(terms) >= {"loss_hard", "loss_kd", "loss_m0_cos_s1_t2"}
    np.testing.assert_allclose(float(total), float(want.detach()), rtol=2e-5)


def test_op_profile_counts_self_time_on_op_threads():
    """A while loop's own time excludes its body; python-thread events are left out; op numbers
    fold into kinds. Hand-made trace, two steps."""
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "tf_XLAEigen/1"}},
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "python"}},
    ]
    span = lambda tid, ts, dur, name: {"ph": "X", "pid": 1, "tid": tid, "ts": ts, "dur": dur,
                                       "name": name}  # fmt: skip
    events = meta + [
        span(7, 0, 100, "while.3"),
        span(7, 10, 30, "dot.1"),
        span(7, 50, 10, "dot.2"),
        span(7, 100, 40, "copy.5"),  # starts as the loop ends: not nested
        span(8, 0, 500, "$api.py block_until_ready"),
    ]
    prof = profile.op_profile(events, steps=2)
    assert prof["top_ops_ms"] == pytest.approx(
        {"while.3": 0.030, "dot.1": 0.015, "copy.5": 0.020, "dot.2": 0.005}
    )
    assert prof["kinds_ms"] == pytest.approx({"while": 0.030, "dot": 0.020, "copy": 0.020})
    assert prof["op_ms_total"] == pytest.approx(0.070)
    assert prof["matmul_ms"] == pytest.approx(0.020)
    assert profile.op_kind("bitcast_dynamic-update-slice_fusion.9") == (
        "bitcast_dynamic-update-slice_fusion"
    )


def test_profile_script_smoke(tmp_path):
    module = _script("profile_step")
    argv = "--hidden 32 --layers 2 --student-layers 1 --vocab 256 --seq 16 --batch 2 --steps 2"
    prof = module.main([*argv.split(), "--out", str(tmp_path)])
    assert prof["op_ms_total"] >= prof["matmul_ms"] > 0
    assert json.loads((tmp_path / "profile_step.json").read_text())["kinds_ms"]


def test_loop_script_runs_as_a_user_runs_it(tmp_path):
    """scripts/bench_loop.py --quick in a fresh interpreter from another directory (the script,
    not pytest's rootdir, must make configs/ importable); every case gets a row."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, ROOT / "scripts" / "bench_loop.py", "--quick", "--out", tmp_path],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_loop.json").read_text())["loop"]
    assert {r["case"] for r in rows} >= {"step", "loop", "loop + async saves"}


def test_gemm_ways_compute_the_same_product():
    """Each way bench_quant's gemm section times gives the product NumPy computes: the int8 dots
    exactly (int32 accumulation), int8_matmul as the dequantised int8 product, float exactly
    enough, PyTorch's dynamic int8 within its own quantisation error."""
    from flaxdistil.bench import quant

    cases, inp = quant.gemm_cases(48, 40, 24)
    ref = inp["x"].astype(np.float64) @ inp["w"]
    iref = inp["xq"].astype(np.int64) @ inp["q"].astype(np.int64).T
    sx = np.abs(inp["x"]).max(axis=1, keepdims=True) / 127.0
    dq = iref * sx * inp["scale"][:, 0]
    out = {k: np.asarray(run()) for k, run in cases.items()}
    assert len(out) == 7
    for k, y in out.items():
        if "->" in k:
            np.testing.assert_array_equal(y, iref, err_msg=k)
        elif "int8_matmul" in k:
            np.testing.assert_allclose(y, dq, rtol=1e-5, atol=1e-5, err_msg=k)
        elif "int8" in k:  # its own activation scales: within a few quantisation steps of fp32
            assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max(), k
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4, err_msg=k)


def test_bench_quant_gemm_section_runs_as_a_user_runs_it(tmp_path, capsys):
    argv = ["--sections", "gemm", "--gemm-shape", "64,32,48", "--gemm-repeats", "2"]
    _script("bench_quant").main(argv + ["--out", str(tmp_path), "--name", "q"])
    g = json.loads((tmp_path / "q.json").read_text())["gemm"]
    assert g["shape"] == [64, 32, 48] and len(g["ms"]) == 7
    assert all(v > 0 for v in g["ms"].values())
    assert "| torch int8 (quantize_dynamic) |" in (tmp_path / "q.md").read_text()
    with pytest.raises(SystemExit) as bad:
        _script("bench_quant").main(["--sections", "gemm", "--gemm-shape", "64,32"])
    assert bad.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("got '64,32'")
