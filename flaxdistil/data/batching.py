"""Deterministic, resumable, length-grouped batches of token sequences.

Each epoch: a permutation seeded by ``(seed, epoch)``; the permuted indices are cut into groups of
``group_batches`` batches, sorted by length inside each group (as HF distillation's
``group_by_size``), cut into batches, and the batch order is shuffled. Each batch is padded to a
bucket length (a multiple of ``bucket_multiple``, or the smallest of ``buckets`` that fits), so
the jitted step sees few distinct shapes.

The last, partial batch of an epoch is dropped by default (``drop_last=True``): every batch then
has ``batch_size`` rows, which a data-parallel mesh needs (checking that ``batch_size`` divides by
the device count is the caller's job). With ``drop_last=False`` it is filled with empty rows
(all [PAD], ``attention_mask`` 0) so the shape still holds and every sequence is seen once.

The position is ``state_dict() -> {'epoch', 'index', 'seed'}``; ``load_state_dict`` restores it,
after which the iterator yields exactly the batches it would have yielded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class LengthGroupedBatches:
    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        batch_size: int,
        seed: int = 0,
        pad_id: int = 0,
        bucket_multiple: int = 32,
        buckets: Sequence[int] | None = None,
        group_batches: int = 100,
        drop_last: bool = True,
        special_ids: Sequence[int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and len(sequences) < batch_size:
            raise ValueError(f"{len(sequences)} sequences make no full batch of {batch_size}")
        self.sequences = sequences
        self.lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.bucket_multiple = bucket_multiple
        self.buckets = sorted(buckets) if buckets else None
        if self.buckets and self.lengths.max() > self.buckets[-1]:
            raise ValueError(
                f"a sequence of {self.lengths.max()} exceeds the largest bucket {self.buckets[-1]}"
            )
        self.group_batches = group_batches
        self.drop_last = drop_last
        self.special_ids = None if special_ids is None else np.asarray(special_ids)
        self.epoch = 0
        self.index = 0
        self._plan_epoch: int | None = None
        self._plan: list[np.ndarray] = []

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.sequences)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """Sequence indices of every batch of ``epoch`` (a function of seed and epoch only)."""
        if self._plan_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.sequences))
            group = self.group_batches * self.batch_size
            batches = []
            for start in range(0, len(order), group):
                chunk = order[start : start + group]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
            # Only the very last batch can be partial (groups are whole batches).
            if self.drop_last and len(batches[-1]) < self.batch_size:
                batches.pop()
            self._plan = [batches[i] for i in rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._plan

    def bucket_length(self, longest: int) -> int:
        if self.buckets:
            return next(b for b in self.buckets if b >= longest)
        return -(-longest // self.bucket_multiple) * self.bucket_multiple

    def make_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        length = self.bucket_length(int(self.lengths[indices].max()))
        ids = np.full((self.batch_size, length), self.pad_id, dtype=np.int32)
        mask = np.zeros((self.batch_size, length), dtype=np.int32)
        for row, i in enumerate(indices):
            n = self.lengths[i]
            ids[row, :n] = self.sequences[i]
            mask[row, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.special_ids is not None:
            batch["special_tokens_mask"] = (np.isin(ids, self.special_ids) | (mask == 0)).astype(
                np.int32
            )
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        plan = self.epoch_plan(self.epoch)
        if self.index >= len(plan):
            self.epoch, self.index = self.epoch + 1, 0
            plan = self.epoch_plan(self.epoch)
        batch = self.make_batch(plan[self.index])
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            self.seed, self._plan_epoch = int(state["seed"]), None
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
