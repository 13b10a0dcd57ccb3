"""Weight quantisation at 2-8 bits: post-training (quantize_params / dequantize_params),
quantisation-aware training (fake_quantize_params with a straight-through estimator, the
train.qat_* fields), and a compact checkpoint that flaxdistil.load_pretrained reads back
(save_compact). The forward on the quantised weights is flaxdistil/quantized_forward.py
(``quantize.inference_fn``).

A quantised matrix is a QTensor: integer values ``q`` (int8 in memory at every bit width), one
float32 scale per output channel, or per ``group_size`` consecutive inputs of a channel, and with
``symmetric=False`` an integer zero point: ``w ~= (q - zero) * scale``. Its layout is
[..., rows, cols] with a row per output channel and the groups along cols, the axis a matmul
sums over: a Dense kernel [in, out] is kept transposed, [out, in] (HF's layout, and the one the
int8 matmul of quantized_forward.py runs fastest with: 2x the [in, out] one on this project's
CPU), an embedding table [V, D] as it is (a scale per token row). A leading layer axis of scanned
params stays in front, so students slice and unstack_layers splits QTensors like any leaf.

Written here rather than with Qwix (qwix 0.1.8): its quantised types are jnp dtypes (int8, int4,
int2, fp8), so 3- and 6-bit weights do not exist there, and its interception rewrites every
dot_general of a module, where this project needs the Dense kernels and embedding tables only,
a packed on-disk format of its own that load_pretrained reads, and per-layer control of the
int8 matmul (see quantized_forward.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

BITS = range(2, 9)
COMPACT_FILE = "model.quant.safetensors"  # beside an HF config.json; hf.WEIGHT_FILES reads it
FORMAT = "flaxdistil-quant-1"


@flax.struct.dataclass
class QTensor:
    # q first: flax checks a param's shape against its first leaf, so a module that reads an
    # embedding table with self.param (nn.Embed.setup) accepts a QTensor in its place.
    q: jax.Array  # int8 [..., R, C], values in [-2^(bits-1), 2^(bits-1) - 1]
    scale: jax.Array  # float32 [..., R, C // group_size]
    zero: jax.Array | None  # int8 like scale (asymmetric), else None
    bits: int = flax.struct.field(pytree_node=False)
    group_size: int = flax.struct.field(pytree_node=False)
    transposed: bool = flax.struct.field(pytree_node=False)  # a Dense kernel stored [out, in]

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def shape(self) -> tuple:
        """The float tensor's shape (a kernel's [..., in, out])."""
        s = tuple(self.q.shape)
        return s[:-2] + (s[-1], s[-2]) if self.transposed else s

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        q = _groups(self.q.astype(jnp.float32), self.group_size)
        if self.zero is not None:
            q = q - self.zero.astype(jnp.float32)[..., None]
        w = (q * self.scale[..., None]).reshape(self.q.shape)
        return (jnp.swapaxes(w, -1, -2) if self.transposed else w).astype(dtype)

    def astype(self, dtype) -> jax.Array:
        """The float tensor: what the tied MLM decoder reads from a quantised embedding table."""
        return self.dequantize(dtype)


def is_qtensor(x) -> bool:
    return isinstance(x, QTensor)


def _groups(x, group_size: int):
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def check_bits(bits, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits not in BITS:
        raise ValueError(f"{what} must be an integer from 2 to 8, got {bits!r}")
    return int(bits)


def scale_zero(x_grouped, bits: int, symmetric: bool):
    """Per-group scale (and zero point) over the last axis of [..., G, g].

    Symmetric: the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|x| / (2^(b-1) - 1),
    so +-max|x| are exact and the codes are symmetric around 0. Asymmetric: the full range
    [-2^(b-1), 2^(b-1) - 1] spans [min(x, 0), max(x, 0)] (0 exactly representable), with an
    integer zero point. Either way every value is within scale / 2 of its dequantised code."""
    qmax = 2 ** (bits - 1) - 1
    if symmetric:
        scale = jnp.max(jnp.abs(x_grouped), axis=-1) / qmax
        return jnp.where(scale > 0, scale, 1.0), None
    lo = jnp.minimum(jnp.min(x_grouped, axis=-1), 0.0)
    hi = jnp.maximum(jnp.max(x_grouped, axis=-1), 0.0)
    scale = (hi - lo) / (2**bits - 1)
    scale = jnp.where(scale > 0, scale, 1.0)
    zero = jnp.clip(jnp.round(-(qmax + 1) - lo / scale), -(qmax + 1), qmax)
    return scale, zero


def quantize_tensor(
    w, *, bits: int, group_size: int | None = None, symmetric: bool = True, transposed=False
) -> QTensor:
    """One float tensor -> QTensor; ``transposed`` for a Dense kernel [..., in, out]."""
    x = jnp.asarray(w, jnp.float32)
    x = jnp.swapaxes(x, -1, -2) if transposed else x
    g = group_size or x.shape[-1]
    xg = _groups(x, g)
    scale, zero = scale_zero(xg, bits, symmetric)
    qmax = 2 ** (bits - 1) - 1
    codes = jnp.round(xg / scale[..., None])
    if symmetric:
        codes = jnp.clip(codes, -qmax, qmax)
    else:
        codes = jnp.clip(codes + zero[..., None], -(qmax + 1), qmax)
    zero = None if zero is None else zero.astype(jnp.int8)
    return QTensor(codes.reshape(x.shape).astype(jnp.int8), scale, zero, bits, g, transposed)


# ---------------------------------------------------------------- params


@dataclasses.dataclass(frozen=True)
class Scheme:
    """What to quantise: every Dense kernel at ``bits``; embedding tables at ``embeddings`` bits
    (0: kept in float; they are most of a small student's weights, so they get their own)."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    embeddings: int = 0

    @classmethod
    def make(cls, bits, group_size=None, symmetric=True, embeddings=False) -> Scheme:
        bits = check_bits(bits)
        if embeddings is True:
            embeddings = bits
        embeddings = check_bits(embeddings, "embeddings bits") if embeddings else 0
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0
        ):
            raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
        return cls(bits, group_size or None, bool(symmetric), embeddings)

    def bits_for(self, path: tuple[str, ...], x) -> int:
        """The bit width for one leaf, 0 to keep it float."""
        if path[-1] == "kernel" and np.ndim(x) >= 2:
            return self.bits
        if path[-1] == "embedding" and self.embeddings:
            return self.embeddings
        return 0


def _path(p) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in p)


def _map_quantisable(params, scheme: Scheme, fn):
    """fn(path, x, bits) on every leaf the scheme quantises; the rest unchanged."""

    def one(p, x):
        path = _path(p)
        bits = scheme.bits_for(path, x)
        if not bits:
            return x
        cols = np.shape(x)[-2] if path[-1] == "kernel" else np.shape(x)[-1]
        if scheme.group_size and cols % scheme.group_size:
            what = "input dimension" if path[-1] == "kernel" else "width"
            raise ValueError(
                f"group_size {scheme.group_size} does not divide the {what} {cols} of "
                f"{'/'.join(path)}: expected a divisor of every quantised matrix's {what}"
            )
        return fn(path, x, bits)

    return jax.tree_util.tree_map_with_path(one, params)


def quantize_params(params, *, bits, group_size=None, symmetric=True, embeddings=False):
    """Post-training quantisation: the params tree with each Dense kernel (and, with
    ``embeddings`` True or a bit width, each embedding table) replaced by a QTensor; biases,
    LayerNorms and unquantised tables stay float. Works on scanned (stacked) and per-layer
    params. Raises ValueError for bits outside 2-8 or a group size that divides not every
    quantised matrix's reduction axis."""
    scheme = Scheme.make(bits, group_size, symmetric, embeddings)
    return _map_quantisable(
        params,
        scheme,
        lambda path, x, b: quantize_tensor(
            x,
            bits=b,
            group_size=scheme.group_size,
            symmetric=scheme.symmetric,
            transposed=path[-1] == "kernel",
        ),
    )


def dequantize_params(qparams):
    """Float params (the input tree of quantize_params) from quantised ones."""
    return jax.tree.map(
        lambda x: np.asarray(x.dequantize()) if is_qtensor(x) else x, qparams, is_leaf=is_qtensor
    )


# ---------------------------------------------------------------- quantisation-aware training


def fake_quantize(w, *, bits, group_size=None, symmetric=True, transposed=False):
    """The dequantised value of w in the forward, the identity in the backward (the
    straight-through estimator: d out / d w = 1, rounding and clipping included)."""
    q = quantize_tensor(
        jax.lax.stop_gradient(w),
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        transposed=transposed,
    )
    return w + jax.lax.stop_gradient(q.dequantize(w.dtype) - w)


def fake_quantize_params(params, scheme: Scheme):
    """What train_step applies to the student's params with train.qat_bits set: every leaf that
    quantize_params would quantise, fake-quantised; the params themselves stay float."""
    return _map_quantisable(
        params,
        scheme,
        lambda path, x, b: fake_quantize(
            x,
            bits=b,
            group_size=scheme.group_size,
            symmetric=scheme.symmetric,
            transposed=path[-1] == "kernel",
        ),
    )


def qat_scheme(train_cfg) -> Scheme | None:
    """train.qat_bits (0 = off), train.qat_group_size (0 = per channel), train.qat_symmetric
    (False: a zero point per channel or group), train.qat_embeddings (0 = float embeddings,
    else their bits) -> the Scheme train_step fake-quantises with."""
    bits = train_cfg.get("qat_bits", 0)
    if not bits:
        return None
    symmetric = train_cfg.get("qat_symmetric", True)
    try:
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
        return Scheme.make(
            bits, train_cfg.get("qat_group_size", 0), symmetric, train_cfg.get("qat_embeddings", 0)
        )
    except ValueError as e:
        raise ValueError(f"train.qat_*: {e}") from None


# ---------------------------------------------------------------- packing


def pack(q, bits: int) -> np.ndarray:
    """int8 codes -> bytes: 8-bit as int8; fewer bits as a dense bit stream of the offset codes
    q + 2^(bits-1) (4 bits: two codes per byte, the first in the high nibble)."""
    q = np.asarray(q, np.int8).ravel()
    if bits == 8:
        return q
    u = (q.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    planes = np.unpackbits(u[:, None], axis=1)[:, 8 - bits :]  # [n, bits], high bit first
    return np.packbits(planes.ravel())


def unpack(data: np.ndarray, bits: int, shape) -> np.ndarray:
    n = int(np.prod(shape))
    if bits == 8:
        return np.asarray(data, np.int8).reshape(shape)
    planes = np.unpackbits(np.asarray(data, np.uint8))[: n * bits].reshape(n, bits)
    u = np.packbits(np.pad(planes, ((0, 0), (8 - bits, 0))), axis=1)[:, 0]
    return (u.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8).reshape(shape)


# ---------------------------------------------------------------- compact checkpoint


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + (k,))
        else:
            yield "/".join(prefix + (k,)), v


def save_compact(qparams, config, out_dir, head: str | None = "mlm", *, tokenizer_from=None):
    """Write ``model.quant.safetensors`` (packed codes, float32 scales and zero points, the float
    leaves) + HF ``config.json`` (+ tokenizer files) to out_dir, written to a temporary sibling
    and renamed into place. ``flaxdistil.load_pretrained(out_dir, head)`` reads it back as
    dequantised float params; ``load_compact`` as QTensors."""
    from safetensors.numpy import save_file

    from flaxdistil import hf

    tensors, layout = {}, {}
    for name, x in _flat(jax.device_get(qparams)):
        if not is_qtensor(x):
            tensors[name] = np.ascontiguousarray(np.asarray(x, np.float32))
            continue
        tensors[f"{name}:q"] = pack(x.q, x.bits)
        tensors[f"{name}:scale"] = np.asarray(x.scale, np.float32)
        if x.zero is not None:
            tensors[f"{name}:zero"] = np.asarray(x.zero, np.int8)
        layout[name] = dict(
            bits=x.bits, group_size=x.group_size, transposed=x.transposed, shape=list(x.q.shape)
        )
    # The full config rides in the metadata: config.json cannot describe pruned heads (it holds
    # config.hf_view, and load_pretrained gets the pruned heads back as zero heads).
    meta = {
        "format": FORMAT,
        "head": json.dumps(head),
        "quantized": json.dumps(layout),
        "config": json.dumps(config.to_json()),
    }
    with hf.atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / COMPACT_FILE), metadata=meta)
        hf.write_config(tmp, config.hf_view, head, tokenizer_from)
    return Path(out_dir).resolve()


def _read_compact_file(f: Path):
    """(qparams, head, config) from a model.quant.safetensors file; config from config.json
    beside it in files written before the metadata held it."""
    from safetensors import safe_open

    from flaxdistil import hf
    from flaxdistil.models import ModelConfig

    with safe_open(str(f), "numpy") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{f} is not a flaxdistil compact checkpoint (format {FORMAT!r})")
        layout = json.loads(meta["quantized"])
        raw = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iter
    params: dict = {}
    for name in [k for k in raw if ":" not in k] + list(layout):
        if name in layout:
            d = layout[name]
            value = QTensor(
                unpack(raw[f"{name}:q"], d["bits"], d["shape"]),
                raw[f"{name}:scale"],
                raw.get(f"{name}:zero"),
                d["bits"],
                d["group_size"],
                d["transposed"],
            )
        else:
            value = raw[name]
        *parents, leaf = name.split("/")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if "config" in meta:
        cfg = ModelConfig.from_json(json.loads(meta["config"]))
    else:
        cfg = ModelConfig.from_hf(hf.read_config(f.parent))
    return params, json.loads(meta["head"]), cfg


def load_compact(path):
    """(qparams, config, head) of a compact checkpoint directory (save_compact's)."""
    from flaxdistil import hf

    ckpt = hf.resolve(path)
    if not (ckpt / COMPACT_FILE).exists():
        raise FileNotFoundError(f"no {COMPACT_FILE} in {ckpt}: expected a save_compact directory")
    qparams, head, cfg = _read_compact_file(ckpt / COMPACT_FILE)
    return qparams, cfg, head


def read_compact_state_dict(f: Path) -> dict[str, np.ndarray]:
    """The HF state dict (float32, dequantised) of a compact checkpoint: what hf.read_state_dict
    hands load_pretrained, so loading goes through the one mapping table like any checkpoint."""
    from flaxdistil import hf, prune_structured

    qparams, head, cfg = _read_compact_file(f)
    params, cfg = prune_structured.full_heads(dequantize_params(qparams), cfg)
    return hf.convert_to_hf(params, cfg, head)


def inference_fn(source, config=None, head="mlm", **kw):
    """quantized_forward.inference_fn: a jitted forward on quantised params (see there)."""
    from flaxdistil import quantized_forward

    return quantized_forward.inference_fn(source, config, head, **kw)
