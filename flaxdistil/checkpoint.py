"""orbax checkpoints of (student state, data position); never the teacher.

orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; ``latest_step`` only sees finished ones, and the
temporary directory such a kill leaves behind is removed when the run restarts.

Asynchronous saves (``async_save=True``, the loop's ``train.async_checkpoint``): ``save``
returns once the state is copied to host memory (orbax's default "synchronous" device-to-host
transfer priority, so the next step may donate and overwrite the state's buffers: on CPU the host
copy is a view that keeps the buffer alive, and XLA then gives the step fresh buffers instead of
donating) and the JSON data position is captured; the files are written by orbax's background
thread while training goes on. The next save, ``restore``, ``latest_step`` and ``wait`` first
wait for a save in flight, and a failed background write raises there. The price: while a write
is in flight, one more copy of the state lives in host memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory, every: int, keep: int = 2, async_save: bool = False):
        self.every, self.async_save = every, async_save
        self.blocked_s = 0.0  # time the caller spent in save() and waits: the checkpoint stall
        directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                # orbax's cross-process barriers are named by step ("async_write_complete.12"):
                # two managers saving the same step at once (the loop's last and best) would
                # meet at one barrier and fail with "already ongoing" unless their names differ.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=directory.name
                ),
            ),
        )

    def latest_step(self) -> int | None:
        """The last finished checkpoint's step (a save in flight is waited for first: orbax
        lists a step as soon as its save starts)."""
        self.wait()
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        if not force and (self.every <= 0 or step % self.every):
            return False
        t0 = time.perf_counter()
        self.manager.wait_until_finished()  # a failed previous write raises here, not later
        if step in self.manager.all_steps():
            self.blocked_s += time.perf_counter() - t0
            return False
        # A copy taken now: orbax serialises the JSON item in its background thread, and the
        # caller's dicts may change before that runs.
        data_state = json.loads(json.dumps(data_state))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )
        self.blocked_s += time.perf_counter() - t0
        return True

    def wait(self) -> None:
        """Block until a save in flight is on disk (finalised); re-raises its error if it failed."""
        t0 = time.perf_counter()
        self.manager.wait_until_finished()
        self.blocked_s += time.perf_counter() - t0

    def restore(self, state_template, step: int | None = None):
        """Restore into the template's shapes, dtypes and shardings; returns (state, data)."""
        step = self.latest_step() if step is None else step
        self.wait()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            state_template,
        )
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.data

    def close(self) -> None:
        self.manager.close()
