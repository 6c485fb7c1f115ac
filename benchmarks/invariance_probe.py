"""Where a row's bits first change with the batch: every module's output for one row, computed
alone and among other rows, compared bit for bit.

  python -m benchmarks invariance_probe --config=xlnet_base [--batch=64 --targets=1,7]

One uncached call of the two-stream model on random weights (``--length`` content rows, the
first ``--visible`` of them a prompt, and ``--targets`` query rows after it), jitted with
every module's output captured (flax's ``capture_intermediates``): row 0 alone, then the same
row 0 among ``--batch - 1`` other random rows. One record per (``--deterministic`` setting,
targets): the modules whose outputs for row 0 differ, in the order they ran, and the largest
difference of row 0's logits. With deterministic decoding's batch-invariant model no module
may differ (docs/sampling.md, "Deterministic decoding"); where one does on a GPU, its float
work is what to fix (``greedy_agreement`` counts the rows that then decode differently).
"""
from __future__ import annotations

import argparse
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import masks, models
from benchmarks import cli, common, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="xlnet_base", help="configs/NAME.py, random weights")
  parser.add_argument("--batch", type=int, default=64, help="rows of the second call")
  parser.add_argument("--length", type=int, default=0, help="content rows (0: seq_len)")
  parser.add_argument("--visible", type=float, default=0.05, help="the prompt's fraction")
  parser.add_argument("--targets", type=cli.list_of(int), default="1,7",
                      help="query rows of a call, one record each")
  parser.add_argument("--deterministic", type=cli.list_of(cli.flag_bool), default="false,true",
                      help="the default model, the batch-invariant one, or both")


def inputs(model: Any, batch: int, length: int, num_visible: int,
           num_targets: int) -> tuple[Any, ...]:
  """``model.__call__``'s inputs for ``batch`` rows of random tokens (row 0 the same at every
  batch): prefix-LM visibility over a prompt of ``num_visible`` ranks, targets right after."""
  draw = lambda seed, rows: np.random.default_rng(seed).integers(
      model.num_special_tokens, model.vocab_size, (rows, length), np.int32)
  tokens_BxL = np.concatenate([draw(0, 1), draw(1, batch - 1)])
  positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  target_BxK = jnp.broadcast_to(num_visible + jnp.arange(num_targets, dtype=jnp.int32),
                                (batch, num_targets))
  limits_BxT = jnp.concatenate([
      masks.content_limit(positions_BxL, jnp.full((batch,), num_visible, jnp.int32)),
      masks.query_limit(target_BxK, jnp.ones_like(target_BxK, bool))], 1)
  return (jnp.asarray(tokens_BxL), positions_BxL, target_BxK,
          masks.Visibility(limits_BxT, positions_BxL))


def _in_order(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """``(path, value)`` of flax's captured outputs in the order the modules ran (a dict keeps
  the order its keys were added in; ``jax.tree`` would sort them)."""
  for name, value in tree.items():
    path = f"{prefix}/{name}" if prefix else name
    if isinstance(value, dict):
      yield from _in_order(value, path)
    else:
      for i, leaf in enumerate(jax.tree.leaves(value)):
        yield f"{path}[{i}]", leaf


def row_outputs(model: Any, params: Any, inputs: tuple[Any, ...]) -> dict[str, np.ndarray]:
  """Row 0's output of every module of one jitted call, by path, in the order they ran."""
  paths = []

  def call(params, inputs):
    _, state = model.apply(params, *inputs, capture_intermediates=True, mutable=["intermediates"])
    named = list(_in_order(state["intermediates"]))
    paths[:] = [path for path, _ in named]
    return [value[0] for _, value in named]

  values = jax.device_get(jax.jit(call)(params, inputs))
  return dict(zip(paths, values))


def differing_modules(alone: dict[str, np.ndarray], among: dict[str, np.ndarray]) -> list[str]:
  """The paths of :func:`row_outputs` whose values differ in any bit, in the order they ran."""
  bits = lambda x: np.ascontiguousarray(x).view(np.uint8)
  return [path for path in alone if not np.array_equal(bits(alone[path]), bits(among[path]))]


def run(config: str = "xlnet_base", batch: int = 64, length: int = 0, visible: float = 0.05,
        targets: list[int] = (1, 7), deterministic: list[bool] = (False, True)) -> Iterator[dict]:
  """One record per (setting, targets), yielded as each is measured."""
  model, params, settings = common.random_model(config)
  length = length or settings.data.seq_len
  num_visible = max(1, int(visible * length))
  for det in deterministic:
    net = models.batch_invariant(model) if det else model
    for num_targets in targets:
      alone, among = (row_outputs(net, params, inputs(net, rows, length, num_visible,
                                                      num_targets)) for rows in (1, batch))
      differing = differing_modules(alone, among)
      logits = [path for path in alone if path.startswith("__call__")][0]
      yield records.make(
          "invariance_probe",
          {"batch": batch, "length": length, "visible": visible, "targets": num_targets,
           "deterministic": det},
          {"modules": len(alone), "differing": len(differing),
           "first_differing": differing[0] if differing else None,
           "differing_modules": differing,
           "logits_max_abs_diff": float(np.max(np.abs(
               alone[logits].astype(np.float64) - among[logits].astype(np.float64))))},
          common.model_config(config))
