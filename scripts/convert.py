"""Convert Hugging Face checkpoints to flaxdistil params, and flaxdistil checkpoints back to HF.

  python scripts/convert.py to-flax --src HF_DIR_OR_HUB_ID --head mlm --out params.msgpack --check
  python scripts/convert.py to-hf --src HF_DIR --head mlm --out OUT_DIR [--export-as distilbert]

to-flax writes our params (flax.serialization msgpack) and params.config.json (the HF config plus
the head) next to them; to-hf writes model.safetensors + config.json + the tokenizer files.
--check runs transformers (PyTorch) on the HF side (SRC for to-flax, OUT for to-hf) and flaxdistil
on the converted side over a few tokenised sentences; it exits 1 if they differ by more than 1e-4.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flax import serialization

from flaxdistil.hf import TOKENIZER_FILES, load_pretrained, save_pretrained
from flaxdistil.hf_table import AUTO_CLASSES
from flaxdistil.models import HEADS, Model, ModelConfig
from flaxdistil.runner import ArgumentParser, user_errors

SENTENCES = ["The cat sat on the mat.", "Distillation keeps most of the teacher's accuracy."]
TOL = 1e-4


def check(hf_dir, params, cfg: ModelConfig, head, tokenizer_dir, texts) -> float:
    """Max abs difference of logits (last hidden state for head None): transformers vs ours."""
    try:
        import torch
        import transformers
    except ImportError:
        sys.exit("--check runs the PyTorch model and needs torch: pip install torch==2.13.0")
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    batch = tok(texts, padding=True, return_tensors="np", return_token_type_ids=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ours, aux = Model(cfg, head).apply({"params": params}, ids, mask)
    ours = aux["last_hidden_state"] if head is None else ours
    ref = getattr(transformers, AUTO_CLASSES[head]).from_pretrained(
        hf_dir
    )  # its family from config.json
    with torch.no_grad():
        out = ref.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if head is None:
        theirs = out.last_hidden_state
    else:
        theirs = torch.stack([out.start_logits, out.end_logits], -1) if head == "qa" else out.logits
    return float(np.abs(np.asarray(ours) - theirs.numpy()).max())


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("direction", choices=["to-flax", "to-hf"])
    ap.add_argument("--src", required=True, help="HF checkpoint directory or Hub id")
    ap.add_argument(
        "--head", default="mlm", choices=[str(h) for h in HEADS], help="None: bare encoder"
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--export-as", choices=["distilbert"], help="to-hf: write a BERT as DistilBERT")
    ap.add_argument("--check", action="store_true", help="compare with transformers (needs torch)")
    ap.add_argument("--text", action="append", help="sentences for --check (repeatable)")
    args = ap.parse_args(argv)
    head = None if args.head == "None" else args.head

    pre = load_pretrained(args.src, head=head)
    print(pre.report)
    has_tokenizer = any((pre.path / f).exists() for f in TOKENIZER_FILES)
    if args.direction == "to-flax":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(serialization.to_bytes(pre.params))
        config = args.out.with_name(args.out.stem + ".config.json")
        config.write_text(json.dumps({**pre.config.to_hf(), "flaxdistil_head": head}, indent=2))
        print(f"wrote {args.out} and {config}")
        # Check what was written: the params as read back from the file, against torch on SRC.
        hf_dir, params = pre.path, serialization.msgpack_restore(args.out.read_bytes())
        cfg = ModelConfig.from_hf(json.loads(config.read_text()))
    else:
        tokenizer = pre.path if has_tokenizer else None
        out = save_pretrained(args.out, pre.params, pre.config, head, tokenizer_from=tokenizer,
                              export_as=args.export_as)  # fmt: skip
        print(f"wrote {out}")
        hf_dir, params, cfg = out, pre.params, pre.config  # torch reads what was written
    if not args.check:
        return 0
    if not has_tokenizer:
        sys.exit(f"--check tokenises sentences but {pre.path} has no tokenizer files")
    diff = check(hf_dir, params, cfg, head, pre.path, args.text or SENTENCES)
    print(f"check: max abs diff transformers vs flaxdistil = {diff:.3g} (tolerance {TOL})")
    return 0 if diff <= TOL else 1


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
