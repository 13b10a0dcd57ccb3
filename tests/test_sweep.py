"""Seed 004's sweep (flaxdistil/sweep.py) and the pipeline table (flaxdistil/compress_table.py):
the round rule by hand, the sparse file against hand byte counts, a 2-level sweep end to end on a
tiny random fine-tuned model (hidden 32, 2 layers) and bad requests through the script."""

import importlib.util
import json
import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from flaxdistil import hf, prune, quantize, sweep
from flaxdistil.models import ModelConfig
from flaxdistil.student import init_student
from tests.test_finetune import _tiny_cfg, compile_cache  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_rounds_rule_by_hand():
    # r = log(1 - s) / log(0.85) rounded: 2.19, 4.27, 7.41, 14.17
    assert [sweep.rounds_for(s) for s in (0.3, 0.5, 0.7, 0.9)] == [2, 4, 7, 14]
    assert sweep.rounds_for(0.1) == 1  # log(.9)/log(.85) = 0.65 -> 1 round of 10%
    assert sweep.rounds_for(0.75, per_round=0.5) == 2  # 0.5 then 0.75
    f = sweep.round_fraction(0.9, 14)
    assert f == pytest.approx(1 - 0.1 ** (1 / 14)) and abs(f - 0.15) < 0.005
    assert 1 - (1 - f) ** 14 == pytest.approx(0.9)
    assert prune.round_sparsities(0.75, 2) == pytest.approx([0.5, 0.75])
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        sweep.rounds_for(1.0)
    with pytest.raises(ValueError, match="target 0 is the float point"):
        sweep.Plan(targets=(0.0,)).check()
    with pytest.raises(ValueError, match=r"per_round must be in \(0, 1\)"):
        sweep.Plan(per_round=1.5).check()


def test_sparse_file_bytes_by_hand_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(5, 7)).astype(np.float32)  # 35 values, none zero: stored dense
    sparse = rng.normal(size=(3, 64, 16)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.8] = 0  # ~80% zero: mask + values
    params = {"a": {"kernel": sparse, "bias": np.zeros(16, np.float32)}, "emb": dense}
    f = prune.save_sparse(params, tmp_path / "m.safetensors")
    back = prune.load_sparse(f)
    np.testing.assert_array_equal(back["a"]["kernel"], sparse)
    np.testing.assert_array_equal(back["emb"], dense)
    np.testing.assert_array_equal(back["a"]["bias"], np.zeros(16))
    # payload by hand: dense 4 bytes a value; sparse ceil(n/8) mask bytes + 4 per nonzero; the
    # all-zero bias is sparse too (2 mask bytes, no values)
    payload = 35 * 4 + math.ceil(sparse.size / 8) + 4 * np.count_nonzero(sparse) + 2
    header = os.path.getsize(f) - payload
    assert 0 < header < 4096, header


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    """A random 2-layer, hidden-32 BERT with a 2-label classifier and MiniLM's tokenizer."""
    from flaxdistil import assets

    cfg = ModelConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    params = init_student(cfg, "seq_cls", jax.random.key(0))
    out = tmp_path_factory.mktemp("tiny_cls") / "hf"
    return hf.save_pretrained(out, params, cfg, "seq_cls", tokenizer_from=assets.minilm_dir())


@pytest.fixture(scope="module")
def swept(tiny_cls, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    cfg = _tiny_cfg(tiny_cls, work)
    plan = sweep.Plan(targets=(0.5, 0.75), bits=(8, 4), per_round=0.3, steps_per_round=2,
                      seeds=(0, 1))  # fmt: skip
    return sweep.run(cfg, work / "w", {"tiny": str(tiny_cls)}, plan), work / "w"


def test_sweep_end_to_end(swept):
    result, work = swept
    assert json.loads((work / "sweep.json").read_text())["models"].keys() == {"tiny"}
    assert (work / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = result["models"]["tiny"]
    levels = {p["target"]: p for p in rec["prune"]}
    assert [levels[t]["rounds"] for t in (0.5, 0.75)] == [2, 4]  # log(1-s)/log(0.7): 1.9, 3.9
    assert [levels[t]["steps"] for t in (0.5, 0.75)] == [4, 8]
    for t, level in levels.items():
        assert level["seeds"] == [0, 1] and len(level["runs"]) == 2
        accs = [r["test"]["accuracy"] for r in level["runs"]]
        assert level["test"]["accuracy"] == pytest.approx([np.mean(accs), np.std(accs, ddof=1)])
        for run in level["runs"]:
            f = Path(run["file"])
            assert run["size_mb"] * 2**20 == os.path.getsize(f)
            seed_dir = f.parent
            assert not (seed_dir / "checkpoints").exists()
            # the encoder layers' linear weights in the HF export (transformers' names; the
            # pooler is not pruned), counted with NumPy
            sd = load_file(str(seed_dir / "best_hf" / "model.safetensors"))
            enc = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2
                   and ".encoder.layer." in k]  # fmt: skip
            zeros = sum(v.size - np.count_nonzero(v) for v in enc) / sum(v.size for v in enc)
            assert zeros == pytest.approx(t, abs=1e-3) and run["sparsity"] == pytest.approx(
                t, abs=1e-3
            )
            # the sparse file holds exactly the exported weights' nonzeros
            back = jax.tree.leaves(prune.load_sparse(f))
            assert sum(np.count_nonzero(x) for x in back) == sum(
                np.count_nonzero(v) for v in sd.values()
            )
            assert sum(x.size for x in back) == sum(v.size for v in sd.values())
    # bigger sparsity, smaller file; all pruned files smaller than the float one
    assert levels[0.75]["size_mb"][0] < levels[0.5]["size_mb"][0] < rec["float"]["size_mb"]
    for q in rec["quant"]:
        assert q["size_mb"] * 2**20 == os.path.getsize(q["file"])
    q8, q4 = rec["quant"]
    kernels = sum(v.size for k, v in sd.items() if k.endswith("weight") and v.ndim == 2
                  and "embeddings" not in k)  # fmt: skip
    # the 4-bit codes take half a byte per kernel weight less than the 8-bit ones
    assert os.path.getsize(q8["file"]) - os.path.getsize(q4["file"]) == kernels // 2
    assert result["equal_size"]["lines"] == ["one model only: no equal-size comparison"]
    # sweep.md: the float point, two quantised ones, the two levels as mean ± std of the seeds
    md = (work / "sweep.md").read_text().splitlines()
    assert len(md) == 2 + 5 + 2 and md[-1] == "- one model only: no equal-size comparison"
    accs = [r["test"]["accuracy"] for r in levels[0.75]["runs"]]
    m, sd = np.mean(accs), np.std(accs, ddof=1)
    row = next(r for r in md if "| 75% pruned |" in r)
    assert f"| {m:.4f} ± {sd:.4f} |" in row if sd else f"| {m:.4f} |" in row


def test_quant_point_scores_the_file(swept, tiny_cls):
    """The 8-bit point's accuracy is the dequantised file's, and within half a step of float."""
    result, _ = swept
    q8 = result["models"]["tiny"]["quant"][0]
    qp, _, _ = quantize.load_compact(Path(q8["file"]).parent)
    deq = quantize.dequantize_params(qp)
    orig = hf.load_pretrained(tiny_cls, "seq_cls").params
    k = orig["encoder"]["layer"]["attention"]["query"]["kernel"]
    kq = np.asarray(deq["encoder"]["layer"]["attention"]["query"]["kernel"])
    step = np.abs(k).max(axis=-2, keepdims=True) / 127  # per output channel
    assert np.all(np.abs(kq - k) <= step / 2 + 1e-7)


def test_embedding_bits_rerun_reuses_the_levels_and_keeps_the_first_files(swept, tiny_cls):
    """A second run with --embedding_bits=8 in the same workdir: new quantised points (smaller
    files: the embedding table at 8 bits), the pruning levels' per-seed results read back
    unchanged, the outputs as sweep_emb8.* beside the first run's sweep.* (left as they were)."""
    result, work = swept
    first = (work / "sweep.json").read_text()
    cfg = _tiny_cfg(tiny_cls, work.parent)
    plan = sweep.Plan(targets=(0.5, 0.75), bits=(8,), per_round=0.3, steps_per_round=2,
                      seeds=(0, 1), embedding_bits=8)  # fmt: skip
    again = sweep.run(cfg, work, {"tiny": str(tiny_cls)}, plan)
    assert (work / "sweep.json").read_text() == first
    assert {f"sweep_emb8.{e}" for e in ("json", "png", "md")} <= {p.name for p in work.iterdir()}
    old, new = result["models"]["tiny"], again["models"]["tiny"]
    assert [p["runs"] for p in new["prune"]] == [p["runs"] for p in old["prune"]]
    q8 = new["quant"][0]
    assert q8["embedding_bits"] == 8 and Path(q8["file"]).parent.parent.name == "quant_8bit_emb8"
    assert q8["size_mb"] < old["quant"][0]["size_mb"]


def _script():
    spec = importlib.util.spec_from_file_location(
        "compress_sweep", ROOT / "scripts/compress_sweep.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--models=large"], "--models expects name=DIR"),
        (["--models=a=/nowhere"], "no config.json in /nowhere"),
        (["--models=a=/x", "--targets=0.3,abc"], "--targets expects a comma-separated list"),
        (["--models=a=/x", "--targets=1.0"], "pruning target must be in [0, 1)"),
        (["--models=a=/x", "--bits=9"], "bits must be an integer from 2 to 8, got 9"),
        (["--models=a=/x", "--steps_per_round=0"], "steps_per_round must be >= 1"),
        (["--models=a=/x", "--mode=other"], "--mode must be sweep or pipeline"),
        (["--models=a=/x", "--mode=pipeline"], "expects --models=teacher=DIR,student=DIR"),
        (["--models=a=/x,b=/y", "--mode=pipeline"], "teacher: no model.safetensors in /x"),
    ],
)
def test_bad_requests_one_line(flags, expect, tmp_path, capsys):
    from flaxdistil import runner

    argv = ["--config", str(ROOT / "configs/task_tiny.py"), "--workdir", str(tmp_path), *flags]
    with pytest.raises(SystemExit) as e:
        runner.run(_script().main, argv, flags=_script().FLAGS)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err


@pytest.fixture(scope="module")
def tiny_student(tiny_cls, tmp_path_factory):
    """The tiny classifier's first layer alone: a 1-layer 'distilled student'."""
    from flaxdistil import derive_student

    pre = hf.load_pretrained(tiny_cls, "seq_cls")
    params, cfg, _ = derive_student(pre.params, pre.config, layers=[0])
    out = tmp_path_factory.mktemp("tiny_student") / "hf"
    return hf.save_pretrained(out, params, cfg, "seq_cls", tokenizer_from=tiny_cls)


def test_pipeline_table(tiny_cls, tiny_student, tmp_path):
    from flaxdistil import compress_table

    cfg = _tiny_cfg(tiny_cls, tmp_path)
    out = compress_table.table(cfg, tiny_cls, tiny_student, tmp_path / "p", heads_keep=2,
                               ffn_keep=32, max_examples=16, runs=3)  # fmt: skip
    rows = {r["step"]: r for r in out["rows"]}
    assert list(rows) == list(compress_table.STEPS)
    for r in rows.values():
        assert r["size_mb"] * 2**20 == os.path.getsize(r["file"]) and r["latency_ms"] > 0
        assert 0 <= r["test"]["accuracy"] <= 1
    t, s, st, v, q, q8 = rows.values()
    assert (t["layers"], s["layers"]) == (2, 1)
    assert (st["heads"], st["ffn"]) == (2, 32) and st["params"] < s["params"]
    # the vocabulary kept: the tokens of the 48 training texts plus the special tokens
    assert v["vocab"] < 2000 and v["params"] < st["params"]
    # int8 keeps the pruned heads (save_compact holds the full config in its metadata)
    assert (q["heads"], q["vocab"]) == (2, v["vocab"]) and q["size_mb"] < v["size_mb"] / 2.5
    # the int8-matmul row: the same file, scored through its own forward (activations quantised
    # per token), so its loss moves a little from the dequantised row's
    assert (q8["file"], q8["params"], q8["heads"]) == (q["file"], q["params"], q["heads"])
    assert q8["test"]["loss"] != q["test"]["loss"]
    assert abs(q8["test"]["loss"] - q["test"]["loss"]) < 0.05
    assert (tmp_path / "p" / "pipeline.md").read_text().count("\n") == 8
