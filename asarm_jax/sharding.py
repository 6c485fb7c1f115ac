"""Device mesh and shardings: the one path for every layout (pjit is `jax.jit` with shardings)."""
from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """Builds the ``('data', 'fsdp', 'tensor')`` mesh of ``config.mesh`` (one size may be -1).

  Axes are Auto: jax >= 0.10's ``make_mesh`` defaults to Explicit axes, under which embedding
  gathers raise ``ShardingTypeError``.
  """
  names = MESH_AXES
  sizes = [config[name] for name in names]
  num_devices = jax.device_count()
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh={dict(zip(names, sizes))}: at most one axis may be -1.")
  if -1 in sizes:
    sizes[sizes.index(-1)] = num_devices // max(1, -math.prod(sizes))
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh={dict(zip(names, sizes))} needs {math.prod(sizes)} devices; "
                     f"{num_devices} are available.")
  devices = np.asarray(jax.devices()).reshape(sizes)
  return Mesh(devices, names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over the data-parallel axes on their leading dimension."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings for every leaf of the train state (replicated over the data axis)."""
  return jax.tree_util.tree_map(lambda _: replicated(mesh), abstract_state)


def global_batch(mesh: Mesh, local_batch: np.ndarray) -> jax.Array:
  """Assembles the per-host batches into one global array sharded over the data axis."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)
