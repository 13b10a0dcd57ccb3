"""The flaxdistil cases of the benchmark: inputs, random models, the step variants, and the jitted
distillation step and inference call, each compiled, warmed up and measured.

A *case* (measure.Case) is one thing to time, built by a ``*_case`` function one case at a time;
suite.py times the cases of one comparison interleaved. The PyTorch side is in torch_ref.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxdistil import objective, sharding, train, xla_cpu
from flaxdistil.bench.measure import (
    Case,
    classifier_flops,
    peak_memory,
    start_memory,
    step_flops,
    xla_flops,
    xla_memory,
)
from flaxdistil.models import Model, ModelConfig, inference_fn, init_params
from flaxdistil.student import derive_student

CLS_ID, SEP_ID, FIRST_WORD_ID = 101, 102, 104  # BERT's uncased vocabulary: ids >= 104 are words
# DistilBERT's loss weights (HF research_projects/distillation): alpha_mlm, alpha_ce, alpha_cos.
DISTILBERT_WEIGHTS = {"temperature": 2.0, "hard_label_weight": 2.0, "kd_loss_weight": 5.0}


# ---------------------------------------------------------------- inputs and models


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length [CLS] words [SEP] rows (packed pre-training data has almost no padding)."""
    if vocab <= FIRST_WORD_ID:
        raise ValueError(f"--vocab must exceed {FIRST_WORD_ID} (BERT's special ids), got {vocab}")
    ids = np.random.default_rng(seed).integers(FIRST_WORD_ID, vocab, (batch, seq), np.int32)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def teacher_student(cfg: ModelConfig, student_layers: int, head: str, seed: int = 0):
    """Random teacher params and a student sliced from them (the general-distillation set-up)."""
    params = jax.tree.map(np.asarray, init_params(cfg, head, jax.random.key(seed)))
    s_params, s_cfg, _ = derive_student(params, cfg, layers="uniform", num_layers=student_layers)
    return params, s_params, s_cfg


@dataclasses.dataclass(frozen=True)
class Variant:
    """Options of the flaxdistil step, parsed from e.g. 'gather+fused+remat=dots+teacher=bfloat16'.

    gather: MLM heads at the masked tokens only (Objective.gather_masked, KD on masked tokens);
    fused: jax.nn.dot_product_attention (cuDNN on GPU); remat: a policy of encoder.REMAT_POLICIES;
    teacher: the teacher's dtype (weights and compute) when it differs from the student's;
    rng: the PRNG implementation of the step's key (jax.random.key(..., impl=...)), e.g. 'rbg',
    which draws the masks and dropout with XLA's RngBitGenerator instead of threefry;
    dots: 'eigen' compiles the step with xla_cpu.EIGEN_DOTS (CPU only; default: XLA's choice).
    """

    gather: bool = False
    fused: bool = False
    remat: str | None = None
    teacher: str | None = None
    rng: str | None = None
    dots: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        kw: dict = {}
        for part in filter(None, text.strip().split("+")):
            key, _, value = part.partition("=")
            if key in ("gather", "fused") and not value:
                kw[key] = True
            elif value and (
                key in ("remat", "teacher", "rng") or (key, value) == ("dots", "eigen")
            ):
                kw[key] = value
            elif key != "base":
                raise ValueError(
                    f"unknown variant part {part!r} in {text!r}: expected base, gather, fused, "
                    "remat=<none|dots|dots_no_batch>, teacher=<dtype>, rng=<impl> or "
                    "dots=eigen, joined with '+'"
                )
        return cls(**kw)

    @property
    def name(self) -> str:
        parts = ["gather"] * self.gather + ["fused"] * self.fused
        parts += [f"remat={self.remat}"] * bool(self.remat)
        parts += [f"teacher={self.teacher}"] * bool(self.teacher)
        parts += [f"rng={self.rng}"] * bool(self.rng)
        parts += [f"dots={self.dots}"] * bool(self.dots)
        return "+".join(parts) or "base"


# ---------------------------------------------------------------- flaxdistil cases


def distilbert_objective(
    t_cfg: ModelConfig, s_cfg: ModelConfig, gather: bool
) -> objective.Objective:
    """DistilBERT's triple loss with DISTILBERT_WEIGHTS: 2 * MLM cross-entropy + 5 * KL(T=2) * T^2
    + 1 * cosine of the last hidden states (hidden index L: the last layer's output), with BERT's
    special ids. gather: both heads and the KD at the masked tokens only (else all non-pad ones)."""
    last = objective.Match(
        layer_T=t_cfg.num_hidden_layers,
        layer_S=s_cfg.num_hidden_layers,
        feature="hidden",
        loss="cos",
        weight=1.0,
    )
    return objective.Objective(
        task="mlm",
        use_hard=True,
        use_kd=True,
        kd_loss_type="kl_t2",
        matches=(last,),
        total_steps=10_000,
        vocab_size=t_cfg.vocab_size,
        restrict_ce_to_mask=gather,
        gather_masked=gather,
    )


def jax_train_case(
    t_params,
    s_params,
    t_cfg: ModelConfig,
    s_cfg: ModelConfig,
    host_batch: dict,
    dtype: str,
    variant: Variant,
    *,
    warmup: int = 2,
    devices=None,
) -> Case:
    """The jitted general-distillation step (train.jit_train_step with distilbert_objective):
    teacher forward, student forward and backward, AdamW, on ``devices``."""
    memory = start_memory()
    mesh = sharding.make_mesh(devices=devices)
    t_dtype = jnp.dtype(variant.teacher or dtype)
    attention = "fused" if variant.fused else "einsum"
    student = Model(
        s_cfg, "mlm", dtype=jnp.dtype(dtype), remat=variant.remat, attention_impl=attention
    )
    teacher = Model(t_cfg, "mlm", dtype=t_dtype, attention_impl=attention)
    obj = distilbert_objective(t_cfg, s_cfg, variant.gather)
    hparams = objective.hparams(DISTILBERT_WEIGHTS, obj)
    tx = train.make_optimizer(
        learning_rate=5e-4, total_steps=10_000, warmup_steps=100, max_grad_norm=5.0
    )
    state = train.create_state(s_params, tx, proj={})
    state_sh = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    t_sh = sharding.tree_shardings(t_params, mesh)
    t_params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, t_dtype), t_params), t_sh)
    batch = sharding.shard_batch(host_batch, mesh)
    rng = jax.random.key(0, impl=variant.rng)
    options = dict(xla_cpu.EIGEN_DOTS) if variant.dots == "eigen" else None
    step = train.jit_train_step(
        obj, student, teacher, tx, mesh, state_sh, t_sh, compiler_options=options
    )

    t0 = time.perf_counter()
    compiled = step.lower(state, t_params, batch, rng, hparams, None).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], t_params, batch, rng, hparams, None)
        return jax.block_until_ready(metrics)

    for _ in range(max(warmup, 1)):  # at least one step: its metrics are checked
        metrics = run()
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(math.isfinite(v) for v in metrics.values()) or metrics.get("masked_dropped", 0):
        raise RuntimeError(f"benchmark step went wrong: {metrics}")
    B, T = host_batch["input_ids"].shape
    rows = objective.masked_capacity(B * T, obj.mlm_probability) if variant.gather else B * T
    return run, {
        "compile_s": compile_s,
        "flops": step_flops(t_cfg, s_cfg, B, T, rows),
        "xla_flops": xla_flops(compiled),
        "xla_bytes": xla_memory(compiled),
        "memory": peak_memory(memory, mesh.devices.flat[0]),
        "loss": metrics["loss"],
        "devices": int(mesh.devices.size),
    }


def flops_check(t_cfg, s_cfg, batch: int, seq: int, dtype: str, variant: Variant) -> dict:
    """Compare step_flops with XLA's cost analysis on 1-layer teacher and student of the same
    widths and shapes: XLA counts a scanned loop body once, so the full step under-reports."""
    one_t, one_s = t_cfg.replace(num_hidden_layers=1), s_cfg.replace(num_hidden_layers=1)
    t_params, s_params, _ = teacher_student(one_t, 1, "mlm")
    _, info = jax_train_case(
        t_params,
        s_params,
        one_t,
        one_s,
        random_batch(batch, seq, t_cfg.vocab_size),
        dtype,
        variant,
        warmup=0,
    )
    xla = info["xla_flops"]
    return {
        "analytic_1layer": info["flops"],
        "xla_1layer": xla,
        "xla_over_analytic": xla / info["flops"] if xla else None,
    }


def jax_infer_case(
    cfg: ModelConfig,
    params,
    host_batch: dict,
    dtype: str,
    *,
    fused: bool,
    scan_layers: bool,
    xla_default_dots: bool = False,
) -> Case:
    """The sequence-classifier forward of models.inference_fn; inputs come from the host at each
    call. scan_layers=True times the scanned layers instead of inference_fn's unrolled default;
    xla_default_dots compiles without inference_fn's CPU options (xla_cpu.inference_options)."""
    memory = start_memory()
    attention = "fused" if fused else "einsum"
    fn, params = inference_fn(
        cfg,
        "seq_cls",
        params,
        dtype,
        unroll_layers=not scan_layers,
        attention_impl=attention,
        compiler_options=None if xla_default_dots else "auto",
    )
    ids, mask = host_batch["input_ids"], host_batch["attention_mask"]
    t0 = time.perf_counter()
    compiled = fn.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: compiled(params, ids, mask).block_until_ready()
    for _ in range(3):
        run()
    B, T = ids.shape
    return run, {
        "compile_s": compile_s,
        "flops": classifier_flops(cfg, B, T),
        "memory": peak_memory(memory),
    }
