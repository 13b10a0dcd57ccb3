"""Students: slices of the teacher's stacked layer axis, or smaller shapes initialised at random.

Layer params carry a leading layer axis (nn.scan), so selecting teacher layers is one ``x[ids]``
per leaf. DistilBERT took every other layer of BERT-base and dropped the token-type embeddings and
the pooler; the HF distillation project's extract script took layers [0, 2, 4, 7, 9, 11]. An ALBERT
has one shared layer: its student applies that layer fewer times.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from flaxdistil.models import ModelConfig, init_params, modernbert
from flaxdistil.models.config import global_every_n, modernbert_layer_types

# TextBrewer's student shapes (layers, hidden, FFN, heads); the "Model" column of its tables.
PRESETS = {
    "T6": (6, 768, 3072, 12),
    "T3": (3, 768, 3072, 12),
    "T3-small": (3, 384, 1536, 12),
    "T4-tiny": (4, 312, 1200, 12),
    "T12-nano": (12, 256, 1024, 4),
}


def select_layers(num_teacher_layers: int, layers: str | Sequence[int], num_layers: int | None):
    """'every_other' (0, 2, 4, ...), 'first' (0..k-1), 'last', 'uniform' (spread k), or a list."""
    L = num_teacher_layers
    if isinstance(layers, str):
        if layers == "every_other":
            ids = list(range(0, L, 2))
        elif layers in ("first", "last", "uniform"):
            if not num_layers or not 0 < num_layers <= L:
                raise ValueError(f"layers={layers!r} needs 0 < num_layers <= {L}, got {num_layers}")
            ids = {
                "first": list(range(num_layers)),
                "last": list(range(L - num_layers, L)),
                "uniform": np.linspace(0, L - 1, num_layers).round().astype(int).tolist(),
            }[layers]
        else:
            raise ValueError(
                f"unknown layer selection {layers!r}: expected 'every_other', 'first', 'last', "
                "'uniform' or a list of teacher layer indices"
            )
    else:
        ids = [int(i) for i in layers]
    bad = [i for i in ids if not 0 <= i < L]
    if not ids or bad or len(set(ids)) != len(ids):
        raise ValueError(
            f"student layers {ids} must be distinct indices in [0, {L}) of the teacher's layers"
        )
    return ids


def derive_student(
    params: dict,
    config: ModelConfig,
    *,
    layers: str | Sequence[int] = "every_other",
    num_layers: int | None = None,
    distilbert_style: bool = False,
    drop_token_types: bool = False,
    drop_pooler: bool = False,
    keep_head: bool = True,
) -> tuple[dict, ModelConfig, list[int]]:
    """Slice a teacher into a student. Returns (student params, student config, teacher layer ids).

    ``distilbert_style`` drops token types and the pooler (the DistilBERT architecture; a BERT
    student then exports as a DistilBERT). Dropping token types folds the teacher's type-0
    embedding into the position table, so single-segment inputs embed exactly as in the teacher.

    An ALBERT student keeps the one shared layer and applies it len(layers) times; which teacher
    layers are named does not matter, and the ids returned are the teacher depths it reproduces,
    0..k-1 (its hidden state k is the teacher's hidden state k).
    """
    ids = select_layers(config.num_hidden_layers, layers, num_layers)
    enc = dict(params["encoder"])
    if config.num_distinct_layers == config.num_hidden_layers:
        enc["layer"] = jax.tree.map(lambda x: x[np.asarray(ids)], enc["layer"])
    else:
        ids = list(range(len(ids)))
    cfg = config.replace(num_hidden_layers=len(ids), **_per_layer_fields(config, ids))
    if distilbert_style:
        drop_token_types = drop_pooler = True
    if drop_token_types and cfg.type_vocab_size:
        if cfg.model_type != "bert":
            raise ValueError(
                f"dropping token types of a {cfg.model_type} is not supported (only a BERT "
                "without token types has an HF architecture: DistilBERT)"
            )
        emb = dict(enc["embeddings"])
        type0 = emb.pop("token_type_embeddings")["embedding"][0]
        emb["position_embeddings"] = {"embedding": emb["position_embeddings"]["embedding"] + type0}
        enc["embeddings"] = emb
        cfg = cfg.replace(type_vocab_size=0)
    if drop_pooler:
        enc.pop("pooler", None)
        cfg = cfg.replace(add_pooler=False)
    if cfg.model_type == "bert" and not cfg.type_vocab_size and not cfg.add_pooler:
        cfg = cfg.replace(model_type="distilbert")
    out = {"encoder": enc}
    if keep_head:
        out.update({k: v for k, v in params.items() if k != "encoder"})
    return out, cfg, ids


def student_config(teacher: ModelConfig, preset: str | None = None, **fields) -> ModelConfig:
    """A width-reduced student config: a TextBrewer preset and/or explicit HF fields."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown student preset {preset!r}: expected one of {list(PRESETS)}")
        L, D, F, H = PRESETS[preset]
        fields = (
            dict(num_hidden_layers=L, hidden_size=D, intermediate_size=F, num_attention_heads=H)
            | fields
        )
    if teacher.model_type == "modernbert" and "layer_types" not in fields:
        # A new depth: the teacher's global_attn_every_n_layers (transformers' default 3).
        n = global_every_n(modernbert.layer_types(teacher)) or 3
        L = fields.get("num_hidden_layers", teacher.num_hidden_layers)
        fields["layer_types"] = modernbert_layer_types(L, n)
        fields.setdefault("identity_attn_norm_layers", (0,))
    return teacher.replace(**fields)


def _per_layer_fields(config: ModelConfig, ids: list[int]) -> dict:
    """ModernBERT's per-layer settings go with the layers selected: each keeps its kind (global
    or sliding) and an identity attn_norm stays the identity wherever it lands."""
    if config.model_type != "modernbert":
        return {}
    types = modernbert.layer_types(config)
    identity = config.identity_attn_norm_layers
    return {
        "layer_types": tuple(types[i] for i in ids),
        "identity_attn_norm_layers": tuple(p for p, i in enumerate(ids) if i in identity),
    }


def init_student(config: ModelConfig, head: str | None, rng) -> dict:
    """Random initialisation (as HF does: normal(initializer_range), zero biases)."""
    return jax.tree.map(np.asarray, init_params(config, head, rng))


# ---------------------------------------------------------------- parameter tables


def param_table(params: dict, depth: int = 2) -> list[tuple[str, int, float]]:
    """Rows (module path to `depth`, #params, MB in the stored dtype), like TextBrewer's
    display_parameters; the last row is the total."""
    rows: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        key = "/".join(names[:depth])
        row = rows.setdefault(key, [0, 0.0])
        row[0] += int(np.prod(leaf.shape))
        row[1] += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize / 2**20
    total = (sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values()))
    return [(k, n, mb) for k, (n, mb) in rows.items()] + [("total", *total)]


def format_param_table(params: dict, depth: int = 2, title: str = "") -> str:
    rows = param_table(params, depth)
    width = max(len(r[0]) for r in rows) + 2
    lines = [title] if title else []
    lines.append(f"{'module':<{width}}{'params':>14}{'MB':>10}")
    for i, (name, n, mb) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (width + 24))
        lines.append(f"{name:<{width}}{n:>14,}{mb:>10.2f}")
    return "\n".join(lines)


def count_params(params: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
