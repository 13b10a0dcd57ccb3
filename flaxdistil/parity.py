"""Check an exported directory against transformers' PyTorch model (needs torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flaxdistil.hf_table import AUTO_CLASSES
from flaxdistil.models import Model, ModelConfig


def torch_outputs(hf_dir: Path, head: str | None, batch: dict) -> dict[str, np.ndarray]:
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeError(
            "the transformers check needs torch: pip install torch==2.13.0 (CPU build)"
        ) from None
    model = getattr(transformers, AUTO_CLASSES[head]).from_pretrained(hf_dir).eval()
    kw = {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}
    if model.config.model_type == "distilbert":
        kw.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**kw, output_hidden_states=True)
    res = {"hidden": out.hidden_states[-1].numpy()}
    if head == "qa":
        res["logits"] = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    elif head is not None:
        res["logits"] = out.logits.numpy()
    return res


def compare_with_transformers(
    hf_dir, params: dict, config: ModelConfig, head: str | None, batch: dict
) -> dict[str, float]:
    """Max abs differences (logits, last hidden state on real tokens) flaxdistil vs PyTorch."""
    ref = torch_outputs(Path(hf_dir), head, batch)
    logits, aux = Model(config, head).apply(
        {"params": params},
        batch["input_ids"],
        batch.get("attention_mask"),
        batch.get("token_type_ids") if config.type_vocab_size else None,
    )
    real = np.asarray(batch.get("attention_mask", np.ones_like(batch["input_ids"]))).astype(bool)
    diffs = {
        "hidden": float(np.abs(ref["hidden"] - np.asarray(aux["last_hidden_state"]))[real].max())
    }
    if "logits" in ref:
        d = np.abs(ref["logits"] - np.asarray(logits))
        diffs["logits"] = float(d[real].max() if d.ndim == 3 and head != "qa" else d.max())
    return diffs
