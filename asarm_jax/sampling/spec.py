"""``SamplerSpec``: every setting of a sampler, in one frozen value.

A spec travels whole from the config (``config.sample``, the only place its defaults live)
through inference and evaluation to :func:`asarm_jax.sampling.generate`. Its fields are the
``config.sample`` keys of the same names, so ``--config.sample.method=tree`` sets the spec.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from asarm_jax.masks import MAX_TREE_NODES

METHODS = ("sequential", "parallel", "assd", "assd_fused", "tree", "auto", "mdlm")
FIELDS = ("method", "k", "num_nodes", "depth", "ngram", "temperature", "size_choice")
SIZE_CHOICES = ("row", "batch")
# The size settings each method reads besides the temperature (the others read ``k``), and
# how describe() and tag() write each one.
_SIZES = {"sequential": (), "tree": ("num_nodes", "depth", "ngram")}
_NAMES = {"k": ("k", "k"), "num_nodes": ("N", "n"), "depth": ("D", "d"), "ngram": ("ngram", "g")}


def _int_at_least(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name}={value!r}; expected an int >= {low}.")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """How to sample.

  Attributes:
    method: ``"sequential"`` (one exact token per call), ``"parallel"`` (``k`` independent
      tokens per call, NOT exact), ``"assd"`` (``k`` drafts; a density and a draft call per
      round), ``"assd_fused"`` (one call per round verifies the block and drafts the next),
      ``"tree"`` (one call per round walks a tree of ``num_nodes`` candidates with exact
      draws) or ``"auto"`` (ASSD whose draft size, at most ``k``, each row chooses every
      round, see :mod:`asarm_jax.sampling.methods.auto`), or ``"mdlm"`` (a masked-diffusion
      model's ancestral sampler: ``k`` tokens per call in a random order, NOT exact for an
      AS-ARM; :mod:`asarm_jax.sampling.methods.mdlm`).
    k: drafts per round (``parallel``, ``assd``, ``assd_fused``; the largest for ``auto``;
      tokens per call for ``mdlm``).
    num_nodes: the tree's node budget N (``tree``; at most ``MAX_TREE_NODES``).
    depth: the tree's depth D: draft rows per node; at most D + 1 tokens per call (``tree``).
    ngram: the prompt-lookup match length that adds a candidate chain to the tree; 0 is off.
    temperature: divides the logits of every draw; ``0`` is greedy decoding.
    size_choice: whose past chooses ``auto``'s draft size each round: ``"row"`` (each row its
      own, so a row's tokens never depend on its neighbours) or ``"batch"`` (one size for the
      batch, the most expected tokens of all live rows per ms: a batch's call costs its largest
      size, so rows that chose less would pay for drafts they do not make).
  """
  method: str = "assd_fused"
  k: int = 5
  num_nodes: int = 8
  depth: int = 6
  ngram: int = 2
  temperature: float = 1.0
  size_choice: str = "row"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r}; expected one of {METHODS}.")
    _int_at_least("k", self.k, 1)
    _int_at_least("num_nodes", self.num_nodes, 1)
    if self.num_nodes > MAX_TREE_NODES:
      raise ValueError(f"num_nodes={self.num_nodes}: a tree has at most {MAX_TREE_NODES} nodes.")
    _int_at_least("depth", self.depth, 1)
    _int_at_least("ngram", self.ngram, 0)
    t = self.temperature
    if (isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not math.isfinite(t)
        or t < 0):
      raise ValueError(f"temperature={t!r}; expected a finite number >= 0.")
    if self.size_choice not in SIZE_CHOICES:
      raise ValueError(f"size_choice={self.size_choice!r}; expected one of {SIZE_CHOICES}.")

  @classmethod
  def from_config(cls, sample: Mapping[str, Any]) -> "SamplerSpec":
    """The spec of a ``config.sample`` block (its other keys, such as prompts, are ignored).

    Workdirs written before the spec name the tree's depth ``tree_depth`` and its node budget
    ``k``; both are read.
    """
    values = {name: sample[name] for name in FIELDS if name in sample}
    if "depth" not in values and "tree_depth" in sample:
      values["depth"] = sample["tree_depth"]
    if "num_nodes" not in sample and values.get("method") == "tree" and "k" in values:
      values["num_nodes"] = values.pop("k")
    return cls(**values)

  @classmethod
  def from_kwargs(cls, method: str, k: int, temperature: float, depth: int,
                  ngram: int) -> "SamplerSpec":
    """The spec of ``generate``'s keyword arguments, where ``k`` is the node budget of
    ``method="tree"``."""
    _int_at_least("k", k, 1)
    _int_at_least("depth", depth, 0)
    if method == "tree" and k > MAX_TREE_NODES:
      raise ValueError(f"k={k}: a tree has at most {MAX_TREE_NODES} nodes.")
    size = dict(num_nodes=k) if method == "tree" else dict(k=k)
    return cls(method=method, temperature=temperature,
               depth=depth if method == "tree" else max(depth, 1), ngram=ngram, **size)

  def replace(self, **changes: Any) -> "SamplerSpec":
    return dataclasses.replace(self, **changes)

  def sizes(self) -> dict[str, int]:
    """The size settings the method reads besides the temperature, e.g. ``{"k": 5}``."""
    return {name: getattr(self, name) for name in _SIZES.get(self.method, ("k",))}

  def describe(self) -> str:
    """One short line, e.g. ``assd_fused k=5 T=1`` or ``tree N=8 D=6 ngram=2 T=0.2``."""
    sizes = "".join(f" {_NAMES[n][0]}={v}" for n, v in self.sizes().items())
    return f"{self.method}{sizes}{' per batch' * self.per_batch()} T={self.temperature:g}"

  def tag(self) -> str:
    """A file-name part that names every setting that changes the samples or their calls."""
    sizes = "".join(f"_{_NAMES[n][1]}{v}" for n, v in self.sizes().items())
    return f"{self.method}{sizes}{'_batch' * self.per_batch()}_t{self.temperature:g}"

  def per_batch(self) -> bool:
    """Whether ``auto`` chooses one draft size for the batch (``size_choice`` means nothing to
    other methods)."""
    return self.method == "auto" and self.size_choice == "batch"
