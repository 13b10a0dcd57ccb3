"""Deterministic, resumable, length-grouped batches: the one batch planner and padder.

Rows live in an ``Encoded`` (flat token ids + per-row lengths, see data/tasks.py): a tokenised
corpus for general distillation and a task split alike. Each epoch is a permutation seeded by
``(seed, epoch)``, cut into groups of ``group_batches`` batches that are sorted by length inside
(HF distillation's ``group_by_size``), cut into batches, and the batch order shuffled. Each batch
is padded to its longest row rounded up to ``pad_multiple`` (``collate``), so the jitted step
sees few distinct shapes while short batches stay cheap.

Training drops an epoch's last partial batch (``drop_last=True``): every batch then has
``batch_size`` rows, which a data-parallel mesh needs. Evaluation (``eval_batches``) sees every
row once, in length order, the last batch filled with empty rows so the shape holds.

Teachers with their own tokenizer (``teacher_rows``: teacher k -> (its Encoded of the same
examples, its pad id)): each batch also carries ``teacher<k>/input_ids`` / ``attention_mask`` /
``token_type_ids``, the same examples in that teacher's tokens padded to their own width, and
for token classification ``teacher<k>/align`` (the teacher position of each student position's
word) and ``kd_mask`` (the student's first sub-tokens whose word every such teacher has;
``word_alignment``).

Multi-host: every process plans the same global batches; ``select_rows(start, stop)`` makes the
iterator yield only rows [start, stop) of each, padded to the global batch's width, so each process
materialises its share and the global batch is the same whatever the process count. The position
is global too: ``state_dict() -> {'epoch', 'index', 'seed'}``; after ``load_state_dict`` the
iterator yields exactly the batches it would have yielded, with any number of processes.
"""

from __future__ import annotations

import numpy as np

from flaxdistil.data.tasks import Encoded, collate, padded_width
from flaxdistil.objective import batch_key

TEACHER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def fill_rows(batch: dict, rows: int, pad_id: int, token_level: bool) -> dict:
    """Append empty rows (pad ids, mask 0, ignored labels) up to ``rows``: one compiled shape."""
    n = len(batch["input_ids"])
    if n >= rows:
        return batch
    fill = {"input_ids": pad_id, "labels": -100 if token_level else 0}
    return {
        k: np.concatenate([v, np.full((rows - n, *v.shape[1:]), fill.get(k, 0), v.dtype)])
        for k, v in batch.items()
    }


class Batches:
    def __init__(
        self,
        encoded: Encoded,
        batch_size: int,
        seed: int = 0,
        pad_id: int = 0,
        pad_multiple: int = 32,
        group_batches: int = 50,
        group_by_length: bool = True,
        teacher_rows: dict | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(encoded) < batch_size:
            raise ValueError(
                f"{len(encoded)} training examples make no full batch of {batch_size}: "
                "lower train.batch_size or add data"
            )
        self.encoded, self.batch_size, self.seed = encoded, batch_size, seed
        self.pad_id, self.pad_multiple = pad_id, pad_multiple
        self.group_batches = group_batches if group_by_length else 0
        self.epoch = self.index = 0
        self.rows = (0, batch_size)
        self.teacher_rows = dict(teacher_rows or {})
        for k, (rows, _) in self.teacher_rows.items():
            if len(rows) != len(encoded):
                raise ValueError(
                    f"teacher {k}'s encoding has {len(rows)} rows for {len(encoded)} examples"
                )
            words = [len(e.word_ids) == len(e.input_ids) for e in (encoded, rows)]
            if encoded.token_level and not all(words):
                raise ValueError("aligning two tokenisations by words needs both word_ids")
        self._plan_epoch: int | None = None
        self._plan: np.ndarray | None = None

    def __len__(self) -> int:
        """Full batches per epoch."""
        return len(self.encoded) // self.batch_size

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """[batches, batch_size] row indices of ``epoch`` (a function of seed and epoch only)."""
        if self._plan_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.encoded))[: len(self) * self.batch_size]
            if self.group_batches:
                lengths, chunk = self.encoded.lengths, self.group_batches * self.batch_size
                parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
                order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts])
            plan = order.reshape(-1, self.batch_size)
            self._plan, self._plan_epoch = plan[rng.permutation(len(plan))], epoch
        return self._plan

    def select_rows(self, start: int, stop: int) -> None:
        """Yield rows [start, stop) of every global batch (this process's share)."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows [{start}, {stop}) are not within a batch of {self.batch_size}")
        self.rows = (start, stop)

    def make_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The selected rows of the global batch ``indices``, padded as the whole batch is."""
        width = padded_width(self.encoded.lengths[indices], self.pad_multiple)
        mine = indices[slice(*self.rows)]
        batch = collate(self.encoded, mine, self.pad_id, self.pad_multiple, width)
        for k, (rows, pad_id) in self.teacher_rows.items():
            t_width = padded_width(rows.lengths[indices], self.pad_multiple)
            own = collate(rows, mine, pad_id, self.pad_multiple, t_width)
            batch.update({batch_key(k, n): own[n] for n in TEACHER_INPUTS})
            if self.encoded.token_level:
                align, found = word_alignment(self.encoded, rows, mine, width)
                batch[batch_key(k, "align")] = align
                batch["kd_mask"] = batch.get("kd_mask", found) & found
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        batch = self.make_batch(self.epoch_plan(self.epoch)[self.index])
        self.index += 1
        return batch

    @property
    def epoch_done(self) -> bool:
        """True right after the last batch of an epoch was produced."""
        return self.index >= len(self)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            self.seed, self._plan_epoch = int(state["seed"]), None
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def word_alignment(student: Encoded, teacher: Encoded, idx, width: int):
    """(align [B, width], found [B, width]) for rows ``idx`` of two tokenisations of the same
    words: at the student's first sub-token of word w, the position of the teacher's first
    sub-token of w and found 1; 0 and 0 elsewhere (later sub-tokens, specials, padding, and
    words one side's truncation cut)."""
    align = np.zeros((len(idx), width), np.int32)
    found = np.zeros((len(idx), width), np.int32)
    s_off, t_off = student.offsets, teacher.offsets
    for r, i in enumerate(idx):
        s_w = student.word_ids[s_off[i] : s_off[i + 1]]
        t_w = teacher.word_ids[t_off[i] : t_off[i + 1]]
        t_pos = np.full(max(s_w.max(initial=-1), t_w.max(initial=-1)) + 1, -1, np.int64)
        t_pos[t_w[t_w >= 0]] = np.flatnonzero(t_w >= 0)
        (s_pos,) = np.nonzero(s_w >= 0)
        at = t_pos[s_w[s_pos]]
        keep = at >= 0
        align[r, s_pos[keep]] = at[keep]
        found[r, s_pos[keep]] = 1
    return align, found


def eval_batches(encoded: Encoded, batch_size: int, pad_id: int = 0, pad_multiple: int = 16):
    """(row indices, batch) covering every row once, in length order (little padding), each
    batch filled to ``batch_size`` rows; the indices say which rows are real."""
    order = np.argsort(encoded.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = collate(encoded, idx, pad_id, pad_multiple)
        yield idx, fill_rows(batch, batch_size, pad_id, encoded.token_level)
