"""Every sharding decision in one place: the mesh, the param rules, batch placement.

Data parallelism is jit over a ``Mesh`` with a 'data' axis (the modern form of pmap): the batch is
split on its first dimension, params are replicated. An optional 'fsdp' axis shards each large
param on its biggest divisible dimension (ZeRO-3 style); XLA inserts the all-gathers.
"""

from __future__ import annotations

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


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a host batch (this process's rows) as one global array split over 'data'."""
    n = mesh.devices.size // jax.process_count()
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        if v.shape[0] % n:
            raise ValueError(
                f"batch dimension {v.shape[0]} of {k!r} is not divisible by the {n} local devices"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out


def maybe_initialize_distributed() -> None:
    """Multi-host: jax.distributed picks coordinator/process ids from the cluster environment
    (SLURM, TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    import os

    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") != "1":
        jax.distributed.initialize()
