"""Config validation before anything runs or is written: :func:`validate_config`."""
from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from asarm_jax import optim, sharding
from asarm_jax.data import builders
from asarm_jax.sampling import METHODS


def _at_least(config: ml_collections.ConfigDict, key: str, low: int) -> None:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{key}={value!r}: expected an int >= {low}.")


def _in_unit_interval(key: str, value: Any, items: tuple) -> None:
  if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1
         for x in items):
    raise ValueError(f"{key}={value!r}: expected numbers in [0, 1].")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` with a one-line message naming the first key ``config`` cannot run
  with (shapes that do not fit, values out of range, unknown names); returns None otherwise."""
  for key in ("model.num_layers", "model.d_model", "model.num_heads", "model.d_ff",
              "model.vocab_size", "model.max_len", "data.seq_len", "train.batch_size",
              "train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
              "train.keep_checkpoints", "optim.accumulation_steps",
              "optim.max_consecutive_nonfinite", "sample.k"):
    _at_least(config, key, 1)
  for key in ("train.eval_batches", "optim.warmup_steps", "sample.num_examples"):
    _at_least(config, key, 0)

  model, data, train = config.model, config.data, config.train
  if model.d_model % model.num_heads:
    raise ValueError(f"model.num_heads={model.num_heads} does not divide "
                     f"model.d_model={model.d_model}.")
  if (model.d_model // model.num_heads) % 2:
    raise ValueError(f"model.num_heads={model.num_heads} gives an odd head size "
                     f"{model.d_model // model.num_heads} (model.d_model={model.d_model}); "
                     "RoPE needs an even one.")
  if data.seq_len > model.max_len:
    raise ValueError(f"data.seq_len={data.seq_len} exceeds model.max_len={model.max_len}.")
  if model.vocab_size != data.vocab_size:
    raise ValueError(f"model.vocab_size={model.vocab_size} differs from "
                     f"data.vocab_size={data.vocab_size} (the tokenizer's size).")
  if not 0 <= model.num_special_tokens < model.vocab_size:
    raise ValueError(f"model.num_special_tokens={model.num_special_tokens}: expected "
                     f"0 <= it < model.vocab_size={model.vocab_size}.")
  if data.name not in builders.BUILDERS:
    raise ValueError(f"data.name={data.name!r}: expected one of {sorted(builders.BUILDERS)}.")
  if not 0 < data.heldout_fraction < 1:
    raise ValueError(f"data.heldout_fraction={data.heldout_fraction!r}: expected a number in "
                     "(0, 1).")

  fraction_range = tuple(config.objective.fraction_range)
  if len(fraction_range) != 2:
    raise ValueError(f"objective.fraction_range={fraction_range!r}: expected (lo, hi).")
  _in_unit_interval("objective.fraction_range", fraction_range, fraction_range)
  if fraction_range[0] > fraction_range[1]:
    raise ValueError(f"objective.fraction_range={fraction_range!r}: lo > hi.")
  eval_fractions = tuple(train.eval_fractions)
  _in_unit_interval("train.eval_fractions", eval_fractions, eval_fractions)
  mask_fraction = config.sample.example_mask_fraction
  _in_unit_interval("sample.example_mask_fraction", mask_fraction, (mask_fraction,))
  nan_steps = train.get("debug_nan_steps", ())
  if any(isinstance(s, bool) or not isinstance(s, int) for s in nan_steps):
    raise ValueError(f"train.debug_nan_steps={nan_steps!r}: expected a tuple of ints.")

  if config.optim.schedule not in optim.SCHEDULES:
    raise ValueError(f"optim.schedule={config.optim.schedule!r}: expected one of "
                     f"{optim.SCHEDULES}.")
  for key in ("optim.learning_rate", "optim.grad_clip", "sample.temperature"):
    value = _get(config, key)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
      raise ValueError(f"{key}={value!r}: expected a finite number > 0.")
  if config.sample.method not in METHODS:
    raise ValueError(f"sample.method={config.sample.method!r}: expected one of {METHODS}.")

  mesh = sharding.make_mesh(config.mesh)
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  divisor = config.optim.accumulation_steps * math.lcm(data_parallel, jax.process_count())
  if train.batch_size % divisor:
    raise ValueError(f"train.batch_size={train.batch_size} is not divisible by "
                     f"optim.accumulation_steps={config.optim.accumulation_steps} x "
                     f"{math.lcm(data_parallel, jax.process_count())} data-parallel devices "
                     f"(= {divisor}).")
