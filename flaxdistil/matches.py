"""distill.intermediate_matches and distill.preset: parsing, checks before training, presets.

A match is a dict with TextBrewer's keys::

    {"layer_T": 8, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 312, 768]}            # optional 4th element: {"learning_rate": 1e-3}

'hidden' 0 is the embedding output, l the output of layer l; 'attention' / 'query' / 'key' /
'value' l is layer l (1-based, as TextBrewer's example match sets count); -1 is the last.
Pair losses (fsp, gram, mmd, nst) take ``[i, j]`` on both sides.

Presets (``PRESETS``; ``resolve_preset(name, student_cfg, teacher_cfg)``) set temperature, the
KD loss and weights and the matches for the actual layer counts and widths:
 - distilbert: T=2, KL x T^2 weight 5, hard (MLM) 2, cosine on the last hidden states 1;
 - tinybert: attention_mse on scores + hidden_mse through projections, teacher layer
   ceil(i * L_T / L_S) for student layer i (k * i when the depths divide; embeddings to
   embeddings), then prediction-layer KD (ce, T=1);
 - pkd: BERT-PKD-skip: pkd on [CLS] of layers 1..L_S-1 (weight 100), KD ce at T=5 weight 0.5,
   hard 0.5;
 - minilm: MiniLM's last-layer attention distributions + value relations (equal head counts);
 - minilmv2: MiniLMv2's q-q, k-k, v-v relations of the last layers with 12 relation heads (head
   counts may differ; widths must divide by 12);
 - TextBrewer's example match sets by name: L3_hidden_mse, L4_hidden_mse, L6_hidden_mse,
   L3n_hidden_mse, L4t_hidden_mse (projections), L3_hidden_smmd, L4_hidden_smmd, L6_hidden_smmd,
   L4t_hidden_sgram, L3/L4_attention_mse, _ce, _mse_sum, _ce_mean (the digit is the student's
   depth; the teacher layer is mapped as for tinybert).
"""

from __future__ import annotations

import re

from flaxdistil import losses
from flaxdistil.objective import FEATURES, LOSS_KWARGS, MATCH_KEYS, SAME_HEADS, SAME_WIDTH, Match


def _resolve_layer(layer, feature: str, num_layers: int, side: str, i: int):
    if isinstance(layer, list | tuple):
        return tuple(_resolve_layer(x, feature, num_layers, side, i) for x in layer)
    lo = 0 if feature == "hidden" else 1
    # The last index is num_layers for both: hidden counts 0..L, the 1-based features 1..L.
    j = int(layer) + num_layers + 1 if int(layer) < 0 else int(layer)
    if not lo <= j <= num_layers:
        raise ValueError(
            f"match {i}: layer_{side}={layer} is out of range for feature {feature!r} of a "
            f"{num_layers}-layer {'student' if side == 'S' else 'teacher'} (expected {lo}.."
            f"{num_layers}, or negative from the end)"
        )
    return j


def parse_match(i: int, raw, s_cfg, t_cfg) -> Match:
    """One user dict -> a checked Match; every mistake is one line naming the match."""
    m = dict(raw)
    unknown = sorted(set(m) - set(MATCH_KEYS) - set(LOSS_KWARGS))
    if unknown:
        raise ValueError(
            f"match {i}: unknown keys {unknown}; expected {list(MATCH_KEYS)} (+ {LOSS_KWARGS})"
        )
    for key in ("layer_T", "layer_S", "feature", "loss"):
        if key not in m:
            raise ValueError(f"match {i}: missing key {key!r} in {raw}")
    feat, loss = m["feature"], m["loss"]
    if feat not in FEATURES:
        raise ValueError(f"match {i}: unknown feature {feat!r}; expected one of {FEATURES}")
    if loss not in losses.MATCH_LOSS_MAP:
        raise ValueError(
            f"match {i}: unknown loss {loss!r}; expected one of {sorted(losses.MATCH_LOSS_MAP)}"
        )
    layer_S = _resolve_layer(m["layer_S"], feat, s_cfg.num_hidden_layers, "S", i)
    layer_T = _resolve_layer(m["layer_T"], feat, t_cfg.num_hidden_layers, "T", i)
    proj, proj_lr = _proj(i, m.get("proj"), feat, s_cfg, t_cfg)
    _check_shapes(i, loss, feat, proj, s_cfg, t_cfg, m)
    kwargs = tuple((k, m[k]) for k in LOSS_KWARGS if k in m)
    return Match(layer_T, layer_S, feat, loss, float(m.get("weight", 1.0)), proj, proj_lr, kwargs)


def _proj(i, proj, feat, s_cfg, t_cfg):
    if not proj:
        return None, None
    proj = list(proj)
    if feat != "hidden":
        raise ValueError(f"match {i}: 'proj' maps hidden states only, not feature {feat!r}")
    if len(proj) not in (3, 4) or proj[0] not in ("linear", "relu", "tanh"):
        raise ValueError(
            f"match {i}: proj must be [linear|relu|tanh, dim_S, dim_T(, {{'learning_rate': x}})]"
            f", got {proj}"
        )
    kind, d_s, d_t = proj[0], int(proj[1]), int(proj[2])
    if (d_s, d_t) != (s_cfg.hidden_size, t_cfg.hidden_size):
        raise ValueError(
            f"match {i}: proj [{kind}, {d_s}, {d_t}] does not fit student hidden size "
            f"{s_cfg.hidden_size} -> teacher hidden size {t_cfg.hidden_size}"
        )
    lr = proj[3].get("learning_rate") if len(proj) == 4 else None
    return (kind, d_s, d_t), lr


def _check_shapes(i, loss, feat, proj, s_cfg, t_cfg, m) -> None:
    d_s = proj[2] if proj else s_cfg.hidden_size
    if loss in SAME_WIDTH and d_s != t_cfg.hidden_size:
        raise ValueError(
            f"match {i} ({loss} on {feat} S{m['layer_S']} / T{m['layer_T']}) needs equal widths: "
            f"student {s_cfg.hidden_size}, teacher {t_cfg.hidden_size}; add "
            f'"proj": ["linear", {s_cfg.hidden_size}, {t_cfg.hidden_size}]'
        )
    if loss in SAME_HEADS and s_cfg.num_attention_heads != t_cfg.num_attention_heads:
        raise ValueError(
            f"match {i} ({loss}) compares attention head by head: student has "
            f"{s_cfg.num_attention_heads} heads, teacher {t_cfg.num_attention_heads}; use "
            "attention_mse_sum / attention_ce_mean or minilm_relation"
        )
    if loss == "minilm_relation":
        r = int(m.get("num_relation_heads", 12))
        for who, cfg in (("student", s_cfg), ("teacher", t_cfg)):
            if cfg.hidden_size % r:
                raise ValueError(
                    f"match {i} (minilm_relation): {who} width {cfg.hidden_size} is not a "
                    f"multiple of num_relation_heads {r}"
                )


def parse_matches(raw_list, s_cfg, t_cfg) -> tuple[Match, ...]:
    if raw_list is None:
        return ()
    if isinstance(raw_list, dict):
        raise ValueError("distill.intermediate_matches must be a list of dicts, got one dict")
    return tuple(parse_match(i, m, s_cfg, t_cfg) for i, m in enumerate(raw_list))


# ---------------------------------------------------------------- presets


def teacher_layer(i: int, s_cfg, t_cfg) -> int:
    """TinyBERT's uniform layer map: student layer i <- teacher layer ceil(i * L_T / L_S), which
    is k * i when the depths divide (k = L_T / L_S) and ends at the last layer on both sides."""
    if s_cfg.num_hidden_layers > t_cfg.num_hidden_layers:
        raise ValueError(
            f"a layer-map preset needs a student no deeper than the teacher: student "
            f"{s_cfg.num_hidden_layers} layers, teacher {t_cfg.num_hidden_layers}"
        )
    return -(-i * t_cfg.num_hidden_layers // s_cfg.num_hidden_layers)


def _proj_if_needed(s_cfg, t_cfg):
    if s_cfg.hidden_size == t_cfg.hidden_size:
        return {}
    return {"proj": ["linear", s_cfg.hidden_size, t_cfg.hidden_size]}


def hidden_matches(s_cfg, t_cfg, loss: str, pairs: bool = False) -> list[dict]:
    """Embeddings to embeddings, then student layer i to teacher_layer(i), for every i."""
    proj = {} if loss == "mmd" else _proj_if_needed(s_cfg, t_cfg)
    out = []
    for i in range(s_cfg.num_hidden_layers + 1):
        t = teacher_layer(i, s_cfg, t_cfg)
        s, t = ([i, i], [t, t]) if pairs else (i, t)
        out.append({"layer_T": t, "layer_S": s, "feature": "hidden", "loss": loss, "weight": 1})
        out[-1].update(proj)
    return out


def attention_matches(s_cfg, t_cfg, loss: str) -> list[dict]:
    return [
        {
            "layer_T": teacher_layer(i, s_cfg, t_cfg),
            "layer_S": i,
            "feature": "attention",
            "loss": loss,
            "weight": 1,
        }
        for i in range(1, s_cfg.num_hidden_layers + 1)
    ]


def _distilbert(s, t):
    return dict(DEFAULTS["general"])


def _tinybert(s, t):
    matches = attention_matches(s, t, "attention_mse")
    matches += hidden_matches(s, t, "hidden_mse")
    return dict(temperature=1.0, kd_loss_type="ce", kd_loss_weight=1.0, hard_label_weight=0.0,
                intermediate_matches=matches)  # fmt: skip


def _pkd(s, t):
    matches = [
        {
            "layer_T": teacher_layer(i, s, t),
            "layer_S": i,
            "feature": "hidden",
            "loss": "pkd",
            "weight": 100.0,
        }
        | _proj_if_needed(s, t)
        for i in range(1, s.num_hidden_layers)
    ]
    return dict(temperature=5.0, kd_loss_type="ce", kd_loss_weight=0.5, hard_label_weight=0.5,
                intermediate_matches=matches)  # fmt: skip


def _minilm(s, t):
    matches = [
        {"layer_T": -1, "layer_S": -1, "feature": "attention", "loss": "minilm_attention"},
        {"layer_T": -1, "layer_S": -1, "feature": "value", "loss": "minilm_relation",
         "num_relation_heads": t.num_attention_heads},
    ]  # fmt: skip
    return dict(kd_loss_weight=0.0, hard_label_weight=0.0, intermediate_matches=matches)


def _minilmv2(s, t):
    matches = [
        {"layer_T": -1, "layer_S": -1, "feature": f, "loss": "minilm_relation", "weight": 1.0,
         "num_relation_heads": 12}
        for f in ("query", "key", "value")
    ]  # fmt: skip
    return dict(kd_loss_weight=0.0, hard_label_weight=0.0, intermediate_matches=matches)


PRESETS = {
    "distilbert": _distilbert,
    "tinybert": _tinybert,
    "pkd": _pkd,
    "minilm": _minilm,
    "minilmv2": _minilmv2,
}
_TEXTBREWER = re.compile(
    r"L(\d+)[nt]?_(hidden_mse|hidden_smmd|hidden_sgram|"
    r"attention_mse_sum|attention_ce_mean|attention_mse|attention_ce)"
)


def _textbrewer_set(name: str, s_cfg, t_cfg) -> dict:
    depth, kind = _TEXTBREWER.fullmatch(name).groups()
    if int(depth) != s_cfg.num_hidden_layers:
        raise ValueError(
            f"preset {name!r} is for a {depth}-layer student; this student has "
            f"{s_cfg.num_hidden_layers} layers"
        )
    if kind.startswith("attention"):
        return {"intermediate_matches": attention_matches(s_cfg, t_cfg, kind)}
    loss, pairs = {"hidden_mse": ("hidden_mse", False), "hidden_smmd": ("mmd", True),
                   "hidden_sgram": ("gram", True)}[kind]  # fmt: skip
    return {"intermediate_matches": hidden_matches(s_cfg, t_cfg, loss, pairs)}


# What an unset (None) distill field means when no preset sets it, per job: general distillation
# is DistilBERT's triple loss; task distillation is the task loss + KL x T^2 on the logits.
_COS_LAST = {"layer_T": -1, "layer_S": -1, "feature": "hidden", "loss": "cos", "weight": 1.0}
DEFAULTS = {
    "general": dict(temperature=2.0, kd_loss_type="kl_t2", kd_loss_weight=5.0,
                    hard_label_weight=2.0, intermediate_matches=[_COS_LAST]),
    "task": dict(temperature=2.0, kd_loss_type="kl_t2", kd_loss_weight=1.0,
                 hard_label_weight=1.0, intermediate_matches=[]),
}  # fmt: skip


def distill_fields(distill: dict, job: str, s_cfg, t_cfg) -> tuple[dict, dict]:
    """(the distill fields in force, where each came from): a value set in the config or on the
    command line wins, then the preset's, then the job's default (DEFAULTS)."""
    d, source = dict(distill), {}
    preset = resolve_preset(d["preset"], s_cfg, t_cfg) if d.get("preset") else {}
    for k, default in DEFAULTS[job].items():
        if d.get(k) is not None:
            source[k] = "config"
        elif k in preset:
            d[k], source[k] = preset[k], f"preset {d['preset']}"
        else:
            d[k], source[k] = default, "default"
    return d, source


def resolve_preset(name: str, s_cfg, t_cfg) -> dict:
    """The distill.* fields a preset sets, for these student and teacher configs."""
    if name in PRESETS:
        return PRESETS[name](s_cfg, t_cfg)
    if _TEXTBREWER.fullmatch(name):
        return _textbrewer_set(name, s_cfg, t_cfg)
    raise ValueError(
        f"unknown distill.preset {name!r}: expected one of {sorted(PRESETS)} or a TextBrewer "
        "match set such as L3_hidden_mse, L4t_hidden_mse, L3_hidden_smmd, L4_attention_mse"
    )
