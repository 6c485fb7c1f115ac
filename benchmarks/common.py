"""Setup shared by the benchmarks: configs, the real train step and the cached sampling call."""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asarm_jax import forward, inference, models, optim, sharding, state, train
from asarm_jax.config_base import from_file


def config_of(name: str, **model):
  """configs/NAME.py with the ``model`` keys that are not None replaced."""
  config = from_file(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py"))
  config.model.update({k: v for k, v in model.items() if v is not None})
  return config


def model_config(name: str, **model) -> dict:
  """The ``config`` field of a record: the config file and the model keys given (but those
  None or empty)."""
  return {"file": f"configs/{name}.py",
          **{f"model.{k}": v for k, v in model.items() if v is not None and v != ""}}


def random_model(name: str, **model) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """``(model, params, config)``: configs/NAME.py (``model`` keys as in :func:`config_of`), its
  model built with random weights."""
  config = config_of(name, **model)
  built = models.build(config.model)
  return built, state.init_params(built, jax.random.PRNGKey(0), config.data.seq_len), config


def load(workdir: str, config: str) -> tuple[inference.Loaded, dict]:
  """The newest checkpoint of ``workdir``, or configs/CONFIG.py with random weights (no
  tokenizer, step 0): exactly one of the two; with the ``config`` field of its records."""
  if bool(workdir) == bool(config):
    raise ValueError("give one of --workdir and --config")
  if workdir:
    loaded = inference.load(workdir)
    return loaded, {"workdir": workdir, "step": int(loaded.step)}
  model, params, settings = random_model(config)
  return inference.Loaded(model, params, None, settings, 0), model_config(config)


def train_setup(name: str, batch_size: int = 0, **model):
  """``(config, jitted step, sharded state, tokens, rng)`` for configs/NAME.py (random tokens)."""
  config = config_of(name, **model)
  if batch_size:
    config.train.batch_size = batch_size
  mesh = sharding.make_mesh(config.mesh)
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  seq_len, batch = config.data.seq_len, config.train.batch_size
  state = jax.jit(lambda r: train.create_state(model, tx, r, seq_len))(jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(mesh, state, config.mesh.rules)
  state = jax.device_put(state, shardings)
  step = jax.jit(train.make_train_step(model, tx, config),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 donate_argnums=0)
  tokens = np.random.default_rng(0).integers(4, config.model.vocab_size, (batch, seq_len),
                                             dtype=np.int32)
  tokens = sharding.global_batch(mesh, tokens)
  return config, step, state, tokens, jax.random.PRNGKey(1)


def call_loop(model, batch: int, rows: int, calls: int, slots: int = 512):
  """``(params, cache) -> checksum``: ``calls`` cached calls of 1 content + ``rows`` query rows."""
  def loop(params, cache):
    params = models.compute_params(model, params)  # as the samplers' loop does
    def body(i, carry):
      cache, tokens_rank, total = carry
      decoded = 256 + i % (slots - 256 - rows)  # ranks < decoded are in the cache
      num_decoded = jnp.full((batch,), decoded, jnp.int32)
      perm = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (batch, slots))
      target = decoded + jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32), (batch, rows))
      logits, cache = forward.call(
          model, params, tokens_rank, perm, jnp.full((batch,), 128, jnp.int32), target,
          jnp.ones((batch, rows), bool), num_decoded, cache=cache,
          content_rank_BxR=num_decoded[:, None] - 1)
      token = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
      tokens_rank = jax.lax.dynamic_update_slice(tokens_rank, token[:, None], (0, decoded))
      return cache, tokens_rank, total + logits[:, 0, 0].sum()
    tokens = jnp.zeros((batch, slots), jnp.int32)
    return jax.lax.fori_loop(0, calls, body, (cache, tokens, jnp.float32(0)))[2]
  return jax.jit(loop)


def call_setup(config, batch: int, rows: int, calls: int):
  """The jitted loop and its arguments (random params, a cache with random contents)."""
  model = models.build(config.model)
  params = train.init_params(model, jax.random.PRNGKey(0), config.data.seq_len)
  cache = model.init_cache(batch, 512)
  rng = np.random.default_rng(0)
  cache = jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.1, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, cache)
  cache = cache._replace(positions_BxS=jnp.broadcast_to(jnp.arange(512, dtype=jnp.int32),
                                                          (batch, 512)))
  return call_loop(model, batch, rows, calls), (params, cache)


def ms_per_call(loop, args: tuple, calls: int, repeats: int = 3) -> float:
  """Median wall time of ``loop(*args)`` (``calls`` calls back to back) per call, in ms,
  after one untimed run that compiles it."""
  jax.block_until_ready(loop(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(loop(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times)) / calls
