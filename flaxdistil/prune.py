"""Unstructured magnitude pruning: masks, seed 004's iterative schedule, and an optax wrapper that
holds the masks through fine-tuning (jaxpruner's design: the masks live in the optimizer state).

``magnitude_masks(params, 0.5, scope='global')`` keeps the largest half of the eligible weights
(True = keep); ``scope='layer'`` prunes every layer of a stacked leaf and every other leaf to the
sparsity on its own. Eligible by default: the transformer layers' linear kernels; embeddings,
LayerNorm, biases, the pooler and the task head are left alone (``eligible(params,
embeddings=True, heads=True)`` adds them). ``pruning(tx, sparsity=0.7, rounds=3,
total_steps=T)`` prunes at steps 0, T/3, 2T/3 a fraction f = 1 - (1 - 0.7)^(1/3) of the weights
still there, fine-tuning in between, and after every update sets the pruned weights back to
exactly zero. ``save_sparse`` / ``load_sparse`` store a pruned model as its size on disk counts
it (a 1-bit mask + the nonzero values per tensor, where that is smaller than dense).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCOPES = ("global", "layer")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def eligible(params, *, embeddings: bool = False, heads: bool = False):
    """Tree of bools: the leaves magnitude pruning may touch. Kernels of the encoder's layers (and
    of the pooler and the heads with heads=True); word/position/type embedding tables with
    embeddings=True. Never LayerNorm or biases (a few parameters each, and pruning them shifts
    every activation).

    The pooler goes with the heads: it is one matrix that feeds the classifier alone, and its
    weights can be far smaller than the layers' (all-MiniLM-L6-v2's was never trained for
    classification), so a global threshold removes it first: at 70% global sparsity the
    fine-tuned sentiment MiniLM kept 0.0% of its pooler (the layers 12-53% each), its pooled
    output became tanh(bias) for every input and the classifier answered one class."""

    def ok(path, _):
        p = _path_str(path)
        leaf = p.rsplit("/", 1)[-1]
        if leaf == "embedding":
            return embeddings
        if p.startswith("encoder/pooler/"):
            return heads and leaf == "kernel"
        return leaf == "kernel" and (p.startswith("encoder/") or heads)

    return jax.tree_util.tree_map_with_path(ok, params)


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(
            f"{what} must be in [0, 1) (the share of weights set to zero), got {sparsity}"
        )
    return float(sparsity)


def _groups(path, x) -> jnp.ndarray:
    """[G, n]: the rows pruned separately under scope='layer' (a stacked leaf: one per layer)."""
    stacked = "/layer/" in f"/{_path_str(path)}/"
    return x.reshape(x.shape[0], -1) if stacked and x.ndim > 1 else x.reshape(1, -1)


def _keep_smallest_out(scores, k):
    """Boolean keep-mask over the last axis of scores [G, n]: False for the k smallest of each
    row (ties broken by position, so exactly k go). k may be traced."""
    order = jnp.argsort(scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks >= k


def magnitude_masks(params, sparsity, *, scope: str = "global", include=None):
    """Keep-masks (True = keep) pruning the `sparsity` share of the smallest |w| among the
    ``include`` leaves (default ``eligible(params)``): over all of them together (global) or
    per layer / per leaf (layer). Leaves not included get a scalar True. Jittable in sparsity."""
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {SCOPES}, got {scope!r}")
    include = eligible(params) if include is None else include
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = jax.tree.leaves(include)
    if not any(chosen):
        raise ValueError("magnitude pruning found no eligible weights (no encoder kernels)")
    masks = [jnp.ones((), bool)] * len(flat)
    if scope == "layer":
        for i, ((path, x), use) in enumerate(zip(flat, chosen)):
            if use:
                g = _groups(path, jnp.abs(x))
                k = jnp.round(sparsity * g.shape[1]).astype(jnp.int32)
                masks[i] = _keep_smallest_out(g, k).reshape(x.shape)
    else:
        picked = [i for i, use in enumerate(chosen) if use]
        scores = jnp.concatenate([jnp.abs(flat[i][1]).reshape(-1) for i in picked])
        k = jnp.round(sparsity * scores.size).astype(jnp.int32)
        keep = _keep_smallest_out(scores[None], k)[0]
        start = 0
        for i in picked:
            x = flat[i][1]
            masks[i] = keep[start : start + x.size].reshape(x.shape)
            start += x.size
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params, masks):
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, masks)


# ---------------------------------------------------------------- seed 004's schedule


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes the same fraction f of the weights that
    remain: 1 - (1 - f)^r, with f = 1 - (1 - sparsity)^(1/rounds); the last is `sparsity`."""
    check_sparsity(sparsity)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"pruning rounds must be an integer >= 1, got {rounds!r}")
    keep = (1.0 - sparsity) ** (1.0 / rounds)
    return [1.0 - keep**r for r in range(1, rounds)] + [float(sparsity)]


def round_steps(total_steps: int, rounds: int) -> list[int]:
    """The steps that prune: 0, T/rounds, 2T/rounds, ... (fine-tuning follows each round)."""
    if rounds > max(total_steps, 1):
        raise ValueError(f"{rounds} pruning rounds do not fit in {total_steps} training steps")
    return [r * total_steps // rounds for r in range(rounds)]


class PruningState(NamedTuple):
    count: jax.Array  # updates applied so far (the train step)
    masks: Any  # keep-masks, the params' tree (scalar True where nothing is pruned)
    inner: Any


def pruning(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    rounds: int,
    total_steps: int,
    scope: str = "global",
    include_fn=eligible,
) -> optax.GradientTransformation:
    """Wrap ``inner`` so that at each of ``round_steps`` the masks are recomputed from the
    magnitudes of the updated params (at ``round_sparsities``), and every update leaves masked
    weights at exactly zero: new params = mask * (params + inner update)."""
    sparsities = jnp.asarray(round_sparsities(sparsity, rounds), jnp.float32)
    steps = jnp.asarray(round_steps(total_steps, rounds), jnp.int32)
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {SCOPES}, got {scope!r}")

    def init(params):
        full = lambda x, use: jnp.ones(x.shape if use else (), bool)
        masks = jax.tree.map(full, params, include_fn(params))
        return PruningState(jnp.zeros((), jnp.int32), masks, inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("pruning needs the params in tx.update(grads, state, params)")
        updates, inner_state = inner.update(updates, state.inner, params)
        new = optax.apply_updates(params, updates)
        hit = steps == state.count
        include = include_fn(params)

        def reprune(_):
            s = jnp.max(jnp.where(hit, sparsities, 0.0))
            fresh = magnitude_masks(apply_masks(new, state.masks), s, scope=scope, include=include)
            # Only narrow: a weight pruned in an earlier round stays pruned.
            return jax.tree.map(lambda a, b: a & b, fresh, state.masks)

        masks = jax.lax.cond(hit.any(), reprune, lambda _: state.masks, None)
        final = apply_masks(new, masks)
        updates = jax.tree.map(lambda f, p: f - p, final, params)
        return updates, PruningState(state.count + 1, masks, inner_state)

    return optax.GradientTransformation(init, update)


def masks_of(opt_state):
    """The keep-masks inside an optimizer state built by `pruning` (None without one)."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruningState)):
        if isinstance(s, PruningState):
            return s.masks
    return None


# ---------------------------------------------------------------- reporting


def sparsity_rows(params, depth: int = 4) -> list[tuple[str, int, int]]:
    """(module path to `depth`, params, zeros) per module (its leaves summed), then the total."""
    rows: dict[str, list[int]] = {}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = "/".join(_path_str(path).split("/")[:-1][:depth])
        row = rows.setdefault(key, [0, 0])
        x = np.asarray(x)
        row[0] += x.size
        row[1] += int(x.size - np.count_nonzero(x))
    total = [sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())]
    return [(k, n, z) for k, (n, z) in rows.items()] + [("total", *total)]


def sparsity_of(params, include=None) -> float:
    """Share of exact zeros among the included leaves (default: the eligible ones)."""
    include = eligible(params) if include is None else include
    n = z = 0
    for x, use in zip(jax.tree.leaves(params), jax.tree.leaves(include)):
        if use:
            x = np.asarray(x)
            n, z = n + x.size, z + x.size - np.count_nonzero(x)
    return z / max(n, 1)


# ---------------------------------------------------------------- sparse storage on disk

SPARSE_FILE = "model.sparse.safetensors"
SPARSE_FORMAT = "flaxdistil-sparse-1"


def sparse_bytes(n: int, nonzeros: int) -> int:
    """Bytes of one stored tensor of n float32 values: dense 4 n, or a bitmask (one bit per
    position, packed) plus the nonzero values, ceil(n / 8) + 4 nonzeros, whichever is smaller."""
    return min(4 * n, -(-n // 8) + 4 * nonzeros)


def save_sparse(params, path) -> Path:
    """Write params to one safetensors file in which every tensor is stored dense (float32) or,
    where that is smaller (more than 1/32 of it zero), as a packed bitmask of its nonzero
    positions and their values in row-major order: the size on disk of a magnitude-pruned model
    (``os.path.getsize``). ``load_sparse`` reads it back exactly."""
    from safetensors.numpy import save_file

    tensors, shapes = {}, {}
    for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
        name, x = _path_str(p), np.asarray(x, np.float32)
        nz = np.count_nonzero(x)
        if sparse_bytes(x.size, nz) == 4 * x.size:
            tensors[name] = np.ascontiguousarray(x)
            continue
        flat = x.reshape(-1)
        tensors[f"{name}:mask"] = np.packbits(flat != 0)
        tensors[f"{name}:values"] = flat[flat != 0]
        shapes[name] = list(x.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": SPARSE_FORMAT, "sparse": json.dumps(shapes)})
    tmp.replace(path)
    return path.resolve()


def load_sparse(path) -> dict:
    """The params tree (NumPy float32) save_sparse wrote."""
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != SPARSE_FORMAT:
            raise ValueError(f"{path} is not a flaxdistil sparse file (format {SPARSE_FORMAT!r})")
        raw = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iter
    out: dict = {}
    for name, shape in json.loads(meta["sparse"]).items():
        n = int(np.prod(shape))
        keep = np.unpackbits(raw.pop(f"{name}:mask"), count=n).astype(bool)
        x = np.zeros(n, np.float32)
        x[keep] = raw.pop(f"{name}:values")
        raw[name] = x.reshape(shape)
    for name, x in raw.items():
        *parents, leaf = name.split("/")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = x
    return out
