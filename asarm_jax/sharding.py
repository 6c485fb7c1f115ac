"""Device mesh and shardings: the one path for every layout (pjit is `jax.jit` with shardings).

Parameters name their logical axes (``models.two_stream.PARAM_AXES``, and ``models.xlnet``'s for
``model.arch="xlnet"``: :data:`PARAM_AXES` is their union); ``config.mesh.rules``
maps each logical axis to a mesh axis (or None: not split). The optimizer moments mirror the
parameter tree, so they are found by the same names and sharded like their parameter.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from asarm_jax.models import two_stream, xlnet

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Both architectures' tables; an entry of one never matches a parameter of the other.
PARAM_AXES = two_stream.PARAM_AXES + tuple(
    entry for entry in xlnet.PARAM_AXES if entry not in two_stream.PARAM_AXES)

Rules = Sequence[tuple[str, Any]]  # (logical axis, mesh axis | tuple of mesh axes | None)


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """Builds the ``('data', 'fsdp', 'tensor')`` mesh of ``config.mesh`` (one size may be -1).

  Axes are Auto: jax >= 0.10's ``make_mesh`` defaults to Explicit axes, under which embedding
  gathers raise ``ShardingTypeError``. Devices are in ``jax.devices()`` order (grouped by
  process), ``tensor`` innermost. With several processes ``tensor`` must divide each process's
  device count: a tensor group shares its batch rows, and each process feeds its own.
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
  if jax.process_count() > 1 and jax.local_device_count() % sizes[-1]:
    raise ValueError(f"mesh.tensor={sizes[-1]} must divide the {jax.local_device_count()} "
                     "devices of each process: a tensor group shares its batch rows, and each "
                     "process feeds its own (run one process per host for tensor > 1).")
  devices = np.asarray(jax.devices()).reshape(sizes)
  return Mesh(devices, names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over the data-parallel axes on their leading dimension."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_name(path: jax.tree_util.KeyPath) -> str:
  """``'params/block_0/mlp_in/kernel'``: the dict keys of ``path`` joined by ``/``. The same
  for a parameter in ``state.params`` and for its Adam moments in ``state.opt_state``."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def logical_axes(name: str, ndim: int) -> tuple[str, ...]:
  """The logical axes of parameter ``name`` (``ndim`` of them) from ``PARAM_AXES``."""
  matches = [axes for pattern, axes in PARAM_AXES if re.fullmatch(rf"(.*/)?{pattern}", name)]
  if len(matches) != 1 or len(matches[0]) != ndim:
    raise ValueError(f"parameter {name} ({ndim}-d) matches {matches} in "
                     "models.two_stream.PARAM_AXES; expected exactly one entry of that rank.")
  return matches[0]


def mesh_spec(mesh: Mesh, name: str, shape: tuple[int, ...], rules: Rules) -> P:
  """PartitionSpec of parameter ``name``: its logical axes mapped by ``rules``.

  A dimension stays whole where its mesh axes do not divide it, or are already used by an
  earlier dimension of the same array.
  """
  rules = dict(rules)
  spec, used = [], set()
  for axis, size in zip(logical_axes(name, len(shape)), shape):
    mesh_axes = _mesh_axes(rules.get(axis))
    split = math.prod(mesh.shape[a] for a in mesh_axes)
    if used & set(mesh_axes) or size % split:
      logging.warning("%s: dimension %s (%d) is not split over %s.", name, axis, size, mesh_axes)
      mesh_axes = ()
    used |= set(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes or None)
  return P(*spec)


def _mesh_axes(target: Any) -> tuple[str, ...]:
  """A rule's target (None, a mesh axis or a sequence of them) as a tuple of mesh axes."""
  return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def check_rules(mesh: Mesh, rules: Rules) -> None:
  """Raises ``ValueError`` for a rule naming an unknown logical axis or mesh axis."""
  logical = {axis for _, axes in PARAM_AXES for axis in axes}
  for axis, target in rules:
    if axis not in logical or not set(_mesh_axes(target)) <= set(mesh.axis_names):
      raise ValueError(f"mesh.rules entry {(axis, target)}: logical axes are {sorted(logical)}, "
                       f"mesh axes {mesh.axis_names}.")


def state_shardings(mesh: Mesh, abstract_state: Any, rules: Rules = ()) -> Any:
  """A ``NamedSharding`` for every leaf of the train state (arrays or ``ShapeDtypeStruct``s).

  Leaves under dict keys are parameters or optimizer moments mirroring them: split by their
  logical axes through ``rules`` (``config.mesh.rules``; without rules nothing is split). The
  other leaves (step, optimizer counters) are replicated.
  """
  check_rules(mesh, rules)
  def leaf_sharding(path, leaf):
    name = param_name(path)
    if not name:
      return replicated(mesh)
    return NamedSharding(mesh, mesh_spec(mesh, name, tuple(leaf.shape), rules))
  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """``abstract_state`` (shapes and dtypes) with ``.sharding`` set: the target of a restore."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def global_batch(mesh: Mesh, local_batch: np.ndarray) -> jax.Array:
  """Assembles the per-host batches into one global array sharded over the data axis."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)
