"""flaxdistil.hf: the Levanter-style round trip through transformers, every weight-file format HF
has used, load reports, the error messages a user sees, and scripts/convert.py end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxdistil import hf_table
from flaxdistil.hf import CheckpointError, load_pretrained, save_pretrained
from flaxdistil.models import FAMILY_HEADS, Model, ModelConfig, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("bert", "roberta", "distilbert")  # the other families: test_families.py
HEADS = FAMILY_HEADS["bert"]
CONFIG_FIELDS = {  # fields that must survive HF -> flaxdistil -> HF, under each family's names
    "bert": ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "vocab_size", "max_position_embeddings", "type_vocab_size",
             "layer_norm_eps", "pad_token_id", "hidden_dropout_prob",
             "attention_probs_dropout_prob", "initializer_range", "num_labels", "id2label"],
    "distilbert": ["dim", "n_layers", "n_heads", "hidden_dim", "activation", "dropout",
                   "attention_dropout", "vocab_size", "max_position_embeddings", "pad_token_id",
                   "sinusoidal_pos_embds", "seq_classif_dropout", "qa_dropout",
                   "initializer_range", "num_labels", "id2label"],
}  # fmt: skip
CONFIG_FIELDS["roberta"] = CONFIG_FIELDS["bert"]


def _ids(vocab=99):
    ids = np.random.RandomState(0).randint(3, vocab, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    return torch.tensor(ids), torch.tensor(mask)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def _same_tree(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_transformers(family, head, make_hf_model, tmp_path):
    """HF -> flaxdistil -> save_pretrained -> AutoModel*: same tensors, keys, logits, config."""
    hf = make_hf_model(family, head)
    hf.save_pretrained(tmp_path / "hf")
    pre = load_pretrained(tmp_path / "hf", head=head)
    out = save_pretrained(tmp_path / "out", pre.params, pre.config, head)

    auto = make_hf_model.auto_class(head)
    back, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert type(back) is type(hf)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    theirs, ours = hf.state_dict(), back.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs), "tensors differ"
    # The files hold the same keys up to the tied duplicates (HF leaves them out, we write them).
    ours_file = set(load_file(out / "model.safetensors"))
    hf_file = set(load_file(tmp_path / "hf" / "model.safetensors"))
    tied = set(hf_table.TIED[family]) | {f"{family}.{k}" for k in hf_table.TIED[family]}
    assert ours_file - tied == hf_file - tied

    ids, mask = _ids()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask)
        b = back.eval()(input_ids=ids, attention_mask=mask)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    saved = json.loads((out / "config.json").read_text())
    for field in CONFIG_FIELDS[family]:
        assert getattr(back.config, field) == getattr(hf.config, field), field
        assert field in saved or field in ("num_labels", "id2label"), field  # names on disk
    if family == "distilbert":
        assert "hidden_size" not in saved and "n_layers" in saved
    # id2label None and the default LABEL_i names are the same labels (checked above via HF).
    assert ModelConfig.from_hf(saved).replace(id2label=None) == pre.config.replace(id2label=None)


def test_bert_student_exports_as_distilbert(tmp_path):
    """A BERT without token types or pooler is written as a DistilBERT that transformers runs."""
    cfg = ModelConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64, type_vocab_size=0,
                      add_pooler=False)  # fmt: skip
    params = init_params(cfg, "mlm", jax.random.key(0))
    out = save_pretrained(tmp_path / "d", params, cfg, "mlm", export_as="distilbert")
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "DistilBertForMaskedLM"
    ]
    back, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"]), info
    ids, mask = _ids()
    ours, _ = Model(cfg, "mlm").apply({"params": params}, ids.numpy(), mask.numpy())
    with torch.no_grad():
        theirs = back.eval()(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(np.asarray(ours) - theirs).max() <= 1e-5
    with pytest.raises(ValueError, match="type_vocab_size 2"):
        save_pretrained(tmp_path / "e", params, cfg.replace(type_vocab_size=2), "mlm",
                        export_as="distilbert")  # fmt: skip


# ---------------------------------------------------------------- formats and reports


@pytest.fixture(scope="module")
def bert_mlm(make_hf_model, tmp_path_factory):
    """A tiny BertForMaskedLM saved as model.safetensors, and the params loaded from it."""
    hf = make_hf_model("bert", "mlm", num_hidden_layers=2)
    path = tmp_path_factory.mktemp("bert_mlm")
    hf.save_pretrained(path)
    return hf, path, load_pretrained(path, head="mlm")


def _checkpoint(tmp_path, src: Path, sd: dict | None = None, name="model.safetensors") -> Path:
    """A copy of src's config.json with the state dict ``sd`` (default: src's own)."""
    tmp_path.mkdir(exist_ok=True)
    shutil.copy(src / "config.json", tmp_path / "config.json")
    if sd is None:
        sd = load_file(src / "model.safetensors")
    save_file(sd, str(tmp_path / name))
    return tmp_path


def test_pytorch_bin(bert_mlm, tmp_path):
    hf, path, ref = bert_mlm
    shutil.copy(path / "config.json", tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # with the tied decoder keys
    pre = load_pretrained(tmp_path, head="mlm")
    assert pre.report.weights_file == "pytorch_model.bin"
    _same_tree(pre.params, ref.params)


def _hf_flax_tree(model) -> dict:
    """HF's Flax layout, built independently of hf_table: nested dicts, Linear -> kernel [in, out],
    LayerNorm -> scale, Embedding -> embedding, the tied decoder absent."""
    kind = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            kind[name] = "kernel"
        elif isinstance(mod, torch.nn.LayerNorm):
            kind[name] = "scale"
        elif isinstance(mod, torch.nn.Embedding):
            kind[name] = "embedding"
    tree = {}
    for key, v in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if ".decoder" in key:
            continue
        v = v.numpy()
        if leaf == "weight":
            leaf = kind[module]
            v = v.T if leaf == "kernel" else v
        node = tree
        for part in module.split("."):
            node = node.setdefault(part, {})
        node[leaf] = v
    return tree


def test_flax_msgpack(bert_mlm, tmp_path):
    from flax.serialization import msgpack_serialize

    hf, path, ref = bert_mlm
    tree = _hf_flax_tree(hf)
    assert tree["bert"]["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"].shape
    shutil.copy(path / "config.json", tmp_path / "config.json")
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
    pre = load_pretrained(tmp_path, head="mlm")
    assert pre.report.weights_file == "flax_model.msgpack"
    _same_tree(pre.params, ref.params)


def test_sharded_safetensors(bert_mlm, tmp_path):
    hf, _, ref = bert_mlm
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    pre = load_pretrained(tmp_path, head="mlm")
    assert pre.report.weights_file == "model.safetensors.index.json"
    _same_tree(pre.params, ref.params)


def test_keys_with_and_without_family_prefix(bert_mlm, tmp_path):
    _, path, ref = bert_mlm
    sd = load_file(path / "model.safetensors")
    assert any(k.startswith("bert.") for k in sd)
    bare = {k.removeprefix("bert."): v for k, v in sd.items()}
    _same_tree(load_pretrained(_checkpoint(tmp_path, path, bare), head="mlm").params, ref.params)


def test_mlm_checkpoint_as_bare_encoder(bert_mlm):
    _, path, ref = bert_mlm
    pre = load_pretrained(path, head=None)
    assert pre.report.unused and all(k.startswith("cls.") for k in pre.report.unused)
    assert "cls.predictions.transform.dense.weight" in pre.report.unused
    assert pre.report.new_init == ["encoder/pooler"]  # BertForMaskedLM has no pooler
    assert "cls.predictions" in str(pre.report)
    enc = {k: v for k, v in pre.params["encoder"].items() if k != "pooler"}
    _same_tree(enc, ref.params["encoder"])


def test_bare_encoder_as_classifier(make_hf_model, tmp_path):
    hf = make_hf_model("bert", None, num_hidden_layers=2)
    hf.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path, head="seq_cls", num_labels=5)
    assert pre.report.new_init == ["classifier/out"] and pre.report.unused == []
    assert pre.params["classifier"]["out"]["kernel"].shape == (32, 5)
    pooler = hf.state_dict()["pooler.dense.weight"].numpy()
    np.testing.assert_array_equal(pre.params["encoder"]["pooler"]["kernel"], pooler.T)
    assert "classifier/out" in str(pre.report)


def test_hub_download_prefers_safetensors_then_bin(bert_mlm, tmp_path, monkeypatch):
    """A Hub repo with both formats downloads model.safetensors only; one with only
    pytorch_model.bin downloads that (not other *.bin files); revision is passed through."""
    import fnmatch

    import huggingface_hub

    hf, path, ref = bert_mlm
    src = tmp_path / "src"
    src.mkdir()
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    (src / "training_args.bin").write_bytes(b"not weights")
    files = {
        "config.json": path / "config.json",
        "model.safetensors": path / "model.safetensors",
        "pytorch_model.bin": src / "pytorch_model.bin",
        "training_args.bin": src / "training_args.bin",
    }
    repos = {"org/both": files, "org/bin-only": {k: v for k, v in files.items() if "safe" not in k}}
    calls = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        snap = tmp_path / "hub" / repo_id.replace("/", "--") / str(revision)
        snap.mkdir(parents=True, exist_ok=True)
        for name, f in repos[repo_id].items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                shutil.copy(f, snap / name)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    both = load_pretrained("org/both", head="mlm", revision="v1.0")
    assert both.report.weights_file == "model.safetensors"
    assert sorted(p.name for p in both.path.iterdir()) == ["config.json", "model.safetensors"]
    assert calls == [("org/both", "v1.0")]
    _same_tree(both.params, ref.params)

    calls.clear()
    bin_only = load_pretrained("org/bin-only", head="mlm")
    assert bin_only.report.weights_file == "pytorch_model.bin"
    assert not (bin_only.path / "training_args.bin").exists()
    assert calls == [("org/bin-only", None)] * 2  # safetensors first, then the bin
    _same_tree(bin_only.params, ref.params)


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="found a file"):
        load_pretrained(tmp_path / "file")


def test_directory_without_config_or_weights(bert_mlm, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    shutil.copy(bert_mlm[1] / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        load_pretrained(tmp_path)


def test_unsupported_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(ValueError, match="'gpt2'.*'bert', 'roberta', 'distilbert'"):
        load_pretrained(tmp_path)


def test_missing_layer_tensor(bert_mlm, tmp_path):
    _, path, _ = bert_mlm
    sd = load_file(path / "model.safetensors")
    gone = "bert.encoder.layer.1.attention.self.key.weight"
    del sd[gone]
    with pytest.raises(CheckpointError, match=f"missing: {gone.removeprefix('bert.')}"):
        load_pretrained(_checkpoint(tmp_path, path, sd), head="mlm")


def test_misshapen_tensor(bert_mlm, tmp_path):
    _, path, _ = bert_mlm
    sd = load_file(path / "model.safetensors")
    sd["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
    with pytest.raises(CheckpointError, match=r"misshapen: .*layer\.0\.intermediate\.dense\.weight"
                       r": expected \(37, 32\), found \(36, 32\)"):  # fmt: skip
        load_pretrained(_checkpoint(tmp_path, path, sd), head="mlm")


def test_unexpected_key(bert_mlm, tmp_path):
    _, path, _ = bert_mlm
    sd = load_file(path / "model.safetensors")
    sd["bert.encoder.layer.2.output.dense.weight"] = np.zeros((32, 37), np.float32)  # 3rd layer
    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.layer\.2\.output\.dense"):
        load_pretrained(_checkpoint(tmp_path, path, sd), head="mlm")


def test_truncated_safetensors(bert_mlm, tmp_path):
    _, path, _ = bert_mlm
    ckpt = _checkpoint(tmp_path, path)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not read .*model.safetensors"):
        load_pretrained(ckpt, head="mlm")


def test_unsupported_head(bert_mlm):
    with pytest.raises(ValueError, match="unknown head 'lm'"):
        load_pretrained(bert_mlm[1], head="lm")


# ---------------------------------------------------------------- scripts/convert.py


def _convert(*args):
    cmd = [sys.executable, str(ROOT / "scripts" / "convert.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_convert_script(make_hf_model, tmp_path):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + ["the", "a", "cat", "dog", "sat", "on", "mat", "."]
    src = tmp_path / "src"
    make_hf_model("bert", "mlm", num_hidden_layers=2).save_pretrained(src)
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(src)
    texts = ["--text", "the cat sat on the mat .", "--text", "a dog"]

    r = _convert(
        "to-hf", "--src", src, "--head", "mlm", "--out", tmp_path / "hf", "--check", *texts
    )
    assert r.returncode == 0, r.stderr
    assert "check: max abs diff" in r.stdout
    assert (tmp_path / "hf" / "tokenizer.json").exists()

    out = tmp_path / "flax" / "params.msgpack"
    r = _convert("to-flax", "--src", src, "--head", "mlm", "--out", out, "--check", *texts)
    assert r.returncode == 0, r.stderr
    diff = float(r.stdout.split("max abs diff transformers vs flaxdistil = ")[1].split()[0])
    assert diff <= 1e-4
    assert json.loads(out.with_name("params.config.json").read_text())["flaxdistil_head"] == "mlm"

    # Without torch, --check says what is missing instead of failing deep inside transformers.
    no_torch = "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    no_torch += "runpy.run_path(sys.argv[0], run_name='__main__')"
    args = ["to-hf", "--src", src, "--out", tmp_path / "hf2", "--check"]
    cmd = [sys.executable, "-c", no_torch, str(ROOT / "scripts" / "convert.py"), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode != 0 and "needs torch" in r.stderr, r.stderr
