"""Quantised inference on CPU (CLI: scripts/bench_quant.py): size on disk, batch-1 latency and
batch-B throughput of a quantised student against the fp32 flaxdistil forward and against
PyTorch's torch.ao.quantization.quantize_dynamic (int8 nn.Linear, fbgemm/x86) of the same
exported model, with the cases interleaved and medians reported (the CPU is shared)."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import flaxdistil
from flaxdistil import quantize, xla_cpu
from flaxdistil import quantized_forward as qf
from flaxdistil.bench import measure

# (name, bits, group size, matmul): the quantised flaxdistil cases (float embeddings)
SCHEMES = (
    ("int8", 8, None, "int8"),
    ("int8 dequant", 8, None, "dequant"),
    ("int4 g32 dequant", 4, 32, "dequant"),
)
# compact checkpoints whose size is reported (no forward of their own: the matmul is the same)
SIZE_ONLY = (("int8 + int8 embeddings", 8, None, 8), ("int4 g32 + int4 embeddings", 4, 32, 4))


def student(teacher: str, layers: str, head: str = "seq_cls"):
    """The benchmarked model: ``layers`` of the teacher (flaxdistil.derive_student), the head
    newly initialised where the teacher has none (the same weights in every case)."""
    t = flaxdistil.load_pretrained(teacher, head=head, num_labels=2, rng=jax.random.key(0))
    params, cfg, _ = flaxdistil.derive_student(t.params, t.config, layers=layers)
    return params, cfg, t.path


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file()) / 2**20


def torch_cases(export_dir: Path, ids: np.ndarray, mask: np.ndarray):
    """fp32 and dynamic-int8 PyTorch models of the HF export, and the int8 one's size on disk."""
    import torch
    import transformers

    fp32 = transformers.AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
    int8 = torch.ao.quantization.quantize_dynamic(
        transformers.AutoModelForSequenceClassification.from_pretrained(export_dir).eval(),
        {torch.nn.Linear},
        dtype=torch.qint8,
    )
    with tempfile.TemporaryDirectory() as d:
        torch.save(int8.state_dict(), f"{d}/int8.pt")
        int8_mb = Path(f"{d}/int8.pt").stat().st_size / 2**20

    def runner(model, B):
        x = torch.from_numpy(ids[:B]).long(), torch.from_numpy(mask[:B]).long()

        def run():
            with torch.inference_mode():
                return model(input_ids=x[0], attention_mask=x[1]).logits.numpy()

        return run

    return {"torch fp32": (fp32, runner), "torch int8 (quantize_dynamic)": (int8, runner)}, int8_mb


def jax_runner(fn, params, ids, mask):
    def make(B):
        x = jnp.asarray(ids[:B]), jnp.asarray(mask[:B])
        return lambda: np.asarray(jax.block_until_ready(fn(params, *x)))

    return make


def build(teacher: str, layers: str, seq: int, batch: int, workdir: Path, seed: int = 0):
    """Every case as name -> make(B) -> run(), their sizes on disk (MB) and facts."""
    params, cfg, teacher_path = student(teacher, layers)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, cfg.vocab_size, (batch, seq)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    mask = np.ones_like(ids)
    export = flaxdistil.save_pretrained(workdir / "fp32_hf", params, cfg, head="seq_cls")
    sizes = {"fp32 (HF safetensors)": dir_mb(export)}
    fn, p = flaxdistil.inference_fn(cfg, "seq_cls", params)
    cases = {"flaxdistil fp32": jax_runner(fn, p, ids, mask)}
    for name, bits, group, matmul in SCHEMES:
        qp = quantize.quantize_params(params, bits=bits, group_size=group)
        out = quantize.save_compact(qp, cfg, workdir / name.replace(" ", "_"), head="seq_cls")
        sizes.setdefault(name.replace(" dequant", ""), dir_mb(out))
        fn, p = qf.inference_fn(out, matmul=matmul)  # from the compact checkpoint, as a user
        cases[f"flaxdistil {name}"] = jax_runner(fn, p, ids, mask)
    for name, bits, group, emb in SIZE_ONLY:
        qp = quantize.quantize_params(params, bits=bits, group_size=group, embeddings=emb)
        sizes[name] = dir_mb(quantize.save_compact(qp, cfg, workdir / "size", head="seq_cls"))
    torch_models, torch_int8_mb = torch_cases(export, ids, mask)
    sizes["torch int8 (quantize_dynamic state_dict)"] = torch_int8_mb
    for name, (model, runner) in torch_models.items():
        cases[name] = lambda B, m=model, r=runner: r(m, B)
    facts = dict(
        teacher=str(teacher_path),
        layers=layers,
        seq=seq,
        batch=batch,
        params=flaxdistil.count_params(params),
        embedding_params=int(params["encoder"]["embeddings"]["word_embeddings"]["embedding"].size),
    )
    return cases, sizes, facts


def agreement(outputs: dict) -> dict:
    """Max |logit difference| of each case against flaxdistil fp32 on the same inputs."""
    ref = outputs["flaxdistil fp32"]
    return {k: float(np.abs(out - ref).max()) for k, out in outputs.items()}


def run(teacher, layers, seq, batch, latency_repeats, throughput_repeats, workdir) -> dict:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cases, sizes, facts = build(teacher, layers, seq, batch, Path(workdir))
    results = {"machine": measure.machine_info(), "facts": facts, "size_mb": sizes}
    results["load_average"] = [os.getloadavg()]  # the other jobs' share of the cores
    sections = (("latency_b1", 1, latency_repeats), ("throughput", batch, throughput_repeats))
    for label, B, repeats in sections:
        runs = {name: make(B) for name, make in cases.items()}
        outputs = {name: r() for name, r in runs.items()}  # compile and warm up
        if label == "throughput":
            results["max_abs_logit_diff_vs_fp32"] = agreement(outputs)
        times = measure.interleaved(runs, repeats, settle=B == 1)
        results[label] = {k: measure.summarise(v) for k, v in times.items()}
        # Paired per round: the ratio of two cases timed back to back, median over rounds.
        fp32 = times["flaxdistil fp32"]
        results[label + "_speedup_vs_fp32"] = {
            k: statistics.median(a / b for a, b in zip(fp32, v)) for k, v in times.items()
        }
    results["load_average"].append(os.getloadavg())
    return results


def _load(r: dict) -> str:
    if not r.get("load_average"):
        return "not recorded"
    return " -> ".join(f"{a[0]:.1f}" for a in r["load_average"])  # 1-minute, start -> end


def to_markdown(r: dict) -> str:
    f, m = r["facts"], r["machine"]
    B, T = f["batch"], f["seq"]
    lines = [
        f"# Quantised inference on CPU ({m['date_utc']})",
        "",
        f"Model: {f['layers']} layers of {Path(f['teacher']).name} "
        f"({f['params'] / 1e6:.1f}M params, {f['embedding_params'] / 1e6:.1f}M of them the word "
        f"embeddings), sequence classifier, seq {T}. Machine: {m['cpu']}, {m['nproc']} cores "
        f"(load average {_load(r)}), jax {m['jax']}, torch {m.get('torch')}. Medians of "
        "interleaved repeats; speedups are paired per round (fp32 time / case time).",
        "",
        "| case | batch-1 latency (ms) | x fp32 | batch-"
        f"{B} throughput (seq/s) | x fp32 | max abs logit diff vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for k, lat in r["latency_b1"].items():
        thr = r["throughput"][k]
        lines.append(
            f"| {k} | {lat['median_s'] * 1e3:.1f} | {r['latency_b1_speedup_vs_fp32'][k]:.2f} | "
            f"{B / thr['median_s']:.1f} | {r['throughput_speedup_vs_fp32'][k]:.2f} | "
            f"{r['max_abs_logit_diff_vs_fp32'][k]:.2e} |"
        )
    lines += ["", "| checkpoint | size on disk (MB) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["size_mb"].items()]
    return "\n".join(lines) + "\n"


# The encoder's biggest GEMM at the throughput size: batch 128 x seq 128 tokens through the
# 3-layer MiniLM's FFN (384 -> 1536).
GEMM_SHAPE = (128 * 128, 384, 1536)


def gemm_cases(M: int, K: int, N: int, seed: int = 0) -> tuple[dict, dict]:
    """One [M, K] x [K, N] product, each way the forwards above can do it, as name -> run()
    (returning the product, ready), and the inputs: x, w (float), xq (int8 rows of x), q and
    scale (w's int8 codes [N, K] and per-channel scales).

    The jax int8 cases take the weights as quantize_tensor stores a Dense kernel ([N, K] int8
    codes, one scale per output channel), plus the [K, N] layout for comparison; "int8_matmul"
    is quantized_forward's whole int8 Dense (activation quantisation per row, the int32 dot,
    the rescale). PyTorch's case is quantize_dynamic of one nn.Linear, what it does in the model.
    """
    import torch

    rng = np.random.default_rng(seed)
    x_MxK = rng.standard_normal((M, K), dtype=np.float32)
    w_KxN = (rng.standard_normal((K, N), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
    qw = quantize.quantize_tensor(jnp.asarray(w_KxN), bits=8, transposed=True)
    xq_MxK, _ = qf.quantize_rows(jnp.asarray(x_MxK))
    x, w, q_NxK, q_KxN = map(jax.device_put, (x_MxK, w_KxN, qw.q, qw.q.T))

    def int8_dot(dims):
        return lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.int32)

    eigen = xla_cpu.inference_options()
    jitted = {
        "jax fp32, Eigen dots": (jax.jit(jnp.matmul, compiler_options=eigen), x, w),
        "jax fp32, XLA default (YNNPACK)": (jax.jit(jnp.matmul), x, w),
        "jax int8 x int8 -> int32, weights [N, K]": (
            jax.jit(int8_dot((((1,), (1,)), ((), ())))), xq_MxK, q_NxK),
        "jax int8 x int8 -> int32, weights [K, N]": (
            jax.jit(int8_dot((((1,), (0,)), ((), ())))), xq_MxK, q_KxN),
        "jax int8_matmul (quantise rows + int8 dot + rescale)": (
            jax.jit(qf.int8_matmul), x, qw),
    }  # fmt: skip
    cases = {
        name: (lambda f=f, a=a, b=b: jax.block_until_ready(f(a, b)))
        for name, (f, a, b) in jitted.items()
    }
    lin = torch.nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w_KxN.T.copy()))
    lin8 = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(lin), {torch.nn.Linear}, torch.qint8
    )
    tx = torch.from_numpy(x_MxK)
    for name, model in (("torch fp32", lin), ("torch int8 (quantize_dynamic)", lin8)):
        cases[name] = lambda m=model: _torch_call(m, tx)
    inputs = dict(x=x_MxK, w=w_KxN, xq=np.asarray(xq_MxK), q=np.asarray(qw.q),
                  scale=np.asarray(qw.scale))  # fmt: skip
    return cases, inputs


def _torch_call(model, x):
    import torch

    with torch.inference_mode():
        return model(x).numpy()


def gemm(shape=GEMM_SHAPE, repeats: int = 10) -> dict:
    """Milliseconds (medians of interleaved repeats) and GOP/s of each gemm_cases way."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    M, K, N = shape
    cases, _ = gemm_cases(M, K, N)
    for run in cases.values():
        run()  # compile and warm up
    load = [os.getloadavg()]
    times = measure.interleaved(cases, repeats, settle=True)
    load.append(os.getloadavg())
    ops = 2 * M * K * N
    return {
        "shape": list(shape),
        "date_utc": measure.machine_info()["date_utc"],
        "load_average": load,
        "repeats": repeats,
        "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "gops": {k: ops / statistics.median(v) / 1e9 for k, v in times.items()},
        "min_max_ms": {k: [min(v) * 1e3, max(v) * 1e3] for k, v in times.items()},
    }


def gemm_markdown(g: dict) -> str:
    M, K, N = g["shape"]
    lines = [
        f"## One GEMM alone: [{M}, {K}] x [{K}, {N}] ({g['date_utc']})",
        "",
        f"Load average {_load(g)}; medians of {g['repeats']} interleaved repeats; GOP/s "
        "counts 2MKN operations (a multiply and an add per term).",
        "",
        "| way | ms (min-max) | GOP/s |",
        "|---|---|---|",
    ]
    for k, ms in g["ms"].items():
        lo, hi = g["min_max_ms"][k]
        lines.append(f"| {k} | {ms:.1f} ({lo:.1f}-{hi:.1f}) | {g['gops'][k]:.0f} |")
    return "\n".join(lines) + "\n"
