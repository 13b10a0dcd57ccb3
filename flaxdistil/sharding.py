"""Every sharding decision in one place: the mesh, the param rules, batch placement.

Data parallelism is jit over a ``Mesh`` with a 'data' axis (the modern form of pmap): the batch is
split on its first dimension, params are replicated. An optional 'fsdp' axis shards each large
param on its biggest divisible dimension (ZeRO-3 style); XLA inserts the all-gathers.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    if devices.size % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {devices.size} devices")
    grid = devices.reshape(devices.size // fsdp, fsdp)
    # Auto axes: GSPMD propagates shardings from the annotated inputs (jax.make_mesh now defaults
    # to explicit axes, which would need every op annotated).
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**14) -> P:
    """The fsdp rule: shard the largest dimension that the fsdp axis divides; small params and
    fsdp=1 stay replicated."""
    if fsdp == 1 or int(np.prod(shape)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh):
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp)), tree)


def process_rows(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """The [start, stop) rows of every global batch that this process's devices hold: the
    share it reads (``Batches.select_rows``); the rest come from the other processes."""
    spans = sorted(
        (idx[0].start or 0, global_rows if idx[0].stop is None else idx[0].stop)
        for idx in batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
    )
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:  # make_array_from_process_local_data's need
        raise ValueError(f"this process's devices hold rows {spans}, not one contiguous block")
    return start, stop


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a host batch (this process's rows of the global batch) as one global array split
    over 'data'; every process passes its own rows, none holds the whole batch."""
    n = mesh.local_mesh.devices.size
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        if v.shape[0] % n:
            raise ValueError(
                f"batch dimension {v.shape[0]} of {k!r} is not divisible by the {n} local devices"
            )
        global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v), global_shape)
    return out


def is_primary() -> bool:
    """Process 0 writes the logs, exports and results; the others compute alike, silently."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def compile_together(jitted):
    """Multi-host: ``jitted`` compiled ahead for each new input signature, then a barrier, then
    run. Each compiled program sets up its own cross-process (gloo) context at its first run and
    gives up after 30 s if a process is late; compile times differ between processes, so without
    the barrier a slow compile elsewhere kills the run."""
    if jax.process_count() == 1:
        return jitted
    compiled = {}

    def call(*args):
        leaves, treedef = jax.tree.flatten(args)
        key = (treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
        if key not in compiled:
            compiled[key] = jitted.lower(*args).compile()
            barrier("compiled: first run of a new program")
        return compiled[key](*args)

    return call


def to_host(tree):
    """NumPy copies of a pytree of global arrays on every process, gathering the shards other
    processes hold (fsdp over hosts); replicated and host-local arrays are read in place."""

    def get(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ValueError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start JAX's multi-controller runtime when this is one process of several.

    Explicit values (the scripts' --coordinator_address/--num_processes/--process_id, or the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment) win; in a SLURM job
    of several tasks jax.distributed fills in what is missing from SLURM's variables. A single
    process starts nothing (Kubernetes and Open MPI are not guessed: any pod has Kubernetes'
    variables, so pass the values there)."""
    # Cross-process collectives on CPU: gloo, jax's default.
    num_processes = _env_int("JAX_NUM_PROCESSES") if num_processes is None else num_processes
    process_id = _env_int("JAX_PROCESS_ID") if process_id is None else process_id
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    detected = address or os.environ.get("SLURM_NTASKS", "1") != "1"
    if num_processes == 1 or not (explicit or detected):
        return
    try:
        jax.distributed.initialize(address, num_processes, process_id)
        # The first collective over all devices sets up the cross-process (gloo) context, which
        # gives up after 30 s if a process is late; here, just after initialize's rendezvous, all
        # arrive together. Later collectives wait for a slow process (one still compiling).
        barrier("flaxdistil: distributed runtime started")
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(
            f"jax.distributed.initialize(coordinator_address={address!r}, num_processes="
            f"{num_processes}, process_id={process_id}) failed: {e}"
        ) from e
