"""The network as the sampling loop sees it: a function of params and rank-space rows.

The loop never touches a flax module directly: it calls a :class:`Network`, so anything with
the same call (for instance a tabulated joint over a tiny vocabulary, where exactness can be
checked by enumeration) can stand in for the model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax.numpy as jnp

from asarm_jax import distribution, forward, models

Array = jnp.ndarray


class Network(Protocol):
  """What a sampler needs of a network (hashable: it keys the compile cache)."""
  vocab_size: int
  num_special_tokens: int

  def prepare(self, params: Any) -> Any:
    """Params as the calls use them, computed once per ``generate`` (not once per call)."""

  def init_cache(self, batch: int, num_slots: int) -> Any:
    """An empty rank-indexed cache: a pytree whose leaves all start with ``batch x num_slots``."""

  def __call__(self, params: Any, tokens_rank_BxL: Array, perm_BxL: Array,
               num_visible_B: Array, target_rank_BxK: Array, target_valid_BxK: Array,
               num_decoded: Array | None = None, *, cache: Any = None,
               content_rank_BxR: Array | None = None, tree: forward.TreeRows | None = None,
               head: bool = True) -> Any:
    """Logits ``B x K x V`` (``(logits, cache)`` when ``cache`` is given), with the meaning
    of :func:`asarm_jax.forward.call`; with ``head=False`` features ``B x K x D`` instead,
    which :meth:`head` turns into the same logits."""

  def head(self, params: Any, features_BxKxD: Array) -> Array:
    """Logits ``B x K x V`` of features from ``__call__(..., head=False)`` (any rows of
    them)."""

  def log_probs(self, logits_BxKxV: Array, temperature: Array) -> Array:
    """Tempered log-probabilities ``B x K x V`` of its logits
    (:func:`asarm_jax.distribution.log_probs`, its special ids excluded)."""

  def batch_invariant(self) -> "Network":
    """The same network computing each row independently of the call's shape (rows per call,
    batch, slot), bit for bit: ``generate(..., deterministic=True)`` decodes with it."""


@dataclasses.dataclass(frozen=True)
class ModelNetwork:
  """A flax AS-ARM (``models.build``) as a :class:`Network`: :func:`forward.call`."""
  model: nn.Module

  @property
  def vocab_size(self) -> int:
    return self.model.vocab_size

  @property
  def num_special_tokens(self) -> int:
    return self.model.num_special_tokens

  def prepare(self, params: Any) -> Any:
    return models.compute_params(self.model, params)

  def init_cache(self, batch: int, num_slots: int) -> Any:
    return self.model.init_cache(batch, num_slots)

  def __call__(self, params: Any, *args: Any, **kwargs: Any) -> Any:
    return forward.call(self.model, params, *args, **kwargs)

  def head(self, params: Any, features_BxKxD: Array) -> Array:
    return forward.head(self.model, params, features_BxKxD)

  def log_probs(self, logits_BxKxV: Array, temperature: Array) -> Array:
    return distribution.log_probs(logits_BxKxV, self.num_special_tokens, temperature,
                                  models.is_batch_invariant(self.model))

  def batch_invariant(self) -> ModelNetwork:
    return ModelNetwork(models.batch_invariant(self.model))


def as_network(model: nn.Module | Network) -> Network:
  """``model`` itself if it is already a :class:`Network`, else its :class:`ModelNetwork`."""
  return ModelNetwork(model) if isinstance(model, nn.Module) else model
