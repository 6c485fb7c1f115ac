"""The train state and its construction: parameters, optimizer state, their abstract shapes
and their shardings. Training, inference and the converter build on this module; it knows
nothing of checkpoints or of the training loop."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from asarm_jax import models, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_params(model: nn.Module, rng: jax.Array, seq_len: int) -> Any:
  """``{'params': ...}`` for ``model`` (the form ``model.apply`` and every caller take)."""
  return {"params": model.init(rng, *models.example_inputs(1, seq_len, seq_len))["params"]}


def fresh_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 with ``params`` and a new optimizer state."""
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                 seq_len: int) -> TrainState:
  """A step-0 state with freshly initialised parameters."""
  return fresh_state(init_params(model, rng, seq_len), tx)


def abstract_params(model: nn.Module, seq_len: int) -> Any:
  """``{'params': ...}`` of ``model`` as ``ShapeDtypeStruct``s; nothing is computed."""
  return jax.eval_shape(lambda rng: init_params(model, rng, seq_len), jax.random.PRNGKey(0))


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int,
                   mesh: Mesh, rules: Any = ()) -> tuple[TrainState, TrainState]:
  """``(abstract, shardings)``: the state's shapes and dtypes with their shardings on ``mesh``
  (``config.mesh.rules``), the target of a restore onto this mesh; and the shardings alone."""
  shapes = jax.eval_shape(lambda rng: create_state(model, tx, rng, seq_len),
                          jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(mesh, shapes, rules)
  return sharding.with_shardings(shapes, shardings), shardings


def on_one_device(abstract: Any) -> Any:
  """``abstract`` placed whole on this process's first device: restores a checkpoint written
  from any mesh."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return sharding.with_shardings(abstract, jax.tree_util.tree_map(lambda _: device, abstract))


def first_mismatch(params: Any, expected: Any) -> str | None:
  """The first difference of tree structure or shape between ``params`` and ``expected``
  (arrays or ``ShapeDtypeStruct``s), as one line; None if they fit."""
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  name = jax.tree_util.keystr
  for path in sorted(set(flat) | set(want), key=name):
    if path not in flat or path not in want:
      return f"{name(path)} is {'missing' if path not in flat else 'not in the model'}"
    got, expected = tuple(flat[path].shape), tuple(want[path].shape)
    if got != expected:
      return f"{name(path)} has shape {got}, the model {expected}"
  return None

