"""Fine-tuning starts (``config.init_from``): the tokenizer and weights of another workdir or of
a Hugging Face XLNet folder, and the step-0 train state that starts from them."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asarm_jax import convert, data, inference
from asarm_jax.state import TrainState, first_mismatch, fresh_state


def source(config: ml_collections.ConfigDict
           ) -> tuple[data.Tokenizer, Callable[[], Any]] | None:
  """``(tokenizer, read_params)`` of ``config.init_from`` (a workdir's newest checkpoint, or an
  HF XLNet folder converted in memory), or None when it is unset. The parameters are read only
  when ``read_params()`` is called: a run that resumes from its own checkpoint never needs them."""
  path = config.init_from
  if not path:
    return None
  if os.path.isfile(os.path.join(path, "config.json")):
    return (data.Tokenizer.from_serialized(convert.tokenizer_model(path)),
            lambda: convert.load(path, config.data.seq_len)[1])
  return inference.load_tokenizer(path), lambda: inference.load(path).params


def start_state(source_params: Any, tx: optax.GradientTransformation, abstract: TrainState,
                shardings: TrainState, origin: str) -> TrainState:
  """A step-0 state (fresh optimizer) whose parameters are ``source_params``, cast and placed
  like ``abstract``'s; raises a one-line ``ValueError`` if they do not fit the model."""
  mismatch = first_mismatch(source_params, abstract.params)
  if mismatch:
    raise ValueError(f"init_from={origin!r}: its parameters do not fit config.model: {mismatch}")
  params = jax.tree_util.tree_map(lambda x, a: jnp.asarray(x, a.dtype), source_params,
                                  abstract.params)
  return jax.jit(lambda p: fresh_state(p, tx), out_shardings=shardings)(params)
