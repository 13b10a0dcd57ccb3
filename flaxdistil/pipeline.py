"""From text to predictions: ``flaxdistil.pipeline(task, model)(inputs) -> [dict, ...]``.

``model`` is a Hugging Face directory (config.json + model.safetensors / pytorch_model.bin /
flax_model.msgpack: what the task job writes to ``<workdir>/best_hf`` and scripts/convert.py
to-hf writes), a task workdir (its ``best_hf``), flaxdistil's own params (``NAME.msgpack`` +
``NAME.config.json``, scripts/convert.py to-flax), an asset name or a Hub id; the tokenizer files
lie beside it or come as ``tokenizer``. The task comes from config.json (the architecture, then
``problem_type`` / ``num_labels``) unless given. One dict per input, shaped as transformers'
pipelines return them:

- classification: ``{"text", "label", "score"}``, the argmax of id2label and its softmax;
- regression: ``{"text", "label", "score"}``, score = the predicted value (as transformers'
  text-classification pipeline does for problem_type 'regression');
- multilabel: ``{"text", "labels": [{"label", "score"}, ...]}``, every label whose sigmoid is
  above 0.5, highest first;
- token_classification: ``{"text", "words": [{"word", "start", "end", "label", "score"}]}``, the
  text split on whitespace, each word labelled from its first sub-token as in training
  (data/tasks.align_word_labels); a word cut off by max_length gets label and score None;
- qa: ``{"question", "context", "answer", "start", "end", "score"}``, transformers' extractive
  QA span: softmax of start and end logits over the context (and CLS, then dropped), the best
  start <= end at most ``max_answer_len`` tokens apart, score p_start x p_end, widened to whole
  words, the best window of a long context; start/end are character offsets into the context.

Inputs are tokenised, sorted by length and padded per batch to a multiple of 16 tokens
(evaluate.predict), so the jitted forward compiles once per padded width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from flaxdistil import evaluate, hf, hf_table
from flaxdistil.data import qa, tasks, text_pipeline
from flaxdistil.data.task_data import HEADS, PROBLEM_TYPES
from flaxdistil.models import ModelConfig, inference_fn

TASKS = tuple(HEADS)  # classification, regression, multilabel, token_classification, qa
# transformers.pipeline's names; text-classification leaves the kind to the config.
HF_TASKS = {
    "text-classification": None,
    "sentiment-analysis": None,
    "token-classification": "token_classification",
    "ner": "token_classification",
    "question-answering": "qa",
}
QA_INPUT = 'a JSON object {"question": ..., "context": ...} or QUESTION<TAB>CONTEXT'
MAX_LENGTH = 512
NEEDED = "a sequence classifier, a token classifier or a QA head (scripts/finetune.py)"


# ---------------------------------------------------------------- finding and loading the model


def locate(model) -> tuple[Path, Path | None]:
    """(directory, None) for a Hugging Face checkpoint, (directory, NAME.msgpack) for ours."""
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".msgpack":
        return p.parent, p
    if not p.is_dir():
        return hf.resolve(model), None  # an asset name or a Hub id, else one clear error
    if (p / "config.json").exists():
        return p, None
    ours = [f for f in sorted(p.glob("*.msgpack")) if _flax_config(f).exists()]
    if len(ours) == 1:
        return p, ours[0]
    if (p / "best_hf" / "config.json").exists():  # a task workdir: its exported best params
        return p / "best_hf", None
    raise FileNotFoundError(
        f"no model in {p}: expected config.json and weights (a Hugging Face directory), a task "
        "workdir with best_hf/, or NAME.msgpack with NAME.config.json (scripts/convert.py to-flax)"
        + (f"; found several: {[f.name for f in ours]}" if ours else "")
    )


def _flax_config(msgpack: Path) -> Path:
    return msgpack.with_name(msgpack.stem + ".config.json")


def head_of(hf_config: dict, where) -> str | None:
    """The head config.json names (convert.py's flaxdistil_head, or HF's architectures); None
    when it names none flaxdistil knows."""
    by_class = {c: h for f in hf_table.ARCHITECTURES.values() for h, c in f.items()}
    if "flaxdistil_head" in hf_config:
        found = [hf_config["flaxdistil_head"]]
    else:
        found = [by_class[n] for n in hf_config.get("architectures") or [] if n in by_class]
    if found and found[0] is None:
        raise ValueError(
            f"{where} is a bare {hf_config.get('model_type')} encoder without a head: predictions "
            f"need {NEEDED}"
        )
    return found[0] if found else None


def task_of(cfg: ModelConfig, head: str | None) -> str | None:
    """The task a head was trained for, as the task job writes its config."""
    if head in ("token_cls", "qa"):
        return {"token_cls": "token_classification", "qa": "qa"}[head]
    if head != "seq_cls":
        return None
    by_problem = {p: t for t, p in PROBLEM_TYPES.items()}
    if cfg.problem_type in by_problem:
        return by_problem[cfg.problem_type]
    return "regression" if cfg.num_labels == 1 else "classification"  # as HF's loss decides


def resolve_task(task: str | None, cfg: ModelConfig, head: str | None, where) -> str:
    if task is not None and task not in TASKS and task not in HF_TASKS:
        raise ValueError(
            f"unknown task {task!r}: expected one of {', '.join(TASKS)} "
            f"(or transformers' {', '.join(HF_TASKS)})"
        )
    seq_any = task in HF_TASKS and HF_TASKS[task] is None
    task = HF_TASKS.get(task, task)
    if head is None and (task is None or seq_any):
        raise ValueError(
            f"{where}/config.json names no architecture, so the task is unknown: pass --task "
            f"({', '.join(TASKS)})"
        )
    head = HEADS[task] if head is None else head
    found = task_of(cfg, head)
    if found is None:
        raise ValueError(
            f"{where} is a {cfg.model_type} with head {head!r}: predictions need {NEEDED}"
        )
    if task is None or seq_any:
        if seq_any and head != "seq_cls":
            raise ValueError(f"text-classification needs a seq_cls head, {where} has {head!r}")
        return found
    if HEADS[task] != head:
        raise ValueError(f"task {task!r} needs a {HEADS[task]} head, but {where} has {head!r}")
    if task == "regression" and cfg.num_labels != 1:
        raise ValueError(f"task 'regression' needs one output, {where} has {cfg.num_labels}")
    return task


def load_params(directory: Path, msgpack: Path | None, cfg: ModelConfig, head: str, task: str):
    """(params, config) with a trained ``head``; a head the checkpoint lacks is an error, not a
    random one."""
    if msgpack is None:
        pre = hf.load_pretrained(directory, head)
        params, cfg, new_init = pre.params, pre.config, pre.report.new_init
    else:
        params, new_init = _read_ours(msgpack, cfg, head)
    if new_init:
        raise hf.CheckpointError(
            f"{msgpack or directory} has no trained {head} head ({', '.join(new_init)} would be "
            f"random): expected a model fine-tuned for {task}"
        )
    return params, cfg


def _read_ours(f: Path, cfg: ModelConfig, head: str):
    from flax.serialization import msgpack_restore

    try:
        tree = msgpack_restore(f.read_bytes())
    except Exception as e:  # noqa: BLE001 - truncated or foreign files raise many types
        raise hf.CheckpointError(f"could not read {f}: {type(e).__name__}: {e}") from None
    if not isinstance(tree, dict):
        raise hf.CheckpointError(f"{f}: expected a params dict, found {type(tree).__name__}")
    # Through HF's names and back: the checks of a HF checkpoint (missing, misshapen, unexpected).
    params, new_init, _ = hf.convert_from_hf(hf.convert_to_hf(tree, cfg, head), cfg, head)
    return params, new_init


def load_tokenizer(source, fallback: Path):
    if source is not None and not isinstance(source, str | Path):
        return source  # a tokenizer object
    path = Path(source) if source is not None else fallback
    if path.is_dir() and not any((path / f).exists() for f in hf.TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {path} (expected tokenizer.json or vocab.txt): pass "
            "tokenizer=DIR (--tokenizer DIR)"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    try:
        return text_pipeline.load_tokenizer(path)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, KeyError, ... here
        raise ValueError(f"could not load the tokenizer in {path}: {type(e).__name__}: {e}") from e


def max_length_for(cfg: ModelConfig, tokenizer, requested: int | None) -> int:
    """Longest input the model's position table holds (RoBERTa's start at pad_token_id + 1)."""
    limit = cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.arch == "roberta" else 0)
    if requested is not None:
        if not 4 <= requested <= limit:
            raise ValueError(f"max_length must be in [4, {limit}] for this model, got {requested}")
        return requested
    return min(MAX_LENGTH, limit, getattr(tokenizer, "model_max_length", limit) or limit)


# ---------------------------------------------------------------- the pipeline


def pipeline(
    task: str | None,
    model,
    *,
    tokenizer=None,
    batch_size: int = 32,
    max_length: int | None = None,
    dtype: str = "float32",
    max_answer_len: int = 15,
    doc_stride: int = 128,
) -> Pipeline:
    """A callable over a list of texts (QA: of {"question", "context"} dicts, (question,
    context) pairs or lines in QA_INPUT) that returns one dict per input; see the module doc.
    ``task`` None (or 'text-classification') takes it from the model's config."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    directory, msgpack = locate(model)
    hf_config = hf.read_config(directory) if msgpack is None else _read_json(_flax_config(msgpack))
    cfg = ModelConfig.from_hf(hf_config)
    if cfg.model_type == "xlnet":  # its heads read the last token: batches here pad on the right
        raise ValueError("predictions for XLNet are not supported (it pads on the left)")
    head = head_of(hf_config, msgpack or directory)
    task = resolve_task(task, cfg, head, msgpack or directory)
    params, cfg = load_params(directory, msgpack, cfg, HEADS[task], task)
    tok = load_tokenizer(tokenizer, directory)
    if len(tok) > cfg.vocab_size:
        raise ValueError(
            f"vocab mismatch: the tokenizer has {len(tok)} tokens but the model's vocab_size "
            f"is {cfg.vocab_size}"
        )
    length = max_length_for(cfg, tok, max_length)
    return Pipeline(task, cfg, params, tok, batch_size, length, dtype, max_answer_len, doc_stride)


def _read_json(f: Path) -> dict:
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise hf.CheckpointError(f"{f} is not valid JSON: {e}") from None


class Pipeline:
    def __init__(
        self, task, config, params, tokenizer, batch_size, max_length, dtype, max_answer_len,
        doc_stride,
    ):  # fmt: skip
        self.task, self.config, self.tokenizer = task, config, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.max_answer_len, self.doc_stride = max_answer_len, min(doc_stride, max_length // 2)
        self.forward, self.params = inference_fn(config, HEADS[task], params, dtype)
        self.id2label = dict(
            config.id2label or ((i, f"LABEL_{i}") for i in range(config.num_labels))
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Pipeline({self.task}: {c.model_type}, {c.num_hidden_layers} layers, hidden "
            f"{c.hidden_size}, {c.num_labels} labels, max_length {self.max_length})"
        )

    def __call__(self, inputs):
        if isinstance(inputs, str | dict):
            return self([inputs])[0]
        inputs = list(inputs)
        if not inputs:
            return []
        if self.task == "qa":
            return self._answer([parse_qa(x, f"input {i + 1}") for i, x in enumerate(inputs)])
        for i, x in enumerate(inputs):
            if not isinstance(x, str):
                raise ValueError(f"input {i + 1}: expected a string, found {type(x).__name__}")
        return self._tag(inputs) if self.task == "token_classification" else self._classify(inputs)

    def _logits(self, input_ids, token_type_ids) -> list[np.ndarray]:
        """Per-row float64 outputs in input order; token-level ones cut to the row's length."""
        encoded = tasks.from_rows(input_ids, token_type_ids, np.zeros(len(input_ids)))
        rows = evaluate.predict(
            self.forward,
            self.params,
            encoded,
            min(self.batch_size, len(encoded)),
            self.tokenizer.pad_token_id or 0,
        )
        token_level = self.task in ("token_classification", "qa")
        cut = lambda r, n: r[:n] if token_level else r
        return [cut(np.asarray(r, np.float64), n) for r, n in zip(rows, encoded.lengths)]

    def _classify(self, texts: list[str]) -> list[dict]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        out = []
        for text, z in zip(texts, self._logits(enc["input_ids"], enc.get("token_type_ids"))):
            if self.task == "regression":
                out.append({"text": text, "label": self.id2label[0], "score": float(z[0])})
            elif self.task == "multilabel":
                p = 1.0 / (1.0 + np.exp(-z))
                on = [i for i in np.argsort(-p, kind="stable") if p[i] > 0.5]
                labels = [{"label": self.id2label[int(i)], "score": float(p[i])} for i in on]
                out.append({"text": text, "labels": labels})
            else:
                p = softmax(z)
                i = int(np.argmax(p))
                out.append({"text": text, "label": self.id2label[i], "score": float(p[i])})
        return out

    def _tag(self, texts: list[str]) -> list[dict]:
        spans = [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", t)] for t in texts]
        words = [[w for w, _, _ in s] or [""] for s in spans]  # "" keeps an empty text a row
        enc = self.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        logits = self._logits(enc["input_ids"], enc.get("token_type_ids"))
        out = []
        for i, (text, span) in enumerate(zip(texts, spans)):
            first = {}  # word -> its first sub-token, the one training labels
            for pos, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in first:
                    first[w] = pos
            tagged = []
            for w, (word, start, end) in enumerate(span):
                label = score = None
                if w in first:
                    p = softmax(logits[i][first[w]])
                    j = int(np.argmax(p))
                    label, score = self.id2label[j], float(p[j])
                tagged.append(
                    {"word": word, "start": start, "end": end, "label": label, "score": score}
                )
            out.append({"text": text, "words": tagged})
        return out

    def _answer(self, examples: list[dict]) -> list[dict]:
        try:
            enc = qa.tokenize(examples, self.tokenizer, self.max_length, self.doc_stride)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - the tokenizers library's errors are bare
            raise ValueError(
                f"could not cut the inputs into windows of {self.max_length} tokens with stride "
                f"{self.doc_stride} (a question too long?): {e}"
            ) from None
        logits = self._logits(enc["input_ids"], enc.get("token_type_ids"))
        best: dict[int, tuple] = {}
        for f, z in enumerate(logits):
            ex = enc["overflow_to_sample_mapping"][f]
            score, s, e = self._best_span(enc, f, z)
            if s is not None and (ex not in best or score > best[ex][0]):
                best[ex] = (score, *self._chars(enc, f, s, e))
        out = []
        for i, ex in enumerate(examples):
            score, start, end = best.get(i, (0.0, 0, 0))
            c = ex["context"]
            out.append(
                {"question": ex["question"], "context": c, "answer": c[start:end],
                 "start": start, "end": end, "score": score}
            )  # fmt: skip
        return out

    def _best_span(self, enc, f: int, z: np.ndarray):
        """(p_start x p_end, start, end) of the best span of feature f, as transformers' QA
        pipeline scores it: CLS stays in the softmax (it stands for 'no answer'), then drops."""
        ids, seq = np.asarray(enc["input_ids"][f]), enc.sequence_ids(f)
        context = np.array([s == 1 for s in seq])
        cls = ids == self.tokenizer.cls_token_id
        allowed = context | cls
        p_start = softmax(np.where(allowed, z[:, 0], -1e4)) * context
        p_end = softmax(np.where(allowed, z[:, 1], -1e4)) * context
        scores = np.tril(np.triu(np.outer(p_start, p_end)), self.max_answer_len - 1)
        if not scores.any():
            return 0.0, None, None
        s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return float(scores[s, e]), int(s), int(e)

    @staticmethod
    def _chars(enc, f: int, s: int, e: int) -> tuple[int, int]:
        """Character span of tokens s..e in the context, widened to the words they sit in."""
        try:
            start = enc.word_to_chars(f, enc.token_to_word(f, s), sequence_index=1).start
            end = enc.word_to_chars(f, enc.token_to_word(f, e), sequence_index=1).end
        except Exception:  # noqa: BLE001 - tokenizers without words: keep the token offsets
            start, end = enc["offset_mapping"][f][s][0], enc["offset_mapping"][f][e][1]
        return int(start), int(end)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def parse_qa(item, where: str = "input") -> dict:
    """{"question", "context"} from a dict, a (question, context) pair or a line in QA_INPUT."""
    if isinstance(item, str):
        line = item.strip("\r\n")
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e}): expected {QA_INPUT}") from None
        elif "\t" in line:
            item = dict(zip(("question", "context"), line.split("\t", 1)))
        else:
            raise ValueError(f"{where}: expected {QA_INPUT}, found {_brief(line)}")
    elif isinstance(item, tuple | list) and len(item) == 2:
        item = {"question": item[0], "context": item[1]}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected {QA_INPUT}, found {_brief(item)}")
    for key in ("question", "context"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            found = "nothing" if value is None else _brief(value)
            raise ValueError(f"{where}: expected a non-empty string {key!r}, found {found}")
    return {"question": item["question"], "context": item["context"]}


def _brief(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
