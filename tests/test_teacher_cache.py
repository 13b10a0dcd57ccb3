"""The on-disk teacher cache: per-example rows padded into the planner's batches, the fingerprint
over every key part, atomic builds (an interrupted one is never read), the refusal for general
distillation, and a cached task run equal to the live-teacher run (train.csv and final params)."""

import csv
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from flaxdistil import objective, teacher_cache
from flaxdistil.data.tasks import from_rows
from flaxdistil.jobs import task as task_job
from tests.test_teachers import tiny_task_cfg, two_teachers  # noqa: F401 - a fixture

LENGTHS = [3, 7, 5, 2, 6, 4]


def _rows():
    rng = np.random.RandomState(0)
    ids = [list(rng.randint(5, 99, n)) for n in LENGTHS]
    return from_rows(ids, None, np.zeros(len(ids), np.int32))


def _forward(ids, mask, types):
    """A stand-in teacher: per-token and per-example outputs that depend on the ids only at
    real tokens (what a masked encoder gives), junk at padding."""
    ids = np.asarray(ids, np.float32)
    m = np.asarray(mask, np.float32)
    hidden = np.stack([ids * m + 0.5, ids * m * 2 - 1], -1) + (1 - m)[..., None] * 99
    scores = (
        ids[:, None, :, None] * 0.01 + ids[:, None, None, :] + np.arange(2)[None, :, None, None]
    )
    logits = np.stack([(ids * m).sum(1), m.sum(1), -(ids * m).sum(1) / 7], -1)
    return {"logits": logits, "hidden1": hidden, "attention1": scores}


TEMPLATES = {"logits": [3], "hidden1": ["L", 2], "attention1": [2, "L", "L"]}


def _build(tmp_path, dtype="float32", name="entry", **kw):
    parts = {"test": name, "dtype": dtype}
    return teacher_cache.build(tmp_path / name, _forward, _rows(), parts, TEMPLATES, dtype, 0,
                               batch_size=4, **kw)  # fmt: skip


def test_rows_are_each_examples_outputs_padded_with_zeros(tmp_path):
    cache = _build(tmp_path)
    rows = _rows()
    idx, width = np.array([4, 1, 3]), 9
    want = _forward(*_padded(rows, idx, width))
    got = {n: cache.rows(n, idx, width) for n in TEMPLATES}
    np.testing.assert_array_equal(got["logits"], want["logits"])
    for r, i in enumerate(idx):
        n = LENGTHS[i]
        np.testing.assert_array_equal(got["hidden1"][r, :n], want["hidden1"][r, :n])
        np.testing.assert_array_equal(
            got["attention1"][r, :, :n, :n], want["attention1"][r, :, :n, :n]
        )
        assert not got["hidden1"][r, n:].any() and not got["attention1"][r, :, n:].any()
        assert not got["attention1"][r, :, :, n:].any()
    assert got["attention1"].shape == (3, 2, width, width)


def _padded(rows, idx, width):
    ids = np.zeros((len(idx), width), np.int32)
    mask = np.zeros_like(ids)
    for r, i in enumerate(idx):
        lo, hi = rows.offsets[i], rows.offsets[i + 1]
        ids[r, : hi - lo], mask[r, : hi - lo] = rows.input_ids[lo:hi], 1
    return ids, mask, np.zeros_like(ids)


def test_bfloat16_cache_holds_the_rounded_values_in_half_the_bytes(tmp_path):
    full, half = _build(tmp_path), _build(tmp_path, "bfloat16", "half")
    got = half.example("hidden1", 1)
    assert got.dtype == ml_dtypes.bfloat16
    want = full.example("hidden1", 1).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    assert half.arrays["attention1"].nbytes * 2 == full.arrays["attention1"].nbytes


def test_an_interrupted_build_is_never_read(tmp_path, monkeypatch):
    """A build that raises removes its temp dir; one killed (no cleanup: rmtree disabled here)
    leaves only its temp dir, which is no entry; the final path only appears complete."""
    parts = {"test": "entry", "dtype": "float32"}

    def stop(b):
        if b == 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        _build(tmp_path, on_batch=stop)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(teacher_cache.shutil, "rmtree", lambda *a, **k: None)  # like SIGKILL
    with pytest.raises(RuntimeError):
        _build(tmp_path, on_batch=stop)
    monkeypatch.undo()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith("entry.tmp-") and not (left / "meta.json").exists()
    assert not teacher_cache.is_complete(tmp_path / "entry", parts)
    cache = _build(tmp_path)  # a fresh build ignores the leftover and completes
    assert teacher_cache.is_complete(tmp_path / "entry", parts)
    assert cache.meta["complete"] is True
    # an entry whose meta says another key is not this one's
    meta = json.loads((cache.path / "meta.json").read_text())
    assert not teacher_cache.is_complete(cache.path, {**parts, "dtype": "bfloat16"})
    assert meta["key"] == parts


class _Teacher:
    def __init__(self, params, config="cfg", dtype="float32"):
        self.params, self.config, self.dtype = params, config, dtype


def test_the_fingerprint_changes_with_every_key_part():
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    rows = _rows()
    targets = [("logits", "logits", None), ("hidden1", "hidden", 1)]
    base = dict(teacher=_Teacher(params), head="seq_cls", attention_impl="einsum", rows=rows,
                max_length=32, targets=targets, dtype="float32")  # fmt: skip
    key = lambda **kw: teacher_cache.fingerprint(teacher_cache.key_parts(**{**base, **kw}))
    fewer = from_rows([list(rows.input_ids[: rows.lengths[0]])], None, np.zeros(1, np.int32))
    retok = from_rows([[7] * n for n in LENGTHS], None, np.zeros(len(LENGTHS), np.int32))
    changed = {
        "teacher weights": key(teacher=_Teacher({"w": params["w"] + np.float32(1e-6)})),
        "teacher config": key(teacher=_Teacher(params, config="other")),
        "teacher dtype": key(teacher=_Teacher(params, dtype="bfloat16")),
        "data": key(rows=fewer),
        "tokenisation": key(rows=retok),
        "max length": key(max_length=64),
        "features": key(targets=targets[:1]),
        "cache dtype": key(dtype="bfloat16"),
        "head": key(head="token_cls"),
    }
    assert key() == key()  # deterministic
    assert len(set(changed.values()) | {key()}) == len(changed) + 1


def test_general_distillation_is_refused_in_one_line():
    obj = objective.Objective(task="mlm", use_kd=True)
    why = teacher_cache.refusal(obj)
    assert "general (MLM) distillation" in why and "dynamic masking" in why and "\n" not in why
    from configs import common

    cfg = common.base("general")
    cfg.teacher.cache = True
    with pytest.raises(ValueError, match="refused for general"):
        teacher_cache.prepare(cfg, [], obj, "mlm", _rows(), 0)
    cfg.teacher.cache = None
    assert teacher_cache.prepare(cfg, [], obj, "mlm", _rows(), 0) is None  # off: nothing


# ---------------------------------------------------------------- cached == live


def _run(cfg, work):
    res = task_job.run(cfg, work)
    with (work / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    return res, rows, load_file(work / "best_hf" / "model.safetensors")


def test_a_cached_run_equals_the_live_teacher_run(two_teachers, tmp_path, capsys):  # noqa: F811
    """Two teachers (KD + hidden and attention matches, so per-token features are cached and
    padded): train.csv and the final params of the cached run equal the live run's; a second
    cached run reads the entries; a change of max_length builds new ones."""
    small, big, student = two_teachers

    def cfg_(cache=None, max_length=32):
        c = tiny_task_cfg(student, tmp_path, steps=4)
        c.export.hf = True
        c.data.max_length = max_length
        att = {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse"}
        hid = {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse",
               "proj": ["linear", 32, 48]}  # fmt: skip
        c.teachers = [{"path": str(small), "intermediate_matches": [att]},
                      {"path": str(big), "weight": 2.0, "intermediate_matches": [hid]}]  # fmt: skip
        c.teacher.cache = cache
        return c

    _, live_rows, live_params = _run(cfg_(), tmp_path / "live")
    root = tmp_path / "cache"
    res, rows, params = _run(cfg_(str(root)), tmp_path / "cached")
    assert res["teacher_cache"] is True and len(list(root.iterdir())) == 2  # one per teacher
    assert "one pass of teacher" in capsys.readouterr().out
    assert list(rows[0]) == list(live_rows[0]) and len(rows) == len(live_rows) == 4
    for got, want in zip(rows, live_rows):
        for k in want:
            if k != "step":
                np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=2e-5, atol=1e-7)
    assert params.keys() == live_params.keys()
    for k in params:
        np.testing.assert_allclose(params[k], live_params[k], rtol=1e-5, atol=1e-6)

    _, again, _ = _run(cfg_(str(root)), tmp_path / "cached2")
    assert "teacher cache: reading" in capsys.readouterr().out
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]  # read back bit for bit
    _run(cfg_(str(root), max_length=24), tmp_path / "cached3")
    assert "one pass of teacher" in capsys.readouterr().out
    assert len([p for p in root.iterdir() if not p.name.count(".tmp-")]) == 4
    assert not any(".tmp-" in p.name for p in Path(root).iterdir())
