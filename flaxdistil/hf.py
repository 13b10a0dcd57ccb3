"""Load Hugging Face checkpoints into flaxdistil params and export them back (hf_table.py maps)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from flaxdistil import hf_table, prune_structured
from flaxdistil.models import Model, ModelConfig
from flaxdistil.models.heads import init_params

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
    "model.quant.safetensors",  # quantize.save_compact's: read back dequantised
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the requested model; the message lists the offending names."""


@dataclasses.dataclass
class LoadReport:
    weights_file: str
    new_init: list[str]  # our param paths initialised on purpose (a head the checkpoint lacks)
    unused: list[str]  # checkpoint keys of heads we were not asked for

    def __str__(self) -> str:
        lines = [f"loaded {self.weights_file}"]
        if self.new_init:
            lines.append(f"newly initialised (not in checkpoint): {', '.join(self.new_init)}")
        if self.unused:
            lines.append(f"checkpoint weights not used by this head: {_brief(self.unused)}")
        return "\n".join(lines)


@dataclasses.dataclass
class Pretrained:
    config: ModelConfig
    params: dict
    head: str | None
    path: Path
    report: LoadReport

    @property
    def model(self) -> Model:
        return Model(self.config, self.head)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)


def _brief(names: list[str], n: int = 12) -> str:
    more = f" ... (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


# ---------------------------------------------------------------- reading files


# Hub downloads: the metadata, then one weight format, tried in read_state_dict's order, so that a
# repo with both safetensors and pytorch_model.bin (or flax_model.msgpack) downloads one of them.
HUB_METADATA = ["*.json", "*.txt", "*.model"]
HUB_WEIGHTS = (["*.safetensors"], ["pytorch_model*.bin"], ["*.msgpack"])


def resolve(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory, a short name of flaxdistil.assets.CHECKPOINTS ('minilm', 'antiberty',
    'minilm-mlm'), or a Hub id downloaded to the HF cache at ``revision`` (a branch, tag or commit;
    None: main; needs network access)."""
    from flaxdistil import assets

    if str(path_or_hub_id) in assets.CHECKPOINTS:
        return assets.CHECKPOINTS[str(path_or_hub_id)]()
    p = Path(path_or_hub_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise FileNotFoundError(f"expected a checkpoint directory, found a file: {p}")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path_or_hub_id)):
        raise FileNotFoundError(f"no checkpoint directory at {p}")
    try:
        return _download(str(path_or_hub_id), revision)
    except Exception as e:  # noqa: BLE001 - offline, gated, or missing repo: one clear message
        raise FileNotFoundError(
            f"{path_or_hub_id!r} is neither a local directory nor a reachable Hugging Face Hub "
            f"repo ({type(e).__name__}: {e})"
        ) from None


def _download(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub

    for weights in HUB_WEIGHTS:
        snapshot = Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=HUB_METADATA + weights
            )
        )
        if any(f for pattern in weights for f in snapshot.glob(pattern)):
            break
    return snapshot  # without weights, read_state_dict names what it looked for


def read_state_dict(ckpt: Path) -> tuple[dict[str, np.ndarray], str]:
    """HF PyTorch-style keys -> float32 NumPy arrays, from whichever weight file is present."""
    for name in WEIGHT_FILES:
        f = ckpt / name
        if not f.exists():
            continue
        try:
            if name.endswith(".index.json"):
                shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
                sd = {}
                for s in shards:
                    sd.update(_read_one(ckpt / s))
            else:
                sd = _read_one(f)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated or corrupt files raise many types
            raise CheckpointError(f"could not read {f}: {type(e).__name__}: {e}") from None
        return sd, name
    raise FileNotFoundError(f"no weights in {ckpt}: expected one of {', '.join(WEIGHT_FILES)}")


def _read_one(f: Path) -> dict[str, np.ndarray]:
    if f.name.endswith(".quant.safetensors"):
        from flaxdistil import quantize

        return quantize.read_compact_state_dict(f)
    if f.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: v.astype(np.float32) for k, v in load_file(f).items()}
    if f.suffix == ".bin":
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{f.name} is a PyTorch pickle and needs torch to read: pip install torch==2.13.0 "
                "(or convert the checkpoint to model.safetensors)"
            ) from None
        sd = torch.load(f, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    return _read_flax_msgpack(f)


def _read_flax_msgpack(f: Path) -> dict[str, np.ndarray]:
    """HF's Flax layout: kernel [in, out], scale, embedding -> PyTorch names and layout."""
    from flax.serialization import msgpack_restore

    tree = msgpack_restore(f.read_bytes())
    out = {}
    for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        leaf, v = names[-1], np.asarray(v, np.float32)
        if leaf == "kernel":
            leaf, v = "weight", v.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join(names[:-1] + [leaf])] = v
    return out


def read_config(ckpt: Path) -> dict:
    f = ckpt / "config.json"
    if not f.exists():
        raise FileNotFoundError(f"no config.json in {ckpt}")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None


# ---------------------------------------------------------------- HF -> flaxdistil


def _strip_prefix(sd: dict, model_type: str) -> dict:
    pre = f"{hf_table.PREFIX[model_type]}."
    return {k[len(pre) :] if k.startswith(pre) else k: v for k, v in sd.items()}


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else k
        out += _paths(v, p) if isinstance(v, dict) else [p]
    return out


def convert_from_hf(sd: dict, cfg: ModelConfig, head: str | None, rng=None):
    """HF state dict -> (params, new_init, unused); raises CheckpointError listing every problem."""
    sd = _strip_prefix(sd, cfg.model_type)
    template = jax.eval_shape(lambda: init_params(cfg, head, jax.random.key(0)))
    wanted, not_in_hf = set(_paths(template)), hf_table.absent_in_hf(cfg)
    params, used, missing, misshapen, new_init = {}, set(), [], [], []
    for path, key, layout, is_head, module in hf_table.rows(cfg.model_type, head, cfg.legacy):
        if path not in wanted:  # e.g. the pooler of a head that has none
            continue
        stacked = "{i}" in key
        keys = [key.format(i=i) for i in range(cfg.num_distinct_layers)] if stacked else [key]
        absent = [k for k in keys if k not in sd and k not in not_in_hf]
        if absent:
            if is_head or path.startswith("encoder/pooler"):
                new_init.append(module)
            else:
                missing += absent
            continue
        # Check each HF tensor in HF's own layout before stacking: the message then names shapes
        # as the checkpoint has them, and one odd layer cannot crash np.stack.
        ours = _get(template, path).shape[1 if stacked else 0 :]
        want = hf_table.hf_shape(ours, layout, cfg.num_attention_heads)
        keys_in = [k for k in keys if k in sd]
        bad = [f"{k}: expected {want}, found {sd[k].shape}" for k in keys_in if sd[k].shape != want]
        if bad:
            misshapen += bad
            continue
        identity = np.ones if path.endswith("/scale") else np.zeros  # a LayerNorm's (1, 0)
        arrs = [
            hf_table.from_hf(sd[k], layout) if k in sd else identity(ours, np.float32) for k in keys
        ]
        _set(params, path, np.stack(arrs) if stacked else arrs[0])
        used.update(keys)
    _check_tied(sd, cfg.model_type, misshapen)
    ignorable = set(hf_table.TIED[cfg.model_type]) | set(hf_table.BUFFERS)
    leftover = sorted(k for k in sd if k not in used and k not in ignorable)
    unused = [k for k in leftover if k.startswith(hf_table.HEAD_NAMESPACES[cfg.model_type])]
    unexpected = [k for k in leftover if k not in unused]
    problems = []
    if missing:
        problems.append(f"missing: {_brief(missing)}")
    if misshapen:
        problems.append(f"misshapen: {_brief(misshapen)}")
    if unexpected:
        problems.append(f"unexpected: {_brief(unexpected)}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not match a {cfg.model_type} model with head={head!r} "
            f"({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}); "
            + "; ".join(problems)
        )
    if new_init:
        fresh = init_params(cfg, head, rng if rng is not None else jax.random.key(0))
        for path in sorted(set(_paths(template)) - set(_paths(params))):
            _set(params, path, np.asarray(_get(fresh, path)))
        new_init = sorted(set(new_init))
    return params, new_init, unused


def _check_tied(sd: dict, model_type: str, problems: list) -> None:
    for tied, source in hf_table.TIED[model_type].items():
        if tied in sd and source in sd and not np.array_equal(sd[tied], sd[source]):
            problems.append(f"{tied} differs from {source} (untied decoders are not supported)")


def load_pretrained(
    path_or_hub_id,
    head: str | None = "mlm",
    *,
    num_labels: int | None = None,
    rng=None,
    revision: str | None = None,
    **config_overrides,
) -> Pretrained:
    """Load a HF checkpoint (safetensors / PyTorch bin / Flax msgpack) as params for ``head``;
    ``revision`` picks the branch, tag or commit of a Hub repo.

    A head the checkpoint lacks is initialised from ``rng`` and reported in ``.report``; weights
    of other heads are reported as unused; anything else that does not fit raises CheckpointError.
    """
    ckpt = resolve(path_or_hub_id, revision)
    hf_config = read_config(ckpt)
    cfg = ModelConfig.from_hf(hf_config)
    if num_labels is not None:
        config_overrides.setdefault("id2label", None)  # a new head: old names don't fit
        config_overrides["num_labels"] = num_labels
    sd, weights_file = read_state_dict(ckpt)
    if _lm_predictions_without_legacy(hf_config, sd):
        config_overrides.setdefault("legacy", False)
    cfg = cfg.replace(**config_overrides)
    params, new_init, unused = convert_from_hf(sd, cfg, head, rng)
    report = LoadReport(weights_file, new_init, unused)
    return Pretrained(cfg, jax.tree.map(np.asarray, params), head, ckpt, report)


def _lm_predictions_without_legacy(hf_config: dict, sd: dict) -> bool:
    """Microsoft's DeBERTa-v2/v3 checkpoints keep their trained MLM head as lm_predictions.* and
    their config.json predates the legacy flag, whose default (True) would make transformers
    (and us) initialise a fresh cls.predictions head; the weights say which layout they are."""
    if hf_config.get("model_type") != "deberta-v2" or "legacy" in hf_config:
        return False
    return any(k.startswith("lm_predictions.") for k in sd) and not any(
        k.startswith("cls.predictions.") for k in sd
    )


# ---------------------------------------------------------------- flaxdistil -> HF


def as_distilbert(cfg: ModelConfig) -> ModelConfig:
    """A BERT without token types and pooler is a DistilBERT; check the remaining differences."""
    if cfg.model_type == "distilbert":
        return cfg
    problems = []
    if cfg.model_type != "bert":
        problems.append(f"model_type {cfg.model_type!r} (only a BERT becomes a DistilBERT)")
    if cfg.type_vocab_size:
        problems.append(f"type_vocab_size {cfg.type_vocab_size} (DistilBERT has none)")
    if cfg.layer_norm_eps != 1e-12:
        problems.append(f"layer_norm_eps {cfg.layer_norm_eps} (DistilBERT fixes 1e-12)")
    if cfg.hidden_act not in ("gelu", "relu"):
        problems.append(f"hidden_act {cfg.hidden_act!r} (DistilBERT has gelu or relu)")
    if problems:
        raise ValueError("cannot export as DistilBERT: " + "; ".join(problems))
    return cfg.replace(model_type="distilbert", add_pooler=False)


def convert_to_hf(params: dict, cfg: ModelConfig, head: str | None) -> dict[str, np.ndarray]:
    prefix = f"{hf_table.PREFIX[cfg.model_type]}." if head is not None else ""
    have, not_in_hf = set(_paths(params)), hf_table.absent_in_hf(cfg)
    H = cfg.num_attention_heads
    sd = {}
    for path, key, layout, is_head, _ in hf_table.rows(cfg.model_type, head, cfg.legacy):
        if path not in have:
            continue
        value = np.asarray(_get(params, path), np.float32)
        name = key if is_head else prefix + key
        if "{i}" in key:
            for i in range(value.shape[0]):
                if key.format(i=i) not in not_in_hf:
                    sd[name.format(i=i)] = np.ascontiguousarray(hf_table.to_hf(value[i], layout, H))
        else:
            sd[name] = np.ascontiguousarray(hf_table.to_hf(value, layout, H))
    if "mlm" in params:  # HF's decoder bias is the head bias under a second name
        for tied, source in hf_table.TIED[cfg.model_type].items():
            if tied.endswith("decoder.bias") and source in sd:  # DeBERTa: legacy only
                sd[tied] = sd[source].copy()
    return sd


def save_pretrained(
    out_dir,
    params: dict,
    config: ModelConfig,
    head: str | None = "mlm",
    *,
    tokenizer_from=None,
    export_as: str | None = None,
) -> Path:
    """Write model.safetensors + config.json (+ tokenizer files) that transformers v5 loads.

    ``export_as='distilbert'`` writes a BERT student without token types and pooler as a
    DistilBERT. The directory is written to a temporary sibling and renamed into place.
    """
    from safetensors.numpy import save_file

    if config.all_head_size != config.hidden_size:
        n = config.hidden_size // config.head_dim - config.num_attention_heads
        print(
            f"export: transformers 5 has no pruned_heads, so the {n} pruned heads per layer are "
            "written as zero weights (same outputs, full-size attention matrices)"
        )
        params, config = prune_structured.full_heads(params, config)
    if export_as == "distilbert" or (config.model_type == "bert" and not config.type_vocab_size):
        config = as_distilbert(config)
        params = _drop_pooler(params)
    elif export_as not in (None, config.model_type):
        raise ValueError(f"export_as must be None or 'distilbert', got {export_as!r}")
    with atomic_dir(out_dir) as tmp:
        save_file(
            convert_to_hf(params, config, head),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        write_config(tmp, config, head, tokenizer_from)
    return Path(out_dir).resolve()


def write_config(out_dir: Path, config: ModelConfig, head: str | None, tokenizer_from=None):
    """config.json (with the architecture of ``head``) and the tokenizer files, as transformers
    reads them."""
    hf = config.to_hf()
    hf["architectures"] = [hf_table.ARCHITECTURES[config.model_type][head]]
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    if tokenizer_from is not None:
        _copy_tokenizer(tokenizer_from, out_dir)


@contextlib.contextmanager
def atomic_dir(out_dir):
    """Yield a temporary sibling of out_dir to fill; when the block succeeds it takes out_dir's
    place by a rename, so a run killed mid-write never leaves a half-written directory there."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _drop_pooler(params: dict) -> dict:
    enc = {k: v for k, v in params["encoder"].items() if k != "pooler"}
    return {**params, "encoder": enc}


def _copy_tokenizer(src, dst: Path) -> None:
    if hasattr(src, "save_pretrained"):
        src.save_pretrained(dst)
        return
    found = [f for f in TOKENIZER_FILES if (Path(src) / f).exists()]
    if not found:
        raise FileNotFoundError(f"no tokenizer files in {src}: expected some of {TOKENIZER_FILES}")
    for f in found:
        shutil.copy(Path(src) / f, dst / f)
