"""Shared fixtures: tiny random transformers models and the measured-parity report."""

import datetime
import json
import os
import tempfile
from pathlib import Path

import pytest

from flaxdistil.hf_table import AUTO_CLASSES as AUTO_CLASS
from flaxdistil.models.config import RENAMED

# Tests compile hundreds of small, different programs and run each a few times, so XLA's
# compile time is most of the suite: LLVM at -O0 without its expensive passes halves it (a tiny
# train step 10.8 -> 4.2 s). Set before any test starts jax's backend (importing jax does not);
# subprocesses inherit it through the tests' ENV dicts, which extend os.environ's XLA_FLAGS.
# The benchmarks (scripts/bench*) never run with it.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# Scripts run as a user runs them (subprocesses) compile the same programs again and again: a
# run, the run killed, the run resumed. One persistent compile cache per test session (shared
# by the xdist workers, new for every session, so no test sees another session's programs)
# serves the repeats. jax reads these variables when it is imported: this process, which
# imported it above, keeps compiling without the cache.
_SESSION = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / f"flaxdistil-test-xla-{_SESSION}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPORT = Path(__file__).resolve().parents[1] / "reports" / "parity.json"


def _tiny_config(transformers, family: str, **overrides):
    """Hidden 32, 4 heads, odd FFN 37, vocab 99: small for CPU, odd enough to catch mix-ups."""
    if family == "xlnet":  # no positions table; overrides in BERT's names, as for the others
        names = {v: k for k, v in RENAMED["xlnet"].items()}
        kw = dict(d_model=32, n_layer=3, n_head=4, d_inner=37, vocab_size=99)
        return transformers.XLNetConfig(**kw | {names.get(k, k): v for k, v in overrides.items()})
    if family == "distilbert":
        kw = dict(dim=32, n_layers=3, n_heads=4, hidden_dim=37)
        cls = transformers.DistilBertConfig
    else:
        kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)
        cls = {
            "bert": transformers.BertConfig,
            "roberta": transformers.RobertaConfig,
            "xlm-roberta": transformers.XLMRobertaConfig,
            "camembert": transformers.CamembertConfig,
            "electra": transformers.ElectraConfig,
            "albert": transformers.AlbertConfig,
            "deberta-v2": transformers.DebertaV2Config,
        }[family]
        roberta_like = family in ("roberta", "xlm-roberta", "camembert")
        kw["type_vocab_size"] = 1 if roberta_like else 2
        if roberta_like:
            kw.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
        if family in ("electra", "albert"):  # DeBERTa projects only when asked
            kw["embedding_size"] = 20  # factorised: projected to hidden_size
    kw.update(vocab_size=99, max_position_embeddings=64)
    return cls(**{**kw, **overrides})


@pytest.fixture(scope="session")
def make_hf_model():
    """``make_hf_model(family, head, seed=0, **config)``: a perturbed tiny torch model (eval mode);
    ``make_hf_model.auto_class(head)`` is the matching ``transformers.AutoModel*`` class.

    HF initialises biases to zero and LayerNorms to (1, 0), which would hide a dropped bias or a
    swapped LayerNorm; noise on every parameter makes each tensor matter.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def make(family: str, head: str | None, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        cfg = _tiny_config(transformers, family, **overrides)
        cfg.num_labels = 2 if head == "qa" else 3
        auto = getattr(transformers, AUTO_CLASS[head])
        model = auto.from_config(cfg, attn_implementation="eager").eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                scale = 0.2 if "LayerNorm" in name or "layer_norm" in name else 0.05
                p.add_(torch.randn_like(p) * scale)
        return model

    make.auto_class = lambda head: getattr(transformers, AUTO_CLASS[head])
    return make


@pytest.fixture(scope="session")
def parity_report():
    """A dict that tests fill with measured numbers; merged into reports/parity.json at the end."""
    measured: dict = {}
    yield measured
    if not measured:
        return
    old = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    old.setdefault("measured", {}).update(measured)
    import jax
    import torch
    import transformers

    old["environment"] = {
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "backend": jax.default_backend(),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
