"""Teacher outputs cached on disk (``teacher.cache``): one pass, then every epoch and run reads it.

TextBrewer's "feed cached values" / ``is_caching_logits``, on disk and per example: one pass
over the training rows stores what the loss reads of each teacher (objective.target_specs: its
logits, and the hidden / attention / q-k-v features of its matches), each example's arrays cut
to its own length. Training batches (``CachedBatches``, the batch planner's own shuffled,
length-grouped batches) fetch their rows and pad them to the batch's width with zeros, which
every loss masks out; the step then runs no teacher at all.

An entry is ``<root>/<fingerprint>/`` with root ``<flaxdistil cache>/teacher_outputs``
(``teacher.cache=True``) or the directory given. The fingerprint hashes the teacher's weights,
config, head and compute dtype, the training rows' token ids (data, tokenisation and max length
together; those of its own tokenizer for a teacher that has one) and max length, the targets
stored and their dtype (``teacher.cache_dtype``): a change of any of them is another entry,
built anew. A build writes into ``<fingerprint>.tmp-*``, fsyncs
every file, writes ``meta.json`` last and renames the directory into place, so an interrupted
build never leaves an entry that looks complete.

Refused (one line saying why) where the teacher's inputs change every step: general
distillation masks tokens anew at each step (``refusal``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from flaxdistil import objective, train
from flaxdistil.data.batching import Batches, eval_batches

FORMAT = 1
DTYPES = ("float32", "bfloat16")


def refusal(obj: objective.Objective) -> str | None:
    """Why the teacher's outputs cannot be cached for this objective (None: they can)."""
    if obj.task == "mlm":
        return (
            "teacher.cache is refused for general (MLM) distillation: the teacher's inputs change "
            "at every step (dynamic masking draws new masked tokens), so no output can be stored "
            "once and reused"
        )
    if not obj.needs_teacher:
        return "teacher.cache is set but nothing reads a teacher (no KD and no matches)"
    return None


def root_dir(setting) -> Path | None:
    """teacher.cache: None / False / '' off, True the default root, else a directory."""
    from flaxdistil import assets

    if setting is None or setting is False or setting == "":
        return None
    if setting is True or str(setting).lower() == "true":
        return assets.cache_dir() / "teacher_outputs"
    return Path(setting).expanduser()


# ---------------------------------------------------------------- the key


def digest_arrays(arrays) -> str:
    """sha256 of arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def params_digest(params) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    names = [jax.tree_util.keystr(p) for p, _ in leaves]
    return digest_arrays([np.asarray(json.dumps(names))] + [np.asarray(x) for _, x in leaves])


def key_parts(teacher, head: str, attention_impl: str, rows, max_length: int, targets, dtype):
    """What the stored outputs depend on (``fingerprint`` hashes it; meta.json keeps it)."""
    return {
        "format": FORMAT,
        "teacher_weights": params_digest(teacher.params),
        "teacher_config": repr(teacher.config),
        "head": head,
        "compute_dtype": str(teacher.dtype),
        "attention_impl": attention_impl,
        "data": digest_arrays([rows.input_ids, rows.token_type_ids, rows.lengths]),
        "examples": len(rows),
        "max_length": int(max_length),
        "targets": [list(t) for t in targets],
        "dtype": dtype,
    }


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- shapes


def token_axes(feature: str, token_level_logits: bool) -> tuple[int, ...]:
    """Axes of one example's array that run over its tokens (cut to its length on disk)."""
    if feature == "logits":
        return (0,) if token_level_logits else ()
    return (1, 2) if feature == "attention" else (0,)


def _shape(template, length: int) -> tuple[int, ...]:
    return tuple(length if d == "L" else d for d in template)


class TeacherCache:
    """One complete entry, memory-mapped: ``rows(name, idx, width)`` -> [B, ...] padded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.lengths = np.load(self.path / "lengths.npy")
        self.arrays, self.offsets = {}, {}
        for name, template in self.meta["templates"].items():
            raw = np.load(self.path / f"{name}.npy", mmap_mode="r")
            self.arrays[name] = raw.view(ml_dtypes.bfloat16) if raw.dtype == np.uint16 else raw
            sizes = [int(np.prod(_shape(template, n))) for n in self.lengths]
            self.offsets[name] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def names(self) -> list[str]:
        return list(self.meta["templates"])

    def example(self, name: str, i: int) -> np.ndarray:
        lo, hi = self.offsets[name][i], self.offsets[name][i + 1]
        template = self.meta["templates"][name]
        return np.asarray(self.arrays[name][lo:hi]).reshape(_shape(template, self.lengths[i]))

    def rows(self, name: str, idx, width: int) -> np.ndarray:
        template = self.meta["templates"][name]
        out = np.zeros((len(idx), *_shape(template, width)), self.arrays[name].dtype)
        for r, i in enumerate(idx):
            x = self.example(name, i)
            out[(r, *(slice(0, n) for n in x.shape))] = x
        return out


def is_complete(path: Path, parts: dict) -> bool:
    meta = path / "meta.json"
    if not meta.exists():
        return False
    try:
        m = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    return m.get("complete") is True and m.get("key") == parts


# ---------------------------------------------------------------- the build


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(path: Path, forward, rows, parts: dict, templates: dict, dtype: str, pad_id: int,
          batch_size: int = 64, on_batch=None) -> TeacherCache:  # fmt: skip
    """One pass of ``forward(ids, mask, types) -> {name: [B, ...]}`` over ``rows`` into the
    entry ``path``, atomically (temp dir, fsync, rename). ``on_batch(i)`` is called after each
    batch (tests interrupt a build with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        _write(tmp, forward, rows, parts, templates, dtype, pad_id, batch_size, on_batch)
        try:
            os.rename(tmp, path)  # atomic: the entry appears complete or not at all
        except OSError:  # another process renamed its build first: the same key, keep that one
            if not is_complete(path, parts):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TeacherCache(path)


def _write(tmp, forward, rows, parts, templates, dtype, pad_id, batch_size, on_batch) -> None:
    lengths = np.asarray(rows.lengths)
    store = np.uint16 if dtype == "bfloat16" else np.float32  # .npy has no bfloat16
    maps, offsets = {}, {}
    for name, template in templates.items():
        sizes = [int(np.prod(_shape(template, n))) for n in lengths]
        offsets[name] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        maps[name] = np.lib.format.open_memmap(
            tmp / f"{name}.npy", mode="w+", dtype=store, shape=(int(offsets[name][-1]),)
        )
    for b, (idx, batch) in enumerate(eval_batches(rows, batch_size, pad_id)):
        out = jax.device_get(forward(*train._inputs(batch)))
        for name, template in templates.items():
            x = np.asarray(out[name], np.float32)
            if dtype == "bfloat16":
                x = x.astype(ml_dtypes.bfloat16).view(np.uint16)
            for r, i in enumerate(idx):
                shape = _shape(template, lengths[i])
                piece = x[(r, *(slice(0, n) for n in shape))]
                maps[name][offsets[name][i] : offsets[name][i + 1]] = piece.reshape(-1)
        if on_batch is not None:
            on_batch(b)
    for name, mm in maps.items():
        mm.flush()
        del mm
        _fsync(tmp / f"{name}.npy")
    np.save(tmp / "lengths.npy", lengths)
    _fsync(tmp / "lengths.npy")
    meta = {"complete": True, "key": parts, "templates": templates, "dtype": dtype}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the entry whole
    _fsync(tmp / "meta.json")
    _fsync(tmp)


def templates_for(obj: objective.Objective, k: int, forward, width: int = 8) -> dict:
    """{target name: per-example shape with 'L' on token axes}, from the traced output shapes."""
    token_level = obj.task in ("token_classification", "qa")
    ones = np.ones((1, width), np.int32)
    shapes = jax.eval_shape(forward, ones, ones, np.zeros_like(ones))
    out = {}
    for name, feat, _ in objective.target_specs(obj, k):
        shape = list(shapes[name].shape[1:])
        for axis in token_axes(feat, token_level):
            shape[axis] = "L"
        out[name] = shape
    return out


# ---------------------------------------------------------------- in training


class CachedBatches(Batches):
    """The batch planner's batches with every teacher's cached targets added
    (``objective.batch_key(k, name)``), padded to the batch's width."""

    def __init__(self, encoded, batch_size, seed, pad_id, pad_multiple, caches, **kw):
        super().__init__(encoded, batch_size, seed, pad_id, pad_multiple, **kw)
        for k, c in enumerate(caches):
            rows = self.teacher_rows.get(k, (encoded,))[0]  # a teacher's own tokens, if any
            if not np.array_equal(c.lengths, rows.lengths):
                raise ValueError(f"teacher cache {c.path} does not hold these training rows")
        self.caches = caches

    def make_batch(self, indices):
        batch = super().make_batch(indices)  # this process's rows (select_rows) of the batch
        mine = indices[slice(*self.rows)]
        for k, cache in enumerate(self.caches):
            own = objective.batch_key(k, "input_ids")  # its own tokens' width, if it has them
            width = batch[own if own in batch else "input_ids"].shape[1]
            for name in cache.names:
                batch[objective.batch_key(k, name)] = cache.rows(name, mine, width)
        return batch


def prepare(cfg, teacher_list, obj, head: str, rows, pad_id: int) -> list[TeacherCache] | None:
    """The caches of every teacher for these training rows (read, or built now), or None when
    ``teacher.cache`` is off. Refuses, in one line, an objective whose teacher inputs change."""
    root = root_dir(cfg.teacher.cache)
    if root is None:
        return None
    why = refusal(obj)
    if why:
        raise ValueError(why)
    dtype = cfg.teacher.cache_dtype
    if dtype not in DTYPES:
        raise ValueError(f"teacher.cache_dtype must be one of {DTYPES}, got {dtype!r}")
    caches = []
    for k, teacher in enumerate(teacher_list):
        model = teacher.model(head, cfg.train.attention_impl)
        forward = _forward(obj, k, model, teacher.run_params())
        specs = objective.target_specs(obj, k)
        t_rows, t_pad = rows, pad_id
        if teacher.own_tokenizer is not None:  # it reads (and the key covers) its own token ids
            t_rows, t_pad = teacher.rows, teacher.own_tokenizer.pad_token_id
        parts = key_parts(
            teacher, head, cfg.train.attention_impl, t_rows, cfg.data.max_length, specs, dtype
        )
        path = root / fingerprint(parts)
        if is_complete(path, parts):
            print(f"teacher cache: reading {path} (teacher {teacher.path})", flush=True)
            caches.append(TeacherCache(path))
            continue
        if path.exists():  # not a complete entry of this key: never read, replaced
            shutil.rmtree(path)
        print(f"teacher cache: one pass of teacher {teacher.path} over {len(rows):,} training "
              f"examples into {path}", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        templates = templates_for(obj, k, forward)
        caches.append(build(path, forward, t_rows, parts, templates, dtype, t_pad,
                            cfg.eval.batch_size))  # fmt: skip
        took = time.perf_counter() - t0
        print(f"teacher cache: {_size_mb(path):.2f} MB written in {took:.1f}s", flush=True)
    return caches


def _forward(obj, k: int, model, params):
    apply = jax.jit(
        lambda p, ids, mask, types: objective.teacher_targets(
            obj, k, model.apply({"params": p}, ids, mask, types, **obj.teacher_outputs(k))
        )
    )
    return lambda ids, mask, types: apply(params, ids, mask, types)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).iterdir()) / 2**20
