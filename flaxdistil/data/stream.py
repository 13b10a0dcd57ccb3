"""Training batches streamed from a prepared ArrayRecord directory through grain, in bounded
memory, with the in-memory ``batching.Batches``'s semantics and interface (what Loop drives):
a corpus's token sequences (general distillation) or a task's examples with their labels
(array_records' task records; the batches are tasks.collate's, as from the in-memory rows).

The pipeline is a grain ``MapDataset`` indexed by the global batch number k:

    range(steps_per_epoch).repeat()  -> k
      .map_with_index(plan)          -> the rows of global batch k (every process computes the same)
      .map(read)                     -> this process's rows [start, stop), read from ArrayRecord,
                                        padded to the global batch's width
      .to_iter_dataset(ReadOptions)  -> worker threads + prefetch buffer
      [.mp_prefetch(workers)]        -> optionally worker processes

``plan`` is Batches.epoch_plan done lazily: epoch e's row order is grain's index_shuffle (a
seeded bijection computed per index: no permutation array), cut into groups of
``group_batches`` batches, each group sorted by length (the lengths file, memory-mapped), cut into
batches, and the batch order of the epoch shuffled the same way. So a streamed epoch sees every
sequence once (the last partial batch dropped), in length-grouped batches, as the in-memory one.

Shard by process: like Batches, every process plans the same global batches and reads only its
rows (``select_rows``), so the global batch is the same whatever the process count, and so is
the checkpointed position: ``state_dict()`` holds k and grain's iterator state (``get_state``),
and a run resumes exactly with the same or a different number of processes. (MaxText instead
gives each host its own slice of the shuffled records, ``ds[host::hosts]``, which makes the
global batch depend on the host count.)
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from flaxdistil.data import array_records
from flaxdistil.data.tasks import Encoded, collate, padded_width


def _seed(seed: int, purpose: int) -> int:
    """A 32-bit grain shuffle seed per purpose (rows, batch order) from the run's seed."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


class Plan:
    """Global batch k -> its row ids [batch_size]: a function of (n, seed, k) and the lengths."""

    def __init__(self, directory, split, n, batch_size, seed, group_batches):
        import grain

        self.directory, self.split, self.n, self.bs = directory, split, n, batch_size
        self.steps = n // batch_size
        self.group = max(group_batches, 1)
        self.sort = group_batches > 0
        self.rows = grain.MapDataset.range(n).shuffle(_seed(seed, 0))
        self.batch_order = grain.MapDataset.range(self.steps).shuffle(_seed(seed, 1))
        self._lengths = None
        self._groups = functools.lru_cache(maxsize=8)(self._group_rows)

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:  # opened lazily: a worker process opens its own
            self._lengths = array_records.lengths(self.directory, self.split)
        return self._lengths

    def __getstate__(self):  # pickled into grain's worker processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_lengths", "_groups")}

    def __setstate__(self, state):
        self.__dict__.update(state, _lengths=None)
        self._groups = functools.lru_cache(maxsize=8)(self._group_rows)

    def at(self, k: int, _=None) -> np.ndarray:
        """The rows of global batch k (grain's map_with_index passes (k, element))."""
        epoch, j = divmod(int(k), self.steps)
        b = self.batch_order[epoch * self.steps + j]  # the shuffle reseeds per epoch itself
        return self._groups(epoch, b // self.group)[b % self.group]

    def _group_rows(self, epoch: int, g: int) -> np.ndarray:
        lo = g * self.group * self.bs
        hi = min(lo + self.group * self.bs, self.steps * self.bs)
        base = epoch * self.n  # the row shuffle reseeds per epoch of n rows (ids stay < n)
        rows = np.array(self.rows._getitems(range(base + lo, base + hi)), np.int64)
        if self.sort:
            rows = rows[np.argsort(self.lengths[rows], kind="stable")]
        return rows.reshape(-1, self.bs)


class Reader:
    """Global batch rows -> this process's rows as a padded batch (collate's layout)."""

    def __init__(self, directory, split, rows, pad_id, pad_multiple, plan: Plan, task=None):
        self.directory, self.split, self.rows = directory, split, rows
        self.pad_id, self.pad_multiple, self.plan = pad_id, pad_multiple, plan
        self.task = task  # the manifest's task entry for task examples, None for a corpus
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if self._source is None:
            self._source = array_records.source(self.directory, self.split)
        width = padded_width(self.plan.lengths[rows], self.pad_multiple)
        start, stop = self.rows
        # one record at a time: __getitems__ starts a thread per shard file on every call, and
        # each thread its own malloc arena, so memory would grow with the number of shards
        records = [self._source[int(i)] for i in rows[start:stop]]
        if self.task is not None:
            shape = tuple(self.task["label_shape"])
            enc = array_records.decode_examples(records, shape)
        else:
            seqs = [array_records.decode(r) for r in records]
            flat = np.concatenate(seqs)
            lengths = np.array([len(s) for s in seqs], np.int32)
            enc = Encoded(flat, np.zeros_like(flat), lengths, np.zeros(len(seqs), np.int32))
        return collate(enc, np.arange(len(records)), self.pad_id, self.pad_multiple, width)


class StreamBatches:
    """``batching.Batches``'s interface over a prepared split: iteration, ``len`` (full batches
    per epoch), ``epoch``/``index``/``epoch_done``, ``select_rows``, ``state_dict``."""

    def __init__(
        self,
        directory,
        batch_size: int,
        seed: int = 0,
        pad_id: int = 0,
        pad_multiple: int = 32,
        group_batches: int = 50,
        group_by_length: bool = True,
        split: str = "train",
        threads: int = 2,
        prefetch: int = 8,
        workers: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.directory, self.split = Path(directory), split
        formats = (array_records.FORMAT, array_records.TASK_FORMAT)
        self.manifest = array_records.read_manifest(directory, formats)
        self.n = array_records.split_info(self.manifest, directory, split)["sequences"]
        if self.n < batch_size:
            raise ValueError(
                f"{self.n} training sequences in {directory} make no full batch of "
                f"{batch_size}: lower train.batch_size or prepare more data"
            )
        self.batch_size, self.seed, self.pad_id, self.pad_multiple = (
            batch_size,
            seed,
            pad_id,
            pad_multiple,
        )
        self.group_batches = group_batches if group_by_length else 0
        self.threads, self.prefetch, self.workers = threads, prefetch, workers
        self.rows = (0, batch_size)
        self.k = 0  # global batches produced
        self._iter, self._state = None, None  # grain's iterator and a state to resume it at

    def __len__(self) -> int:
        return self.n // self.batch_size

    # Batches's counting: an epoch's last batch leaves (epoch, index=len); the next starts the
    # following epoch at index 1.
    @property
    def epoch(self) -> int:
        return (self.k - 1) // len(self) if self.k else 0

    @property
    def index(self) -> int:
        return self.k - self.epoch * len(self)

    @property
    def epoch_done(self) -> bool:
        return self.index >= len(self)

    def select_rows(self, start: int, stop: int) -> None:
        """Read rows [start, stop) of every global batch (this process's share)."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows [{start}, {stop}) are not within a batch of {self.batch_size}")
        self.rows = (start, stop)
        self.close()  # rebuilt at the next batch, from the same position

    def dataset(self):
        """The grain IterDataset of this process's batches, global batch 0 onwards."""
        import grain

        plan = Plan(
            self.directory, self.split, self.n, self.batch_size, self.seed, self.group_batches
        )
        reader = Reader(self.directory, self.split, self.rows, self.pad_id, self.pad_multiple, plan,
                        self.manifest.get("task"))  # fmt: skip
        ds = grain.MapDataset.range(len(self)).repeat().map_with_index(plan.at)
        options = grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.prefetch)
        ds = ds.map(reader).to_iter_dataset(options)
        if self.workers:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; our scripts do
                flags.FLAGS.mark_as_parsed()  # not parse any, so the defaults stand
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        return ds

    def _iterator(self):
        if self._iter is None:
            self._iter = iter(self.dataset())
            if self._state is not None:
                self._iter.set_state(self._state)
        return self._iter

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator())
        self.k += 1
        return batch

    def state_dict(self) -> dict:
        return {
            "step": int(self.k),
            "seed": int(self.seed),
            "sequences": int(self.n),
            "grain": self._iterator().get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["sequences"]) != self.n:
            raise ValueError(
                f"the checkpoint's data position is over {state['sequences']} sequences, "
                f"{self.directory} has {self.n}: resume with the data it was trained on"
            )
        self.close()
        self.seed, self.k, self._state = int(state["seed"]), int(state["step"]), state["grain"]

    def close(self) -> None:
        """Stop the worker threads / processes; the next batch restarts them where this left."""
        if self._iter is not None:
            self._state = self._iter.get_state()
            self._iter.close()
        self._iter = None
