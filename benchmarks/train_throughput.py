"""Training throughput and MFU of the sharded train step (not a test).

  python benchmarks/train_throughput.py --configs=code_small,xlnet_base \
      --attention_impls=cudnn,pallas --out=DIR [--check=false]

Random tokens (throughput does not depend on them), the real jitted step with donation and
the configured mesh; MFU counts the two-stream FLOPs (asarm_jax/flops.py). Every config is
measured with each attention implementation side by side, after the loss and gradients of one
batch under each (bf16) are compared with float32 XLA attention (same params, same batch), so a
faster kernel that computes something else is caught; one that fails to run is reported and not
timed. Prints a markdown table (with the peak memory XLA plans for the step) and writes
DIR/train_throughput.json.
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

import common
from asarm_jax import flops, models, train

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["code_small", "xlnet_base"], "configs/ names to measure.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_integer("batch_size", 0, "Override train.batch_size (0: the config's).")
flags.DEFINE_list("attention_impls", ["xla"], "model.attention_impl values to compare.")
flags.DEFINE_string("out", ".", "Output directory.")
flags.DEFINE_bool("check", True, "Check gradient agreement first (skip: time every impl).")


def loss_and_grads(config, model, tokens):
  """Loss and flattened gradients (float32 numpy) of one batch at fixed init params."""
  params = train.init_params(model, jax.random.PRNGKey(0), config.data.seq_len)
  grad_fn = jax.jit(jax.value_and_grad(train.loss_fn(model, config.objective), has_aux=True))
  (loss, _), grads = grad_fn(params, tokens, jax.random.PRNGKey(1))
  flat = np.concatenate([np.asarray(g, np.float32).ravel()
                         for g in jax.tree_util.tree_leaves(grads)])
  return float(loss), flat


def measure(name, attention_impl):
  config, step, state, tokens, rng = common.train_setup(name, FLAGS.batch_size,
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
  for _ in range(FLAGS.steps):
    state, metrics = step(state, tokens, rng)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / FLAGS.steps
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  tokens_per_s = batch * seq_len / seconds
  flops_per_s = flops.train_flops_per_token(config.model, seq_len) * tokens_per_s
  peak = flops.peak_flops_per_device()
  return {"config": name, "attention": attention_impl, "params_M": num_params / 1e6,
          "batch": batch, "seq_len": seq_len,
          "dtype": config.model.dtype, "step_ms": 1e3 * seconds, "tokens_per_s": tokens_per_s,
          "model_tflops_per_s": flops_per_s / 1e12,
          "mfu": flops_per_s / (peak * jax.device_count()) if peak else None,
          "peak_memory_gib": peak_gib,
          "device": jax.devices()[0].device_kind, "num_devices": jax.device_count()}


def agreement(name):
  """Loss and relative gradient error of every implementation against float32 XLA attention
  (same params, same batch): the bf16 XLA row is the noise floor a fused kernel should match."""
  def run(impl, dtype):
    config = common.config_of(name, attention_impl=impl, dtype=dtype)
    tokens = np.random.default_rng(0).integers(4, config.model.vocab_size,
                                               (8, config.data.seq_len), dtype=np.int32)
    return loss_and_grads(config, models.build(config.model), tokens)

  ref_loss, ref_grads = run("xla", "float32")
  out = {}
  for impl in FLAGS.attention_impls:
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


def main(_):
  checks = {name: agreement(name) if FLAGS.check else {} for name in FLAGS.configs}
  rows = [measure(name, impl) for name in FLAGS.configs for impl in FLAGS.attention_impls
          if impl in checks[name] or not FLAGS.check]  # a failed implementation is not timed
  for row in rows:
    row["agreement"] = checks[row["config"]].get(row["attention"])
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "train_throughput.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print("| config | attention | params | batch x len | step | tokens/s | model TFLOP/s | MFU | "
        "peak memory | device |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
    print(f"| {r['config']} | {r['attention']} | {r['params_M']:.1f}M | {r['batch']}x{r['seq_len']} | "
          f"{r['step_ms']:.1f} ms | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.1f} | "
          f"{mfu} | {r['peak_memory_gib'] or 0:.1f} GiB | {r['device']} x{r['num_devices']} |")


if __name__ == "__main__":
  app.run(main)
