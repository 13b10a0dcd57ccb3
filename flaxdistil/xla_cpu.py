"""Per-computation XLA:CPU options (jax.jit's compiler_options), measured in reports/bench_cpu.md.

jaxlib >= 0.10 hands CPU matmuls to YNNPACK. For an encoder's forward Eigen's GEMM was faster
on this project's CPU (12x768, 1 x 20 tokens: 43.1 -> 39.6 ms; 128 x 20: 1.93 -> 1.82 s;
reports/bench_cpu.md), while for the training step YNNPACK was (8 x 128 tokens: 3.60 vs 3.79 s
at BERT-base, 357 vs 457 ms at hidden 256; reports/bench_cpu_dots.md). The options are given per
jit, not through XLA_FLAGS, so that inference and training in one process each get the faster.
"""

from __future__ import annotations

import importlib.metadata

import jax

# An empty fusion-type list turns YNNPACK's dots off: every dot goes to Eigen.
EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": ""}
EIGEN_DOTS_SINCE = (0, 10)  # older jaxlibs do not know the option (and reject it)


def jaxlib_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def inference_options(backend: str | None = None, version: tuple[int, ...] | None = None):
    """compiler_options for an inference forward: Eigen dots on CPU, None elsewhere."""
    backend = jax.default_backend() if backend is None else backend
    version = jaxlib_version() if version is None else version
    return dict(EIGEN_DOTS) if backend == "cpu" and version >= EIGEN_DOTS_SINCE else None
