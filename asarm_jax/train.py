"""Training: the step (one sharded ``jax.jit`` call) and the loop (exact resume from Orbax
checkpoints, held-out evaluation, saves).

The train state and its construction are :mod:`asarm_jax.state`; fine-tuning starts
(``config.init_from``) are :mod:`asarm_jax.init_from`; the console, ``metrics.jsonl`` and the
stop on a signal are :mod:`asarm_jax.run_io`.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from asarm_jax import (checkpoint, config_base, data, flops, init_from, models, objectives, optim,
                       run_io, sharding, validation, workdir_lock)
from asarm_jax.metric_writer import MetricWriter
# init_params and create_state are also this module's names (train.create_state, as before).
from asarm_jax.state import TrainState, abstract_state, create_state, init_params


def loss_fn(model: nn.Module, objective: ml_collections.ConfigDict) -> Callable:
  """``(params, tokens_BxL, rng) -> (loss, metrics)`` with the configured objective."""
  return objectives.from_config(model, objective)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """``(state, tokens_BxL, base_rng) -> (state, metrics)``; gradient accumulation via scan.

  ``config.train.debug_nan_steps`` (a test hook, default none) makes the loss of those steps
  (counted from 1, as logged) NaN, to exercise the non-finite guard of :mod:`asarm_jax.optim`;
  the step compiles that code only when the hook is set.
  """
  compute_loss = _with_nan_steps(loss_fn(model, config.objective),
                                 tuple(config.train.debug_nan_steps))
  accumulation = config.optim.accumulation_steps
  schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)

  def train_step(state: TrainState, tokens_BxL: jax.Array, base_rng: jax.Array):
    rng = jax.random.fold_in(base_rng, state.step)
    micro_AxMxL = tokens_BxL.reshape((accumulation, -1) + tokens_BxL.shape[1:])
    def grads_and_metrics(micro_MxL, micro_rng):
      loss = lambda params: compute_loss(params, micro_MxL, micro_rng, state.step)
      (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
      return grads, metrics

    def accumulate(total, inputs):
      i, micro_MxL = inputs
      out = grads_and_metrics(micro_MxL, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, total, out), None

    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   jax.eval_shape(grads_and_metrics, micro_AxMxL[0], rng))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accumulation), micro_AxMxL))
    grads, metrics = jax.tree_util.tree_map(lambda x: x / accumulation, (grads, metrics))
    # A non-finite loss skips the update even where its gradients happen to be finite.
    grads = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(metrics["loss"]), g, jnp.nan),
                                   grads)
    with jax.named_scope("optimizer"):  # a scope for profiles (benchmarks/profile_step.py)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step),
                   nonfinite_skipped=opt_state.skipped, nonfinite_in_a_row=opt_state.in_a_row)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def _with_nan_steps(compute_loss: Callable, steps: tuple[int, ...]) -> Callable:
  """``(params, tokens_BxL, rng, step) -> (loss, metrics)``: ``compute_loss``, whose loss is NaN
  at ``steps`` (counted from 1; the test hook ``train.debug_nan_steps``). Without steps, the
  step is not read and nothing is added to the compiled step."""
  if not steps:
    return lambda params, tokens_BxL, rng, step: compute_loss(params, tokens_BxL, rng)
  nan_steps = jnp.asarray(steps, jnp.int32)

  def poisoned(params, tokens_BxL, rng, step):
    loss, metrics = compute_loss(params, tokens_BxL, rng)
    poison = jnp.where(jnp.isin(step + 1, nan_steps), jnp.nan, 1.0)
    return loss * poison, dict(metrics, loss=loss * poison)
  return poisoned


def gathered_data_state(iterator: Any) -> dict:
  """Every process's data position, ``{"processes": [state of process 0, 1, ...]}`` (each
  process reads its own shard, so each has its own position; states are dicts of equally long
  int lists, the same keys and lengths on every process)."""
  state = iterator.get_state()
  if jax.process_count() == 1:
    return {"processes": [state]}
  keys = sorted(state)
  rows = multihost_utils.process_allgather(np.asarray([state[k] for k in keys], np.int32))
  return {"processes": [{k: v.tolist() for k, v in zip(keys, row)} for row in np.asarray(rows)]}


def own_data_state(saved: dict) -> dict:
  """This process's position from :func:`gathered_data_state`'s record. After a change of the
  process count the shards differ, so the data order cannot continue exactly: process ``i``
  takes record ``i`` modulo the saved count, with a warning."""
  states = saved["processes"]
  if len(states) != jax.process_count():
    logging.warning("The checkpoint holds the data positions of %d process(es), this run has %d: "
                    "the data order does not continue exactly.", len(states), jax.process_count())
  return states[jax.process_index() % len(states)]


def check_compatible(meta: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a checkpoint written with a different model or data config."""
  # Keys added since the checkpoint was written take their defaults (config_base.complete).
  saved = config_base.complete(meta["config"])
  for block in ("model", "data"):
    saved_block = json.loads(saved[block].to_json_best_effort())
    current = json.loads(config[block].to_json_best_effort())
    if saved_block != current:
      diff = sorted(k for k in set(saved_block) | set(current)
                    if saved_block.get(k) != current.get(k))
      raise ValueError(f"{workdir} holds a checkpoint from a different config.{block} "
                       f"(differs in {', '.join(diff)}); use another --workdir.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir``, resuming from its newest readable checkpoint.

  The config, and the compatibility of a checkpoint already in ``workdir``, are checked before
  anything is written; then the run holds the workdir's lock (:mod:`asarm_jax.workdir_lock`:
  raises ``WorkdirBusy`` while another command writes it). SIGTERM/SIGINT save a checkpoint at
  the next step boundary and return. Returns the last logged metrics.
  """
  validation.validate_config(config)
  validation.check_inputs(config)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoint_dir):
    existing = checkpoint.Checkpointer(checkpoint_dir, max_to_keep=None)
    meta = existing.read_meta()
    existing.close()
    if meta is not None:
      check_compatible(meta, config, workdir)
  with workdir_lock.hold(workdir, "training"):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """:func:`train_and_evaluate` once its checks have passed."""
  os.makedirs(workdir, exist_ok=True)
  logging.info("seed %d, PRNG implementation %s", config.seed, jax.config.jax_default_prng_impl)
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  source = init_from.source(config)
  tokenizer = data.prepare(config.data, data_dir, None if source is None else source[0])
  if tokenizer.vocab_size != config.model.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
                     f"{tokenizer.vocab_size} pieces; set data.vocab_size and model.vocab_size equal.")

  mesh = sharding.make_mesh(config.mesh)
  model = models.build(config.model)
  num_steps = config.train.num_steps
  tx = optim.make_optimizer(config.optim, num_steps)
  seq_len = config.data.seq_len
  global_batch = config.train.batch_size
  local_batch = global_batch // jax.process_count()

  abstract, state_sharding = abstract_state(model, tx, seq_len, mesh, config.mesh.rules)

  iterator = data.train_iterator(config.data, tokenizer, data_dir, batch_size=local_batch,
                                 seed=config.seed, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())
  replicated = sharding.replicated(mesh)
  batched = sharding.batch_sharding(mesh)
  train_step = jax.jit(run_io.with_stop_vote(make_train_step(model, tx, config)),
                       in_shardings=(state_sharding, batched, replicated, batched),
                       out_shardings=(state_sharding, replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(objectives.heldout_step(model, config.objective,
                                              tuple(config.train.eval_fractions)),
                      in_shardings=(state_sharding.params, batched), out_shardings=replicated)
  heldout = [sharding.global_batch(mesh, b) for b in data.heldout_batches(
      config.data, tokenizer, data_dir, batch_size=local_batch,
      num_batches=config.train.eval_batches)]
  meta = checkpoint.meta_for(config, tokenizer.serialized())
  flops_per_step = flops.train_flops_per_token(config.model, seq_len) * global_batch * seq_len
  peak = flops.peak_flops_per_device()
  base_rng = jax.random.PRNGKey(config.seed + 1)

  with contextlib.ExitStack() as cleanup:
    # The mesh in context: the fused attention kernel runs per shard under it (shard_map).
    cleanup.enter_context(jax.set_mesh(mesh))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   config.train.keep_checkpoints)
    cleanup.callback(ckpt.close)
    cleanup.callback(ckpt.wait)  # runs before close: pending saves complete
    restored = ckpt.resume(abstract, os.path.join(workdir, "checkpoints_corrupt"))
    if restored is None and source is not None:
      state = init_from.start_state(source[1](), tx, abstract, state_sharding, config.init_from)
      logging.info("Starting from the weights of %s.", config.init_from)
    elif restored is None:
      state = jax.jit(lambda rng: create_state(model, tx, rng, seq_len),
                      out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
    else:
      state = restored.state
      iterator.set_state(own_data_state(restored.data_state))
      logging.info("Resumed from step %d.", restored.step)
    start = int(state.step)
    # purge_step: TensorBoard hides the events of steps after the restored one (a killed run's).
    writer = cleanup.enter_context(contextlib.closing(
        MetricWriter(workdir, purge_step=start + 1 if start else None)))
    trace = cleanup.enter_context(contextlib.closing(
        run_io.Trace(os.path.join(workdir, "metrics.jsonl"), start)))
    progress = cleanup.enter_context(contextlib.closing(run_io.Progress(start, num_steps)))
    stop = run_io.StopRequest()  # before this point there is nothing to save: signals act as usual
    cleanup.callback(stop.restore)

    step = saved_step = start
    last, skipped = {}, int(state.opt_state.skipped)
    tick, tick_step = time.perf_counter(), step
    agreed_stop = None  # the previous step's vote: read one step late, so dispatch runs ahead
    time_limit, clock = config.train.time_limit_s, None
    # train.stop_step: a run in phases by step (a later phase with other overrides resumes it)
    # on the one schedule of num_steps.
    end = min(num_steps, config.train.stop_step or num_steps)
    while step < end:
      batch = sharding.global_batch(mesh, next(iterator))
      votes = sharding.global_batch(mesh, np.full(local_batch, stop.requested))
      state, metrics, vote = train_step(state, batch, base_rng, votes)
      step += 1
      # Equal training time for runs whose compilation differs (a warm compilation cache, say):
      # the clock starts once the first step has compiled and been dispatched.
      if clock is None:
        clock = time.perf_counter()
      elif time_limit and not stop.requested and time.perf_counter() - clock >= time_limit:
        logging.info("train.time_limit_s=%g reached at step %d: saving and stopping.",
                     time_limit, step)
        stop.requested = True
      progress.advance(step)
      logged = step % config.train.log_every == 0 or step == end
      saving = step % config.train.checkpoint_every == 0 or step == end
      if logged:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        trace.write(step, metrics)
        if metrics["nonfinite_skipped"] > skipped:
          progress.note(logging.WARNING, "Skipped %d update(s) with a non-finite loss or gradient "
                        "by step %d (%d in total).", metrics["nonfinite_skipped"] - skipped, step,
                        metrics["nonfinite_skipped"])
          skipped = metrics["nonfinite_skipped"]
        elapsed = time.perf_counter() - tick
        metrics["tokens_per_s"] = (step - tick_step) * global_batch * seq_len / elapsed
        if peak:
          metrics["mfu"] = (step - tick_step) * flops_per_step / elapsed / (peak * jax.device_count())
        writer.write(step, metrics)
        progress.log(step, metrics)
        last.update(metrics)
        tick, tick_step = time.perf_counter(), step
        _report_saved(ckpt, progress, block=False)
      if logged or saving:
        _check_guard(state, step, config, ckpt)
      if heldout and (step % config.train.eval_every == 0 or step == end):
        totals = [jax.device_get(eval_step(state.params, b)) for b in heldout]
        evals = {k: float(np.mean([t[k] for t in totals])) for k in totals[0]}
        writer.write(step, evals, prefix="heldout")
        progress.note(logging.INFO, "[heldout] step %d | %s", step, run_io.summary(evals))
        last.update({f"heldout/{k}": v for k, v in evals.items()})
      if saving:
        _report_saved(ckpt, progress, block=True)
        ckpt.save(step, state, gathered_data_state(iterator), meta, force=True)
        saved_step = step
      if agreed_stop is not None and bool(agreed_stop):
        break
      agreed_stop = vote
    if step != saved_step:  # stopped by a signal
      _check_guard(state, step, config, ckpt)
      _report_saved(ckpt, progress, block=True)
      ckpt.save(step, state, gathered_data_state(iterator), meta, force=True)
    _report_saved(ckpt, progress, block=True)
    progress.close()
    if step == end < num_steps:
      logging.info("Stopped at train.stop_step=%d; rerun with a later train.stop_step (0: "
                   "train.num_steps) to go on.", step)
    elif step < num_steps:
      logging.warning("Stopped at step %d after a signal or train.time_limit_s; rerun the "
                      "command to resume.", step)
    elif jax.process_index() == 0:
      logging.info("done: %d steps in %s | workdir %s | checkpoint step %d | metrics %s | %s",
                   step - start, run_io.duration(progress.elapsed()), workdir, step, trace.path,
                   run_io.tensorboard_command(writer.logdir))
  return dict(last, step=step, completed=step >= num_steps)


def _report_saved(ckpt: checkpoint.Checkpointer, progress: run_io.Progress, block: bool) -> None:
  """Confirms the pending save ("saved step N"); without ``block`` only once it has finished
  (and only with one process, so that all processes wait at the same points). Raises
  :class:`checkpoint.SaveError` if it failed."""
  if ckpt.pending is None or (not block and (jax.process_count() > 1 or not ckpt.committed())):
    return
  saved = ckpt.wait()
  progress.note(logging.INFO, "saved step %d", saved)


def _check_guard(state: TrainState, step: int, config: ml_collections.ConfigDict,
                 ckpt: checkpoint.Checkpointer) -> None:
  """Raises ``FloatingPointError`` once the optimizer's non-finite guard has tripped; called
  before every save, so no checkpoint ever holds the state of a run that diverged."""
  if not bool(jax.device_get(state.opt_state.tripped)):
    return
  ckpt.wait()
  raise FloatingPointError(
      f"{config.optim.max_consecutive_nonfinite} updates in a row had a non-finite loss or "
      f"gradient (optim.max_consecutive_nonfinite) by step {step}; stopped without saving. The "
      f"last checkpoint (step {ckpt.latest_step()}) is intact: lower optim.learning_rate or "
      "check the data, then rerun to resume from it.")
