"""Training throughput and MFU of the sharded train step.

  python -m benchmarks train_throughput --configs=xlnet_base --attention_impls=cudnn,pallas \
      [--check=false]

Random tokens (throughput does not depend on them), the real jitted step with donation and
the configured mesh; MFU counts the two-stream FLOPs (asarm_jax/flops.py). Every config is
measured with each attention implementation side by side, after the loss and gradients of one
batch under each (bf16) are compared with float32 XLA attention (same params, same batch), so a
faster kernel that computes something else is caught; one that fails to run is reported and not
timed. One record per (config, implementation), with the peak memory XLA plans for the step
and the gradient agreement.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from asarm_jax import flops, models, train
from benchmarks import cli, common, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--configs", type=cli.list_of(str), default="code_small,xlnet_base",
                      help="configs/ names to measure")
  parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="override train.batch_size (0: the config's)")
  parser.add_argument("--attention_impls", type=cli.list_of(str), default="xla",
                      help="model.attention_impl values to compare")
  parser.add_argument("--check", type=cli.flag_bool, default=True,
                      help="check gradient agreement first (false: time every implementation)")


def loss_and_grads(config, model, tokens):
  """Loss and flattened gradients (float32 numpy) of one batch at fixed init params."""
  params = train.init_params(model, jax.random.PRNGKey(0), config.data.seq_len)
  grad_fn = jax.jit(jax.value_and_grad(train.loss_fn(model, config.objective), has_aux=True))
  (loss, _), grads = grad_fn(params, tokens, jax.random.PRNGKey(1))
  flat = np.concatenate([np.asarray(g, np.float32).ravel()
                         for g in jax.tree_util.tree_leaves(grads)])
  return float(loss), flat


def measure(name: str, attention_impl: str, steps: int, batch_size: int) -> dict:
  """Step time, tokens/s, MFU and planned peak memory of configs/NAME.py with one kernel."""
  config, step, state, tokens, rng = common.train_setup(name, batch_size,
                                                       attention_impl=attention_impl)
  seq_len, batch = config.data.seq_len, config.train.batch_size
  # Peak device memory of the step as XLA planned it: live arguments (state, batch) plus the
  # largest temporary working set (the step donates the state, so outputs reuse it).
  step = step.lower(state, tokens, rng).compile()  # one compile: timed and measured alike
  memory = step.memory_analysis()
  peak_gib = ((memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30
              if memory is not None else None)
  for _ in range(3):
    state, metrics = step(state, tokens, rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, tokens, rng)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  tokens_per_s = batch * seq_len / seconds
  flops_per_s = flops.train_flops_per_token(config.model, seq_len) * tokens_per_s
  peak = flops.peak_flops_per_device()
  return {"params_M": num_params / 1e6, "batch": batch, "seq_len": seq_len,
          "dtype": config.model.dtype, "step_ms": 1e3 * seconds, "tokens_per_s": tokens_per_s,
          "model_tflops_per_s": flops_per_s / 1e12,
          "mfu": flops_per_s / (peak * jax.device_count()) if peak else None,
          "peak_memory_gib": peak_gib, "num_devices": jax.device_count()}


def agreement(name: str, attention_impls: list[str]) -> dict:
  """Loss and relative gradient error of every implementation against float32 XLA attention
  (same params, same batch): the bf16 XLA row is the noise floor a fused kernel should match."""
  def run(impl, dtype):
    config = common.config_of(name, attention_impl=impl, dtype=dtype)
    tokens = np.random.default_rng(0).integers(4, config.model.vocab_size,
                                               (8, config.data.seq_len), dtype=np.int32)
    return loss_and_grads(config, models.build(config.model), tokens)

  ref_loss, ref_grads = run("xla", "float32")
  out = {}
  for impl in attention_impls:
    try:
      loss, grads = run(impl, "bfloat16")
    except Exception as e:  # pylint: disable=broad-except  (a kernel this device lacks)
      print(f"{name}: {impl} failed: {type(e).__name__}: {e}".splitlines()[0], flush=True)
      continue
    out[impl] = {"loss": loss, "float32_loss": ref_loss,
                 "grad_relative_error": float(np.linalg.norm(grads - ref_grads)
                                              / np.linalg.norm(ref_grads))}
    print(f"{name}: bf16 {impl}: loss {loss:.5f} (float32 xla {ref_loss:.5f}), relative "
          f"gradient error {out[impl]['grad_relative_error']:.2e}", flush=True)
  return out


def run(configs: list[str] = ("demo",), steps: int = 20, batch_size: int = 0,
        attention_impls: list[str] = ("xla",), check: bool = True) -> list[dict]:
  """One record per (config, implementation); an implementation that fails the check (or
  does not run) is not timed."""
  made = []
  for name in configs:
    checks = agreement(name, attention_impls) if check else {}
    for impl in attention_impls:
      if check and impl not in checks:
        continue
      measured = measure(name, impl, steps, batch_size)
      made.append(records.make(
          "train_throughput", {"steps": steps, "batch_size": measured.pop("batch"),
                               "seq_len": measured.pop("seq_len")},
          {**measured, "agreement": checks.get(impl)},
          common.model_config(name, attention_impl=impl)))
  return made
