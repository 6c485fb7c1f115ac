"""Training: one sharded ``jax.jit`` step, Orbax checkpoints, exact resume, held-out evaluation."""
from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from asarm_jax import checkpoint, data, flops, models, objectives, optim, sharding
from asarm_jax.metric_writer import MetricWriter


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_params(model: nn.Module, rng: jax.Array, seq_len: int) -> Any:
  """``{'params': ...}`` for ``model`` (the form ``model.apply`` and every caller take)."""
  return {"params": model.init(rng, *models.example_inputs(1, seq_len, seq_len))["params"]}


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                 seq_len: int) -> TrainState:
  params = init_params(model, rng, seq_len)
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def loss_fn(model: nn.Module, objective: ml_collections.ConfigDict) -> Callable:
  """``(params, tokens_BxL, rng) -> (loss, metrics)`` with the configured objective."""
  return functools.partial(objectives.joint_loss, model,
                           fraction_range=tuple(objective.fraction_range),
                           random_order=objective.random_order, parallel=objective.parallel)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """``(state, tokens_BxL, base_rng) -> (state, metrics)``; gradient accumulation via scan."""
  compute_loss = loss_fn(model, config.objective)
  accumulation = config.optim.accumulation_steps
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)

  def train_step(state: TrainState, tokens_BxL: jax.Array, base_rng: jax.Array):
    rng = jax.random.fold_in(base_rng, state.step)
    micro_AxMxL = tokens_BxL.reshape((accumulation, -1) + tokens_BxL.shape[1:])
    def grads_and_metrics(micro_MxL, micro_rng):
      (_, metrics), grads = jax.value_and_grad(compute_loss, has_aux=True)(
          state.params, micro_MxL, micro_rng)
      return grads, metrics

    def accumulate(total, inputs):
      i, micro_MxL = inputs
      out = grads_and_metrics(micro_MxL, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, total, out), None

    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   jax.eval_shape(grads_and_metrics, micro_AxMxL[0], rng))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accumulation), micro_AxMxL))
    grads, metrics = jax.tree_util.tree_map(lambda x: x / accumulation, (grads, metrics))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step),
                   nonfinite_skipped=opt_state.total_notfinite)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, fractions: tuple[float, ...]) -> Callable:
  """``(params, tokens_BxL) -> {bits_per_token@f}``: held-out joint loss at fixed fractions."""
  def eval_step(params, tokens_BxL):
    out = {}
    for i, fraction in enumerate(fractions):
      _, metrics = objectives.joint_loss(model, params, tokens_BxL, jax.random.PRNGKey(i),
                                         fraction_range=(fraction, fraction))
      out[f"bits_per_token@{fraction:g}"] = metrics["bits_per_token"]
    return out
  return eval_step


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag read at step boundaries (save, then exit 0)."""

  def __init__(self):
    self.requested = False
    self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("Signal %d received: saving a checkpoint at the next step boundary.", signum)
    self.requested = True

  def restore(self):
    for s, handler in self.previous.items():
      signal.signal(s, handler)


def check_compatible(meta: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a checkpoint written with a different model or data config."""
  saved = meta["config"]
  for block in ("model", "data"):
    current = json.loads(config[block].to_json_best_effort())
    if saved.get(block) != current:
      diff = sorted(k for k in set(saved.get(block, {})) | set(current)
                    if saved.get(block, {}).get(k) != current.get(k))
      raise ValueError(f"{workdir} holds a checkpoint from a different config.{block} "
                       f"(differs in {', '.join(diff)}); use another --workdir.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint. Returns last metrics."""
  os.makedirs(workdir, exist_ok=True)
  logging.info("seed %d, PRNG implementation %s", config.seed, jax.config.jax_default_prng_impl)
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  tokenizer = data.prepare(config.data, data_dir)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
                     f"{tokenizer.vocab_size} pieces; set data.vocab_size and model.vocab_size equal.")

  mesh = sharding.make_mesh(config.mesh)
  model = models.build(config.model)
  num_steps = config.train.num_steps
  tx = optim.make_optimizer(config.optim, num_steps)
  seq_len = config.data.seq_len
  global_batch = config.train.batch_size
  if global_batch % (jax.process_count() * config.optim.accumulation_steps):
    raise ValueError(f"train.batch_size={global_batch} must divide evenly over "
                     f"{jax.process_count()} hosts and {config.optim.accumulation_steps} "
                     "accumulation steps.")

  init = functools.partial(create_state, model, tx, seq_len=seq_len)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  state_sharding = sharding.state_shardings(mesh, abstract)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)

  iterator = data.train_iterator(config.data, tokenizer, data_dir,
                                 batch_size=global_batch // jax.process_count(),
                                 seed=config.seed, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 config.train.keep_checkpoints)
  meta = checkpoint.meta_for(config, tokenizer.serialized())
  restored = ckpt.restore_latest(abstract)
  if restored is None:
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
  else:
    check_compatible(restored.meta, config, workdir)
    state = restored.state
    iterator.set_state(restored.data_state)
    logging.info("Resumed from step %d.", restored.step)

  replicated = sharding.replicated(mesh)
  train_step = jax.jit(make_train_step(model, tx, config),
                       in_shardings=(state_sharding, sharding.batch_sharding(mesh), replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, tuple(config.train.eval_fractions)),
                      in_shardings=(state_sharding.params, sharding.batch_sharding(mesh)),
                      out_shardings=replicated)
  heldout = [sharding.global_batch(mesh, b) for b in data.heldout_batches(
      config.data, tokenizer, data_dir, batch_size=global_batch // jax.process_count(),
      num_batches=config.train.eval_batches)]

  writer = MetricWriter(workdir)
  flops_per_step = flops.train_flops_per_token(config.model, seq_len) * global_batch * seq_len
  peak = flops.peak_flops_per_device()
  base_rng = jax.random.PRNGKey(config.seed + 1)
  stop = _StopRequest()
  step = int(state.step)
  last = {}
  tick, tick_step = time.perf_counter(), step
  try:
    while step < num_steps:
      batch = sharding.global_batch(mesh, next(iterator))
      state, metrics = train_step(state, batch, base_rng)
      step += 1
      if step % config.train.log_every == 0 or step == num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - tick
        metrics["tokens_per_s"] = (step - tick_step) * global_batch * seq_len / elapsed
        if peak:
          metrics["mfu"] = (step - tick_step) * flops_per_step / elapsed / (peak * jax.device_count())
        writer.write(step, metrics)
        last.update(metrics)
        tick, tick_step = time.perf_counter(), step
      if heldout and (step % config.train.eval_every == 0 or step == num_steps):
        totals = [jax.device_get(eval_step(state.params, b)) for b in heldout]
        evals = {k: float(np.mean([t[k] for t in totals])) for k in totals[0]}
        writer.write(step, evals, prefix="heldout")
        last.update({f"heldout/{k}": v for k, v in evals.items()})
      if step % config.train.checkpoint_every == 0 or step == num_steps or stop.requested:
        ckpt.save(step, state, iterator.get_state(), meta, force=True)
      if stop.requested:
        logging.warning("Stopped at step %d after a signal; rerun the command to resume.", step)
        break
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
    stop.restore()
  return last
