"""Compress a checkpoint: vocabulary pruning, structured (heads / FFN neurons) and unstructured
(magnitude) pruning, quantisation; behind scripts/compress.py.

``report = compress(src, out, sparsity=0.5, heads_keep=8, ffn_keep=1024, vocab_from='c.txt',
data='texts.txt')`` writes ``out/`` as a Hugging Face directory transformers loads (pruned weights
zero, or matrices physically smaller) and ``out/flaxdistil/`` with flaxdistil's compact files
(the smaller head matrices transformers cannot hold; ``load_pruned`` reads them back), and
returns a table of parameters, size, sparsity and bits per module. Steps run in that order:
vocabulary, heads / FFN (ranked on ``data`` by TextPruner's Taylor importance, label-free), the
magnitude pruning of the encoder's linear layers (one shot here; iterative with fine-tuning in
between is ``prune.*`` in the task job), then quantisation (``bits``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np

from flaxdistil import hf, hf_table, prune, quantize, vocab
from flaxdistil import prune_structured as ps
from flaxdistil.models import ModelConfig

COMPACT = "flaxdistil"  # the subdirectory of flaxdistil's own files


@dataclasses.dataclass
class Request:
    bits: int | None = None
    group_size: int | None = None
    asymmetric: bool = False  # a zero point per channel / group (the full 2^bits codes)
    embedding_bits: int | None = None  # None: embedding tables stay float
    sparsity: float = 0.0
    scope: str = "global"
    heads_keep: int | None = None
    ffn_keep: int | None = None
    iterations: int = 1  # heads / FFN: re-rank after each of this many steps (TextPruner's n_iters)
    vocab_from: str | None = None
    data: str | None = None
    max_examples: int = 256
    max_length: int = 128

    def check(self, cfg: ModelConfig) -> None:
        """Every bad value in one clear line, before any work."""
        prune.check_sparsity(self.sparsity)
        if self.scope not in prune.SCOPES:
            raise ValueError(f"scope must be one of {prune.SCOPES}, got {self.scope!r}")
        if self.bits is not None:
            quantize.check_bits(self.bits)
        if self.group_size is not None and (self.bits is None or self.group_size < 1):
            raise ValueError(f"group size {self.group_size} needs bits and a size >= 1")
        for what, on in (("asymmetric", self.asymmetric), ("embedding bits", self.embedding_bits)):
            if on and self.bits is None:
                raise ValueError(f"{what} quantisation needs bits for the linear layers too")
        if self.embedding_bits is not None:
            quantize.check_bits(self.embedding_bits, "embedding bits")
        for name, n, limit in (
            ("heads", self.heads_keep, cfg.num_attention_heads),
            ("FFN neurons", self.ffn_keep, cfg.intermediate_size),
        ):
            if n is not None and not 1 <= n <= limit:
                raise ValueError(f"cannot keep {n} {name} per layer: the model has {limit}")
        ps.check_iterations(self.iterations)
        if self.iterations > 1 and not (self.heads_keep or self.ffn_keep):
            raise ValueError("iterations > 1 prunes heads / FFN neurons: give heads / FFN to keep")
        if (self.heads_keep or self.ffn_keep) and not self.data:
            raise ValueError("heads / FFN pruning ranks units on data: give data (a text file)")


# ---------------------------------------------------------------- loading


def head_of(hf_config: dict) -> str | None:
    """The head an exported model has, from config.json's architectures."""
    arch = (hf_config.get("architectures") or [None])[0]
    for head, name in hf_table.ARCHITECTURES.get(hf_config.get("model_type"), {}).items():
        if name == arch:
            return head
    return None


def load_source(src, head: str | None = "auto"):
    """(params, config, head, tokenizer dir or None) from a HF directory (or Hub id), a
    compress output (its compact files), or convert.py's params.msgpack + .config.json."""
    path = Path(src)
    if (path / COMPACT / "model.json").is_file():
        params, cfg, stored = load_pruned(path / COMPACT)
        return params, cfg, stored if head == "auto" else head, path
    if path.suffix == ".msgpack" and path.is_file():
        from flax import serialization

        meta = json.loads(path.with_name(path.stem + ".config.json").read_text())
        params = serialization.msgpack_restore(path.read_bytes())
        stored = meta.get("flaxdistil_head")
        return params, ModelConfig.from_hf(meta), stored if head == "auto" else head, None
    ckpt = hf.resolve(src)
    if head == "auto":
        head = head_of(hf.read_config(ckpt))
    pre = hf.load_pretrained(ckpt, head)
    tok_dir = ckpt if any((ckpt / f).exists() for f in hf.TOKENIZER_FILES) else None
    return pre.params, pre.config, head, tok_dir


def save_pruned(params, cfg: ModelConfig, head: str | None, out_dir) -> Path:
    """flaxdistil's own float files: model.json (every ModelConfig field, the head) and
    params.safetensors ('/'-joined param paths), the matrices at their pruned sizes (which HF
    configs cannot describe). Quantised weights go to quantize.save_compact instead."""
    from safetensors.numpy import save_file

    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p): np.ascontiguousarray(np.asarray(x))
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    meta = {"config": cfg.to_json(), "head": head}
    with hf.atomic_dir(out_dir) as tmp:
        save_file(flat, str(tmp / "params.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
    return Path(out_dir).resolve()


def load_pruned(path):
    """(params, config, head) written by save_pruned."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = json.loads((path / "model.json").read_text())
    params: dict = {}
    for key, x in load_file(str(path / "params.safetensors")).items():
        node = params
        *parents, leaf = key.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = x
    return params, ModelConfig.from_json(meta["config"]), meta["head"]


# ---------------------------------------------------------------- the steps


def _texts(path, tok_dir, what: str) -> tuple[list[str], object]:
    if tok_dir is None:
        raise ValueError(f"{what} needs the model's tokenizer, and src has no tokenizer files")
    from flaxdistil.data.text_pipeline import load_tokenizer

    return vocab.read_corpus(path), load_tokenizer(tok_dir)


def _batches(tokenizer, texts, req: Request, batch_size: int = 16):
    texts = texts[: req.max_examples]
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True,
            max_length=req.max_length, return_tensors="np",
        )  # fmt: skip
        yield {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def _structured(params, cfg, head, req: Request, tokenizer, texts, notes: list):
    if head is None:
        raise ValueError(
            "heads / FFN importance needs a model with a head (logits), the checkpoint has none"
        )
    batches = list(_batches(tokenizer, texts, req))
    n = min(len(texts), req.max_examples)
    steps = f", re-ranked in {req.iterations} iterations" if req.iterations > 1 else ""
    notes.append(f"heads / FFN ranked by Taylor importance on {n} texts (own predictions){steps}")
    params, cfg, _, _ = ps.iterative_prune(
        cfg, head, params, batches, heads_keep=req.heads_keep, ffn_keep=req.ffn_keep,
        iterations=req.iterations, use_logits=True,
    )  # fmt: skip
    return params, cfg


def _quantize(params, cfg, req: Request):
    qparams = quantize.quantize_params(
        params,
        bits=req.bits,
        group_size=req.group_size,
        symmetric=not req.asymmetric,
        embeddings=req.embedding_bits or False,
    )
    return qparams, quantize.dequantize_params(qparams)


def compress(src, out, *, head: str | None = "auto", check: bool = False, **request) -> Report:
    """Compress `src` into `out` (see the module docstring); request: Request's fields."""
    req = Request(**request)
    params, cfg, head, tok_dir = load_source(src, head)
    req.check(cfg)
    before = jax.tree.map(np.asarray, params)
    notes: list[str] = []
    tokenizer = keep = None
    if req.vocab_from:
        texts, tokenizer = _texts(req.vocab_from, tok_dir, "vocabulary pruning")
        keep = vocab.corpus_tokens(tokenizer, texts)
        params, cfg = vocab.prune_vocab(params, cfg, keep)
        notes.append(f"vocabulary: kept {len(keep):,} of {_vocab_size(before)} tokens")
    if req.heads_keep or req.ffn_keep:
        texts, tok = _texts(req.data, tok_dir, "heads / FFN pruning")
        params, cfg = _structured(params, cfg, head, req, tok, texts, notes)
    include = None
    if req.sparsity:
        include = prune.eligible(params)
        masks = prune.magnitude_masks(params, req.sparsity, scope=req.scope, include=include)
        params = jax.tree.map(np.asarray, prune.apply_masks(params, masks))
    qparams = None
    if req.bits:
        qparams, params = _quantize(params, cfg, req)
    return _write(out, params, cfg, head, tok_dir, tokenizer, keep, qparams, req, before, notes,
                  check)  # fmt: skip


def _vocab_size(params) -> str:
    return f"{params['encoder']['embeddings']['word_embeddings']['embedding'].shape[0]:,}"


def _write(out, params, cfg, head, tok_dir, tokenizer, keep, qparams, req, before, notes, check):
    out = Path(out).resolve()
    # An export of pruned heads prints its one line (hf.save_pretrained).
    hf.save_pretrained(out, params, cfg, head, tokenizer_from=None if keep is not None else tok_dir)
    if keep is not None:
        vocab.save_tokenizer(tokenizer, keep, out)
    compact = out / COMPACT
    if compact.exists():
        shutil.rmtree(compact)
    if qparams is not None:
        quantize.save_compact(qparams, cfg, compact, head)
    else:
        save_pruned(params, cfg, head, compact)
    if keep is not None and req.vocab_from:
        from transformers import AutoTokenizer

        vocab.check_tokenizer(tokenizer, AutoTokenizer.from_pretrained(out), keep,
                              vocab.read_corpus(req.vocab_from)[:200])  # fmt: skip
    report = Report.build(before, params, cfg, head, out, req, notes)
    if check:
        report.check_diff = _check(out, params, cfg, head, req)
    return report


def _check(out: Path, params, cfg, head, req: Request) -> dict:
    """flaxdistil's compressed model vs transformers on the exported directory."""
    from flaxdistil.data.text_pipeline import load_tokenizer
    from flaxdistil.parity import compare_with_transformers

    texts = vocab.read_corpus(req.vocab_from or req.data) if (req.vocab_from or req.data) else None
    tok = load_tokenizer(out)
    texts = (texts or ["The cat sat on the mat.", "Compressed models keep most accuracy."])[:8]
    batch = next(_batches(tok, texts, dataclasses.replace(req, max_examples=8), 8))
    return compare_with_transformers(out, params, cfg, head, batch)


# ---------------------------------------------------------------- the table


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _bits(module: str, req: Request) -> int:
    """Stored bits of a module's weights: the linear layers at bits, the embedding tables at
    embedding_bits (float32 without), LayerNorms float32."""
    if not req.bits or "norm" in module.lower():
        return 32
    if "embeddings" in module:
        return req.embedding_bits or 32
    return req.bits


@dataclasses.dataclass
class Report:
    rows: list  # (module, params before, params after, zeros after, bits)
    out: Path
    hf_mb: float
    compact_mb: float
    notes: list
    check_diff: dict | None = None

    @classmethod
    def build(cls, before, params, cfg, head, out: Path, req: Request, notes) -> Report:
        was = {k: n for k, n, _ in prune.sparsity_rows(before, 3)}
        rows = [
            (k, was.get(k, 0), n, z, _bits(k, req)) for k, n, z in prune.sparsity_rows(params, 3)
        ]
        weights = out / "model.safetensors"
        return cls(rows, out, weights.stat().st_size / 2**20, _dir_mb(out / COMPACT), notes)

    def __str__(self) -> str:
        w = max(len(r[0]) for r in self.rows) + 2
        head = (
            f"{'module':<{w}}{'params before':>15}{'params after':>14}{'sparsity':>10}{'bits':>6}"
        )
        lines = [head]
        for i, (name, was, n, z, bits) in enumerate(self.rows):
            if i == len(self.rows) - 1:
                lines.append("-" * len(head))
            lines.append(f"{name:<{w}}{was:>15,}{n:>14,}{z / max(n, 1):>10.1%}{bits:>6}")
        lines.append(
            f"size on disk: model.safetensors {self.hf_mb:.2f} MB (transformers), "
            f"{COMPACT}/ {self.compact_mb:.2f} MB (flaxdistil's compact files)"
        )
        lines += self.notes
        if self.check_diff is not None:
            lines.append(f"transformers check: max |diff| {self.check_diff}")
        return "\n".join(lines)
