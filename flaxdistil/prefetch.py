"""The training batches collated and placed on the mesh ahead of the step, in a background thread.

``DeviceBatches(batches, mesh, depth)`` wraps the loop's batch iterator (data.batching.Batches or
one with its interface): ``next()`` returns the next batch already split over the mesh
(sharding.shard_batch), while a thread prepares the ``depth`` batches after it, so the collation
and the host-to-device copy overlap the running step instead of delaying the next dispatch.
``depth=0`` does the same work in turn on the caller's thread.

The position it reports (``state_dict``, ``epoch``, ``index``, ``epoch_done``) is that after the
last batch *taken*, not after the ones prepared ahead: a checkpoint saved at step t resumes at
batch t + 1, exactly as without the thread. An error raised while preparing a batch (a batch
that does not divide over the devices, a bad row) is raised by the ``next()`` that would have
returned it.
"""

from __future__ import annotations

import queue
import threading

from flaxdistil import sharding


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _position(batches) -> dict:
    return {
        "state": batches.state_dict(),
        "epoch": batches.epoch,
        "index": batches.index,
        "epoch_done": batches.epoch_done,
    }


class DeviceBatches:
    def __init__(self, batches, mesh, depth: int = 2):
        if depth < 0:
            raise ValueError(f"train.prefetch must be >= 0 batches, got {depth}")
        self.batches, self.mesh, self.depth = batches, mesh, depth
        self.batch_size = batches.batch_size
        self.position = _position(batches)  # before the first batch
        self.thread = None
        if depth:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stopping = threading.Event()
            self.thread = threading.Thread(target=self._fill, name="flaxdistil-prefetch")
            self.thread.daemon = True  # a failing run must not hang on it
            self.thread.start()

    def _prepare(self) -> tuple[dict, dict]:
        host = next(self.batches)
        return sharding.shard_batch(host, self.mesh), _position(self.batches)

    def _fill(self) -> None:
        try:
            while not self.stopping.is_set():
                self._put(self._prepare())
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer's next()
            self._put(_Failed(e))

    def _put(self, item) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self.queue.get() if self.thread else self._prepare()
        if isinstance(item, _Failed):
            raise item.error
        batch, self.position = item
        return batch

    def __len__(self) -> int:
        return len(self.batches)

    def state_dict(self) -> dict:
        return self.position["state"]

    @property
    def epoch(self) -> int:
        return self.position["epoch"]

    @property
    def index(self) -> int:
        return self.position["index"]

    @property
    def epoch_done(self) -> bool:
        return self.position["epoch_done"]

    def close(self) -> None:
        """Stop the thread (the batches it prepared ahead are dropped)."""
        if self.thread is None:
            return
        self.stopping.set()
        while True:  # unblock a put in progress
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join()
        self.thread = None
