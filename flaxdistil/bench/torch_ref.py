"""The PyTorch reference of the benchmark: the same distillation step and inference written with
transformers' BERT classes, eager or under torch.compile.

The step is DistilBERT's (HF research_projects/distillation/distiller.py): BERT-style masking
(15%; 80/10/10), the teacher under no_grad in eval mode, the student in train mode, the loss
5 * KL(T=2) * T^2 over non-pad tokens + 2 * MLM cross-entropy + 1 * cosine of the last hidden
states, global-norm clipping and torch.optim.AdamW. With ``gather`` both MLM heads run on the
masked tokens only (the first ``masked_capacity`` of them) and the KL covers those, as
flaxdistil's Objective(gather_masked=True). Losses are written without data-dependent shapes so
that torch.compile sees one graph.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from flaxdistil.bench.cases import FIRST_WORD_ID
from flaxdistil.bench.measure import (
    Case,
    classifier_flops,
    peak_memory,
    start_memory,
    step_flops,
)
from flaxdistil.models import ModelConfig
from flaxdistil.objective import masked_capacity

MASK_ID, IGNORE = 103, -100
DEFAULT_THREADS = torch.get_num_threads()
SPECIAL_IDS = (0, 100, 101, 102, 103)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bert_config(cfg: ModelConfig, **kw) -> transformers.BertConfig:
    hf = {k: v for k, v in cfg.to_hf().items() if k != "model_type"}
    return transformers.BertConfig(**hf, attn_implementation="sdpa", **kw)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _threads(n: int) -> None:
    """Cases with different thread counts are interleaved, so each sets its own before running.
    On a shared, oversubscribed CPU OpenMP's barriers make 2 threads far slower than 1."""
    n = n or DEFAULT_THREADS
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _autocast(dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device().type, dtype=getattr(torch, dtype))


def _start_memory() -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return start_memory()


def _memory(start: dict) -> dict:
    """Peak memory of the case: torch's allocator on GPU, the process's RSS on CPU."""
    if torch.cuda.is_available():
        return {"device_peak_bytes": int(torch.cuda.max_memory_allocated())}
    return peak_memory(start)


def mask_tokens(ids_BxT, mask_BxT, vocab_size: int, p: float = 0.15):
    special = torch.isin(ids_BxT, torch.tensor(SPECIAL_IDS, device=ids_BxT.device))
    selected = (mask_BxT > 0) & ~special & (torch.rand(ids_BxT.shape, device=ids_BxT.device) < p)
    u = torch.rand(ids_BxT.shape, device=ids_BxT.device)
    masked = torch.where(selected & (u < 0.8), MASK_ID, ids_BxT)
    random_ids = torch.randint_like(ids_BxT, FIRST_WORD_ID, vocab_size)
    masked = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, masked)
    return masked, torch.where(selected, ids_BxT, IGNORE)


def step_loss(teacher, student, ids_BxT, mask_BxT, gather: bool):
    """Masking and the loss: the part of the step that torch.compile compiles."""
    masked, labels_BxT = mask_tokens(ids_BxT, mask_BxT, student.config.vocab_size)
    return distil_loss(teacher, student, masked, labels_BxT, mask_BxT, gather)


def distil_loss(teacher, student, masked, labels_BxT, mask_BxT, gather: bool, temperature=2.0):
    """5 * KL * T^2 + 2 * MLM + 1 * cosine; with gather, the heads and the KL on masked tokens."""
    with torch.no_grad():
        t_h_BxTxD = teacher.bert(masked, attention_mask=mask_BxT).last_hidden_state
    s_h_BxTxD = student.bert(masked, attention_mask=mask_BxT).last_hidden_state
    t_h_NxD, s_h_NxD = t_h_BxTxD.flatten(0, 1), s_h_BxTxD.flatten(0, 1)
    labels, rows = labels_BxT.flatten(), mask_BxT.flatten() > 0
    if gather:
        n = masked_capacity(labels.numel(), 0.15)
        selected = labels != IGNORE
        # A stable sort puts the selected tokens first, in order: a static-shape nonzero.
        pos = torch.argsort((~selected).to(torch.int8), stable=True)[:n]
        labels = torch.where(selected[pos], labels[pos], IGNORE)
        rows = labels != IGNORE
        t_h_RxD, s_h_RxD = t_h_NxD[pos], s_h_NxD[pos]
    else:
        t_h_RxD, s_h_RxD = t_h_NxD, s_h_NxD
    with torch.no_grad():
        t_logits = teacher.cls(t_h_RxD).float()
    s_logits = student.cls(s_h_RxD).float()
    kl = F.kl_div(
        F.log_softmax(s_logits / temperature, -1),
        F.softmax(t_logits / temperature, -1),
        reduction="none",
    ).sum(-1)
    loss_ce = (kl * rows).sum() / rows.sum().clamp(min=1) * temperature**2
    loss_mlm = F.cross_entropy(s_logits, labels, ignore_index=IGNORE)
    pad = mask_BxT.flatten() > 0
    ones = torch.ones(pad.shape, device=pad.device)
    cos = F.cosine_embedding_loss(s_h_NxD.float(), t_h_NxD.float(), ones, reduction="none")
    loss_cos = (cos * pad).sum() / pad.sum().clamp(min=1)
    return 5.0 * loss_ce + 2.0 * loss_mlm + 1.0 * loss_cos


def torch_train_case(
    t_cfg: ModelConfig,
    s_cfg: ModelConfig,
    host_batch: dict,
    dtype: str,
    *,
    gather: bool,
    compile: bool,
    threads: int = 0,
    warmup: int = 2,
    seed: int = 0,
) -> Case:
    """One DistilBERT step (see the module docstring); threads > 0 sets torch's CPU threads."""
    memory = _start_memory()
    torch.manual_seed(seed)
    dev = device()
    teacher = transformers.BertForMaskedLM(bert_config(t_cfg)).to(dev).eval()
    if dtype != "float32":  # as flaxdistil: a low-precision teacher stores its weights so too
        teacher = teacher.to(getattr(torch, dtype))
    student = transformers.BertForMaskedLM(bert_config(s_cfg)).to(dev).train()
    opt = torch.optim.AdamW(
        student.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
    )
    ids = torch.from_numpy(host_batch["input_ids"]).long().to(dev)
    mask = torch.from_numpy(host_batch["attention_mask"]).long().to(dev)
    loss_fn = torch.compile(step_loss) if compile else step_loss

    def run():
        _threads(threads)
        with _autocast(dtype):
            loss = loss_fn(teacher, student, ids, mask, gather)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        return loss

    t0 = time.perf_counter()
    loss = run()
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        loss = run()
    if not torch.isfinite(loss):
        raise RuntimeError(f"torch benchmark step went wrong: loss {float(loss.detach())}")
    B, T = ids.shape
    rows = masked_capacity(B * T, 0.15) if gather else B * T
    return run, {
        "compile_s": first_s,  # the first step: torch.compile's compilation happens there
        "flops": step_flops(t_cfg, s_cfg, B, T, rows),
        "memory": _memory(memory),
        "loss": float(loss.detach()),
    }


def torch_infer_case(
    cfg: ModelConfig, host_batch: dict, dtype: str, threads: int = 0, seed: int = 0
) -> Case:
    """BertForSequenceClassification (eager) under torch.inference_mode."""
    memory = _start_memory()
    torch.manual_seed(seed)
    dev = device()
    model = transformers.BertForSequenceClassification(bert_config(cfg, num_labels=1))
    model = model.to(dev, getattr(torch, dtype)).eval()
    ids = torch.from_numpy(np.asarray(host_batch["input_ids"])).long()
    mask = torch.from_numpy(np.asarray(host_batch["attention_mask"])).long()

    def run():
        _threads(threads)
        with torch.inference_mode():
            out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        _sync()
        return out

    for _ in range(3):
        run()
    B, T = ids.shape
    return run, {"flops": classifier_flops(cfg, B, T), "memory": _memory(memory)}
