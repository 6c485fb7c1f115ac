"""``method="auto"``'s cost model: ms per round at each draft size and batch, measured through
``sampling.generate`` and cached for this machine and network.

  python -m benchmarks cost_model --workdir=runs/asarm [--k=8 --batch_sizes=1,8,64]
  python -m benchmarks cost_model --config=xlnet_base    (random weights of configs/NAME.py)
  python -m benchmarks cost_model --workdir=runs/asarm --deterministic=true

A round of draft size 0 is sequential decoding's (one call of one row); of ``k >= 1``,
``assd_fused``'s (one call of ``(k + 1)^2`` rows), so each is timed as ``generate`` with that
sampler on random rows of the model's length whose last ``--hidden`` tokens are hidden, less a
run with half as many hidden, over the rounds between them (each the fastest of
``--repeats``, after an untimed compiling run). The table goes to
:func:`asarm_jax.sampling.cost_model.path`, where ``generate`` reads it for ``auto``; rerun to
refresh. The cost does not depend on the weights, so any checkpoint of the architecture, or
``--config`` with random weights, will do (the file is keyed by the model's fields: the same
fields give the same file). ``--deterministic=true`` measures the batch-invariant network that
``generate(..., deterministic=True)`` decodes with (its own file). One record per (batch,
size).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import numpy as np

from asarm_jax import sampling
from asarm_jax.sampling import cost_model
from asarm_jax.sampling.methods import auto
from benchmarks import cli, common, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="", help="a workdir of the model")
  parser.add_argument("--config", default="", help="or configs/NAME.py, random weights")
  parser.add_argument("--k", type=int, default=8, help="the largest draft size auto may use")
  parser.add_argument("--batch_sizes", type=cli.list_of(int), default="1,8,64",
                      help="slots to measure (auto interpolates between them)")
  parser.add_argument("--hidden", type=int, default=128, help="hidden tokens per row")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per (batch, size)")
  parser.add_argument("--deterministic", type=cli.flag_bool, default=False,
                      help="the batch-invariant network (deterministic decoding)")


def ms_per_round(net: sampling.ModelNetwork, params: Any, size: int, batch: int, length: int,
                 hidden: int, repeats: int) -> float:
  """Ms per round at draft size ``size``: ``generate`` runs with ``hidden`` and with
  ``hidden // 2`` hidden tokens per row (the fastest of ``repeats`` each), their difference in
  time over their difference in rounds, so that what a run pays once (the prefill, a 64-row
  call over the whole prompt, and the dispatch) cancels. Divided by one run's rounds instead,
  the H200's batch-64 sequential round came to 1.49 ms against 1.18 in sampling_speed
  (2026-12-05)."""
  rs = np.random.default_rng(0)
  tokens = rs.integers(net.num_special_tokens, net.vocab_size, (batch, length), np.int32)
  spec = (sampling.SamplerSpec("sequential") if size == 0 else
          sampling.SamplerSpec("assd_fused", k=size))

  def fastest(num_hidden: int) -> tuple[float, float]:
    """(ms, rounds) of the fastest of ``repeats`` runs, after an untimed one."""
    visible = np.broadcast_to(np.arange(length) < length - num_hidden, (batch, length))
    run = lambda seed: jax.block_until_ready(sampling.generate(
        net, params, tokens, visible, jax.random.key(seed), spec=spec))
    run(-1)
    timed = []
    for seed in range(repeats):
      start = time.perf_counter()
      out = run(seed)
      rounds = int(out.num_network_calls) - 1  # one call a round, after the prefill
      timed.append((1e3 * (time.perf_counter() - start), rounds))
    return min(timed)

  (ms, rounds), (half_ms, half_rounds) = fastest(hidden), fastest(hidden // 2)
  return (ms - half_ms) / max(rounds - half_rounds, 1.0)


def run(workdir: str = "", config: str = "", k: int = 8, batch_sizes: list[int] = (1, 8, 64),
        hidden: int = 128, repeats: int = 3, deterministic: bool = False) -> list[dict]:
  """Measures and saves the cost table; one record per (batch, size)."""
  loaded, described = common.load(workdir, config)
  model, params, length = loaded.model, loaded.params, loaded.config.data.seq_len
  net = sampling.ModelNetwork(model)
  if deterministic:
    net = net.batch_invariant()
    model = net.model
  sizes = auto.sizes(sampling.SamplerSpec("auto", k=k))
  hidden = min(max(hidden, 2), length - 1)
  table = [[ms_per_round(net, params, size, batch, length, hidden, repeats) for size in sizes]
           for batch in batch_sizes]
  path = cost_model.save(net, {"device": jax.devices()[0].device_kind, "network": repr(model),
                               "batch_sizes": list(batch_sizes), "sizes": list(sizes),
                               "hidden": hidden, "round_ms": table})
  config = {**described, "cost_model": path}
  return [records.make("cost_model", {"batch": batch, "size": size, "hidden": hidden,
                                      "deterministic": deterministic},
                       {"round_ms": ms}, config)
          for batch, row in zip(batch_sizes, table) for size, ms in zip(sizes, row)]
