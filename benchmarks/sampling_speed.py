"""Sampling speed of every method on a trained checkpoint, side by side, and the reference's call.

  python -m benchmarks sampling_speed --workdir=runs/xlnet_base [--reference=true]

Prompts are held-out rows of the checkpoint's corpus (seq_len tokens) with a random 5% (and
50%) of positions visible; the rest are generated left to right. Every configuration (batch,
sampler spec) is compiled once by an untimed warm-up call, then timed at every visible fraction
and temperature (the temperature is a traced argument: no recompilation). At batch 1 each
timing covers ``--batch1_prompts`` prompts decoded one after another. Configurations run in
priority order, batch 1 and 64 alternating, until ``--budget_s`` is spent; ``auto`` (the draft
size chosen per row and round; at batch 64 also one size per batch) comes right after
sequential, so every cell compares it with the static decoders (run ``python -m benchmarks
cost_model`` first, or it chooses by calls).
One record per (configuration, visible, temperature). ``--reference=true`` adds a record
of one call of a randomly initialised HF ``XLNetLMHeadModel`` at base size (fp32, batch 1,
perm_mask plus a k-row target_mapping): the reference implementation's cost (needs torch and a
GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import data, inference, sampling
from asarm_jax.sampling.methods import auto
from asarm_jax.sampling.spec import SamplerSpec
from benchmarks import cli, records

# (batch, spec fields) in priority order, the two batch sizes interleaved so that a short budget
# still times both; each runs at every visible fraction and temperature.
GRID = ([(1, dict(method="sequential")), (64, dict(method="sequential")),
         (1, dict(method="auto", k=8)), (64, dict(method="auto", k=8)),
         (64, dict(method="auto", k=8, size_choice="batch")),
         (1, dict(method="assd_fused", k=5)), (64, dict(method="assd", k=5)),
         (1, dict(method="tree", num_nodes=8)), (64, dict(method="tree", num_nodes=4)),
         (1, dict(method="tree", num_nodes=16)), (64, dict(method="assd_fused", k=5)),
         (1, dict(method="assd", k=5)), (64, dict(method="tree", num_nodes=8)),
         (1, dict(method="tree", num_nodes=32)), (1, dict(method="tree", num_nodes=4)),
         (64, dict(method="tree", num_nodes=16)), (1, dict(method="tree", num_nodes=64)),
         (64, dict(method="tree", num_nodes=32)), (64, dict(method="tree", num_nodes=64)),
         (1, dict(method="tree", num_nodes=16, ngram=0))])
VISIBLE = (0.05, 0.5)
TEMPERATURES = (1.0, 0.7, 0.2, 0.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="trained workdir (checkpoints + data)")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="stop starting new configurations after this long")
  parser.add_argument("--reference", type=cli.flag_bool, default=False,
                      help="also time the HF XLNet reference call")
  parser.add_argument("--attention_impl", default="",
                      help="attention kernel; default: the checkpoint's model.attention_impl")
  parser.add_argument("--batch1_prompts", type=int, default=4, help="prompts per batch-1 timing")
  parser.add_argument("--depth", type=int, default=6, help="tree depth D")
  parser.add_argument("--ngram", type=int, default=2,
                      help="prompt-lookup match length of the tree (0: off)")
  parser.add_argument("--batches", type=cli.list_of(int), default="1,64",
                      help="batch sizes of the grid to run")


def heldout_rows(loaded: inference.Loaded, workdir: str) -> np.ndarray:
  """64 held-out rows of ``seq_len`` tokens (read once for the whole grid)."""
  config = loaded.config
  return data.heldout_batches(config.data, loaded.tokenizer,
                              config.data.data_dir or os.path.join(workdir, "data"),
                              batch_size=64, num_batches=1)[0]


def prompts(rows: np.ndarray, batch: int, fraction: float, seed: int = 0):
  """``(tokens, visible)`` of ``batch`` rows with a random ``fraction`` of positions visible."""
  tokens = np.resize(rows, (batch, rows.shape[1]))
  rs = np.random.default_rng(seed)
  visible = np.zeros(tokens.shape, bool)
  for b in range(batch):
    visible[b, rs.choice(tokens.shape[1], int(fraction * tokens.shape[1]), replace=False)] = True
  return jnp.asarray(tokens), jnp.asarray(visible)


def decode(loaded: inference.Loaded, batches: list, spec: SamplerSpec, seed: int):
  """Decodes every (tokens, visible) batch in turn; returns (seconds, generated, calls,
  rounds at each draft size (auto))."""
  generated = calls = rounds = 0
  t0 = time.perf_counter()
  for i, (tokens, visible) in enumerate(batches):
    out = sampling.generate(loaded.model, loaded.params, tokens, visible,
                            jax.random.PRNGKey(seed + i), spec=spec)
    out = jax.device_get((out.num_generated_B, out.num_calls_B, out.rounds_by_size_BxS))
    generated, calls, rounds = generated + out[0], calls + out[1], rounds + out[2].sum(0)
  return time.perf_counter() - t0, generated, calls, rounds


def run_grid(loaded: inference.Loaded, workdir: str, budget_s: float, batch1_prompts: int,
             depth: int, ngram: int, batches: list[int]) -> list[dict]:
  """One record per timed (configuration, visible fraction, temperature)."""
  made, start = [], time.perf_counter()
  rows = heldout_rows(loaded, workdir)
  config = {"workdir": workdir, "step": int(loaded.step),
            "attention_impl": loaded.model.attention_impl}
  for batch, fields in GRID:
    if batch not in batches:
      continue
    base = SamplerSpec(**{"depth": depth, "ngram": ngram, **fields})
    if time.perf_counter() - start > budget_s:
      print(f"budget spent; skipping batch {batch} {base.describe()}", flush=True)
      continue
    count = batch1_prompts if batch == 1 else 1
    for fraction in VISIBLE:
      prompt_batches = [prompts(np.roll(rows, -i, 0), batch, fraction, seed=i)
                        for i in range(count)]
      if fraction == VISIBLE[0]:  # compile and warm up, untimed
        decode(loaded, prompt_batches[:1], base, seed=100)
      for temperature in TEMPERATURES:
        spec = base.replace(temperature=temperature)
        seconds, generated, calls, rounds = decode(loaded, prompt_batches, spec, seed=1)
        chosen = ({"round_share_by_size": {str(k): float(r / rounds.sum()) for k, r in
                                           zip(auto.sizes(spec), rounds)}}
                  if spec.method == "auto" else {})
        made.append(records.make(
            "sampling_speed", {"batch": batch, **cli.spec_settings(spec), "visible": fraction,
                               "prompts": count * batch},
            {"tokens_per_call": float(generated.sum() / calls.sum()),
             "mean_calls": float(calls.mean()), "mean_generated": float(generated.mean()),
             "seconds": seconds, "seconds_per_sample": seconds / (count * batch),
             "tokens_per_s": float(generated.sum() / seconds),
             "ms_per_call": 1e3 * seconds / float(calls.max()),  # batch 1: summed
             **chosen},
            config))
        print(json.dumps(made[-1]["settings"] | made[-1]["metrics"]), flush=True)
  return made


def reference_call_ms(k: int = 5, length: int = 512, repeats: int = 20) -> float:
  """Median milliseconds of one call of HF's XLNet at base size, as the paper's code runs it."""
  import torch  # pylint: disable=g-import-not-at-top  (GPU machines only)
  from transformers import XLNetConfig, XLNetLMHeadModel  # pylint: disable=g-import-not-at-top
  model = XLNetLMHeadModel(XLNetConfig()).cuda().eval()  # base size, random weights, fp32
  ids = torch.randint(5, 32000, (1, length)).cuda()
  perm_mask = torch.triu(torch.ones(1, length, length), diagonal=0).cuda()
  target = torch.zeros(1, k, length).cuda()
  target[0, torch.arange(k), length // 2 + torch.arange(k)] = 1.0
  with torch.no_grad():
    for _ in range(3):
      model(ids, perm_mask=perm_mask, target_mapping=target)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      model(ids, perm_mask=perm_mask, target_mapping=target)
      torch.cuda.synchronize()
      times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def run(workdir: str, budget_s: float = 420.0, reference: bool = False, attention_impl: str = "",
        batch1_prompts: int = 4, depth: int = 6, ngram: int = 2,
        batches: list[int] = (1, 64)) -> list[dict]:
  """The grid's records (and the reference call's, first, with ``reference``)."""
  loaded = inference.load(workdir, attention_impl or None)
  made = []
  if reference:
    made.append(records.make("sampling_speed_reference", {"k": 5, "length": 512, "batch": 1},
                             {"call_ms": reference_call_ms()},
                             {"model": "transformers.XLNetLMHeadModel, base size, fp32"}))
  return made + run_grid(loaded, workdir, budget_s, batch1_prompts, depth, ngram, list(batches))
