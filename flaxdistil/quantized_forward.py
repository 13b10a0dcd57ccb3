"""The forward of a quantised model: the one linen Model, with flax's method interception
replacing each nn.Dense / nn.Embed whose param is a QTensor (flaxdistil/quantize.py).

Two matmuls for a quantised Dense:
 - "int8": the activations are quantised on the fly to int8, one scale per token row
   (max |x| / 127), multiplied with the int8 weights in an int8 x int8 -> int32
   jax.lax.dot_general, and the int32 result is scaled back by (row scale x channel scale).
   For per-channel symmetric weights (the default scheme) at any bit width <= 8; a grouped or
   asymmetric QTensor falls back to dequantising.
 - "dequant": the weights are dequantised to float32 inside the jitted forward and multiplied
   in float32 (the activations stay exact).
On XLA:CPU the int32-accumulating dot goes to YNNPACK (its int8 GEMM; Eigen's is ~4x slower than
its own float32 one), so the int8 forward is compiled with XLA's default options, the dequantising
one with Eigen's float32 dots (xla_cpu.inference_options), each the faster for it.

"dequant" is the default because it measured faster at batch 128: on this project's 2-core AMD
EPYC (AVX-512 VNNI), jaxlib 0.10.2, one [16384, 384] x [384, 1536] GEMM took 148 ms in Eigen
fp32, 132 ms in YNNPACK int8 and 178 ms with the dynamic activation quantisation and rescaling
around it, while PyTorch's quantize_dynamic took 83 ms (fp32: 190; reports/bench_quant_gemm.md,
`scripts/bench_quant.py --sections gemm`); and the whole int8 program has to run its float parts
(attention, fused norms) under YNNPACK too, so the 3-layer MiniLM forward at batch 128 x seq 128
gave 56 seq/s int8 vs 82 dequant vs 85 fp32 (reports/bench_quant.md). At batch 1 the int8
forward is the faster one (19 vs 41 ms).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxdistil import quantize, xla_cpu
from flaxdistil.models.encoder import unstack_layers
from flaxdistil.models.heads import Model

MATMULS = ("int8", "dequant")


def int8_ready(w: quantize.QTensor) -> bool:
    """A weight the int8 matmul takes: per output channel (one group) and symmetric."""
    return w.transposed and w.symmetric and w.scale.shape[-1] == 1


def quantize_rows(x_MxK):
    """Dynamic symmetric int8 quantisation of activations, one scale per row."""
    scale_Mx1 = jnp.max(jnp.abs(x_MxK), axis=-1, keepdims=True) / 127.0
    scale_Mx1 = jnp.where(scale_Mx1 > 0, scale_Mx1, 1.0)
    return jnp.round(x_MxK / scale_Mx1).astype(jnp.int8), scale_Mx1


def int8_matmul(x, w: quantize.QTensor):
    """x [..., K] @ w (a transposed per-channel QTensor, q [N, K]) through int8 x int8 -> int32."""
    x_MxK = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    xq_MxK, sx_Mx1 = quantize_rows(x_MxK)
    acc_MxN = jax.lax.dot_general(
        xq_MxK, w.q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
    )
    y_MxN = acc_MxN.astype(jnp.float32) * sx_Mx1 * w.scale[:, 0]
    return y_MxN.reshape(*x.shape[:-1], w.q.shape[0])


def embed_lookup(w: quantize.QTensor, ids):
    """Rows of a quantised table: gather the int8 codes and their scales, dequantise those only."""
    q, scale = w.q[ids].astype(jnp.float32), w.scale[ids]
    if w.zero is not None:
        q = quantize._groups(q, w.group_size) - w.zero[ids].astype(jnp.float32)[..., None]
    else:
        q = quantize._groups(q, w.group_size)
    return (q * scale[..., None]).reshape(*ids.shape, w.q.shape[-1])


def interceptor(matmul: str):
    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name != "__call__" or not isinstance(m, nn.Dense | nn.Embed):
            return next_fun(*args, **kwargs)
        name = "kernel" if isinstance(m, nn.Dense) else "embedding"
        w = m.get_variable("params", name)
        if not quantize.is_qtensor(w):
            return next_fun(*args, **kwargs)
        (x,) = args
        if isinstance(m, nn.Embed):
            return embed_lookup(w, x)
        if matmul == "int8" and int8_ready(w):
            y = int8_matmul(x, w)
        else:
            y = jnp.einsum("...k,kn->...n", x, w.dequantize(jnp.float32))
        bias = m.get_variable("params", "bias") if m.use_bias else None
        return y if bias is None else y + bias

    return intercept


def apply(model: Model, qparams, *args, matmul: str = "dequant", **kwargs):
    """model.apply on quantised params (any mix of QTensors and float leaves)."""
    if matmul not in MATMULS:
        raise ValueError(f"matmul must be one of {MATMULS}, got {matmul!r}")
    with nn.intercept_methods(interceptor(matmul)):
        return model.apply({"params": qparams}, *args, **kwargs)


def inference_fn(
    source,
    config=None,
    head: str | None = "mlm",
    *,
    matmul: str = "dequant",
    unroll_layers: bool = True,
    compiler_options: dict | str | None = "auto",
):
    """A jitted eval forward on quantised weights and the params it takes, as
    flaxdistil.inference_fn: ``fn(params, input_ids, attention_mask=None, token_type_ids=None)
    -> logits`` (the last hidden state for head=None).

    ``source``: a compact checkpoint directory (save_compact's; its config and head are used)
    or qparams from quantize_params (then ``config`` and ``head`` say what they are).
    ``matmul``: "int8" or "dequant" (module docstring). compiler_options="auto": XLA's defaults
    for int8 (YNNPACK's int8 GEMM), Eigen's dots for dequant; None: XLA's defaults; a dict: as is.
    """
    if matmul not in MATMULS:
        raise ValueError(f"matmul must be one of {MATMULS}, got {matmul!r}")
    if isinstance(source, dict):
        if config is None:
            raise ValueError("inference_fn on qparams needs their config (a ModelConfig)")
        qparams = source
    else:
        qparams, config, head = quantize.load_compact(source)
    model = Model(config, head, jnp.float32, scan_layers=not unroll_layers)
    qparams = unstack_layers(qparams) if unroll_layers else qparams
    qparams = jax.device_put(qparams)
    if compiler_options == "auto":
        compiler_options = None if matmul == "int8" else xla_cpu.inference_options()

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def fn(params, input_ids, attention_mask=None, token_type_ids=None):
        logits, aux = apply(model, params, input_ids, attention_mask, token_type_ids, matmul=matmul)
        return aux["last_hidden_state"] if head is None else logits

    return fn, qparams
