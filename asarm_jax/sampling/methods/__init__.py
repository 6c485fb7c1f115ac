"""Sampling methods as strategies of the one loop (:mod:`asarm_jax.sampling.core`).

Each method is a module with two functions over the loop's
:class:`~asarm_jax.sampling.state.State`:

* ``init(net, params, spec, state, use_cache) -> state``: makes the cache (if ``use_cache``)
  and runs the first call (the prefill), leaving the method's ``carry`` in the state;
* ``round(net, params, spec, state) -> state``: one round for every row; finished rows are
  left unchanged;

and the constant ``CALLS_PER_ROUND`` (network calls of one round), or, where that changes from
round to round, ``round_calls(spec, state)``. A method that chooses a draft size per round
reports its choices with ``rounds_by_size(spec, state)`` (``B x S``).

Adding a method means adding a module and a line here.
"""
from typing import Any

import jax.numpy as jnp

from asarm_jax.sampling.methods import assd, assd_fused, auto, mdlm, sequential, tree

STRATEGIES = {"sequential": sequential, "parallel": sequential, "assd": assd,
              "assd_fused": assd_fused, "tree": tree, "auto": auto, "mdlm": mdlm}


def round_calls(method: Any, spec: Any, state: Any) -> jnp.ndarray:
  """int32 scalar: the network calls of the round about to run, for the whole batch."""
  if hasattr(method, "round_calls"):
    return method.round_calls(spec, state)
  return jnp.int32(method.CALLS_PER_ROUND)


def rounds_by_size(method: Any, spec: Any, state: Any) -> jnp.ndarray:
  """int32 ``B x S``: each row's rounds at each draft size (``B x 0`` if the size is fixed)."""
  if hasattr(method, "rounds_by_size"):
    return method.rounds_by_size(spec, state)
  return jnp.zeros((state.num_decoded_B.shape[0], 0), jnp.int32)
