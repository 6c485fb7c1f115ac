"""Config validation before anything runs or is written: :func:`validate_config` and
:func:`check_overrides`. Every error is a one-line ``ValueError`` naming the key and what it
expects."""
from __future__ import annotations

import math
import os
from typing import Any

import jax
import ml_collections

from asarm_jax import models, objectives, optim, sharding
from asarm_jax.data import builders
from asarm_jax.sampling.spec import SamplerSpec

MODES = ("train", "sample", "eval")

_POSITIVE_INTS = (
    "model.num_layers", "model.d_model", "model.num_heads", "model.d_ff", "model.vocab_size",
    "model.max_len", "data.seq_len", "data.vocab_size", "data.tokenizer_max_chars",
    "train.batch_size", "train.num_steps", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "optim.accumulation_steps",
    "optim.max_consecutive_nonfinite")
_NON_NEGATIVE_INTS = ("seed", "data.max_files", "train.eval_batches", "optim.warmup_steps",
                      "sample.num_examples", "train.stop_step")
_POSITIVE_NUMBERS = ("optim.learning_rate", "optim.grad_clip")
_NON_NEGATIVE_NUMBERS = ("train.time_limit_s",)  # 0 is no limit
_STRING_TUPLES = ("data.source_dirs", "data.exclude_patterns", "data.extensions")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(config: ml_collections.ConfigDict, key: str, low: int) -> None:
  value = _get(config, key)
  if not _is_int(value) or value < low:
    raise ValueError(f"{key}={value!r}: expected an int >= {low}.")


def _finite(config: ml_collections.ConfigDict, key: str, allow_zero: bool) -> None:
  value = _get(config, key)
  if not _is_number(value) or not math.isfinite(value) or value < 0 or (
      value == 0 and not allow_zero):
    raise ValueError(f"{key}={value!r}: expected a finite number "
                     f"{'>= 0' if allow_zero else '> 0'}.")


def _in_unit_interval(key: str, value: Any, items: tuple) -> None:
  if any(not _is_number(x) or not 0 <= x <= 1 for x in items):
    raise ValueError(f"{key}={value!r}: expected numbers in [0, 1].")


def _one_of(key: str, value: Any, allowed: tuple | list) -> None:
  if value not in allowed:
    raise ValueError(f"{key}={value!r}: expected one of {tuple(allowed)}.")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  for key in _POSITIVE_INTS:
    _at_least(config, key, 1)
  for key in _NON_NEGATIVE_INTS:
    _at_least(config, key, 0)
  for key in _POSITIVE_NUMBERS:
    _finite(config, key, allow_zero=False)
  for key in _NON_NEGATIVE_NUMBERS:
    _finite(config, key, allow_zero=True)


def _check_model(config: ml_collections.ConfigDict) -> None:
  model, data = config.model, config.data
  if model.d_model % model.num_heads:
    raise ValueError(f"model.num_heads={model.num_heads} does not divide "
                     f"model.d_model={model.d_model}.")
  _one_of("model.arch", model.arch, models.ARCHS)
  if model.arch == "two_stream" and (model.d_model // model.num_heads) % 2:
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


def _check_data(data: ml_collections.ConfigDict) -> None:
  _one_of("data.name", data.name, sorted(builders.BUILDERS))
  if not _is_number(data.heldout_fraction) or not 0 < data.heldout_fraction < 1:
    raise ValueError(f"data.heldout_fraction={data.heldout_fraction!r}: expected a number in "
                     "(0, 1).")
  for key in _STRING_TUPLES:
    value = data[key.split(".")[1]]
    if not isinstance(value, (tuple, list)) or not all(isinstance(x, str) for x in value):
      raise ValueError(f"{key}={value!r}: expected a tuple of strings, e.g. ('/path/a',).")


def _check_source_dirs(data: ml_collections.ConfigDict) -> None:
  if not data.source_dirs and data.name != "python_code":
    raise ValueError(f"data.source_dirs=(): data.name={data.name!r} needs at least one folder, "
                     "e.g. --config.data.source_dirs=\"('/path/to/texts',)\".")
  for folder in data.source_dirs:
    if not os.path.isdir(folder):
      raise ValueError(f"data.source_dirs: {folder!r} is not a folder; expected existing "
                       "folders.")


def _check_fractions(config: ml_collections.ConfigDict) -> None:
  fraction_range = tuple(config.objective.fraction_range)
  if len(fraction_range) != 2:
    raise ValueError(f"objective.fraction_range={fraction_range!r}: expected (lo, hi).")
  _in_unit_interval("objective.fraction_range", fraction_range, fraction_range)
  if fraction_range[0] > fraction_range[1]:
    raise ValueError(f"objective.fraction_range={fraction_range!r}: lo > hi; expected "
                     "lo <= hi.")
  eval_fractions = tuple(config.train.eval_fractions)
  _in_unit_interval("train.eval_fractions", eval_fractions, eval_fractions)
  mask_fraction = config.sample.example_mask_fraction
  _in_unit_interval("sample.example_mask_fraction", mask_fraction, (mask_fraction,))
  nan_steps = config.train.debug_nan_steps
  if any(not _is_int(s) for s in nan_steps):
    raise ValueError(f"train.debug_nan_steps={nan_steps!r}: expected a tuple of ints.")


def _check_sampler(sample: ml_collections.ConfigDict) -> None:
  """The sampler keys of ``config.sample``, checked by :class:`SamplerSpec` itself; its message
  ``name=value; expected ...`` becomes ``sample.name=value: expected ...``."""
  try:
    SamplerSpec.from_config(sample)
  except ValueError as e:
    raise ValueError("sample." + str(e).replace("; expected", ": expected", 1)) from None


def _check_deterministic(config: ml_collections.ConfigDict) -> None:
  """``sample.deterministic``: a bool, and the kernels it needs must fit the model."""
  value = config.sample.deterministic
  if not isinstance(value, bool):
    raise ValueError(f"sample.deterministic={value!r}: expected True or False.")
  if not value:
    return
  if config.model.get("arch", "two_stream") != "two_stream":
    raise ValueError(f"sample.deterministic=True: needs model.arch='two_stream' (XLNet's "
                     f"relative attention has no batch-invariant kernel).")
  for key in ("model.d_model", "model.d_ff", "model.vocab_size"):
    if _get(config, key) % 16:
      raise ValueError(f"{key}={_get(config, key)}: sample.deterministic=True needs a multiple "
                       "of 16 (the batch-invariant matmul's tiles).")


def _check_prompt_file(sample: ml_collections.ConfigDict) -> None:
  if sample.prompt_file and not os.path.isfile(sample.prompt_file):
    raise ValueError(f"sample.prompt_file={sample.prompt_file!r}: no such file; expected a "
                     "file of prompts separated by lines of ---.")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
  mesh = sharding.make_mesh(config.mesh)
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  divisor = config.optim.accumulation_steps * math.lcm(data_parallel, jax.process_count())
  if config.train.batch_size % divisor:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by "
                     f"optim.accumulation_steps={config.optim.accumulation_steps} x "
                     f"{math.lcm(data_parallel, jax.process_count())} data-parallel devices "
                     f"(= {divisor}).")


def validate_config(config: ml_collections.ConfigDict, mode: str = "train") -> None:
  """Raises ``ValueError`` with a one-line message naming the first key ``config`` cannot run
  with in ``mode`` (one of :data:`MODES`): shapes that do not fit, values out of range, unknown
  names, no prompt (sample). Looks at the config only; :func:`check_inputs` looks at files."""
  _one_of("--mode", mode, MODES)
  _check_numbers(config)
  _check_model(config)
  _check_data(config.data)
  _check_fractions(config)
  _one_of("optim.schedule", config.optim.schedule, optim.SCHEDULES)
  _one_of("objective.kind", config.objective.kind, objectives.KINDS)
  _check_sampler(config.sample)
  _check_deterministic(config)
  if mode == "sample" and not (config.sample.prompt or config.sample.prompt_file):
    raise ValueError("sample.prompt='': expected text with <mask:N> spans (or set "
                     "sample.prompt_file=PATH).")
  _check_mesh(config)


def _check_init_from(path: str) -> None:
  is_workdir = os.path.isdir(os.path.join(path, "checkpoints"))
  is_hf = all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "spiece.model"))
  if not (is_workdir or is_hf):
    raise ValueError(f"init_from={path!r}: expected a workdir (with checkpoints/) or a Hugging "
                     "Face XLNet folder (config.json, spiece.model and the weights).")


def check_inputs(config: ml_collections.ConfigDict, mode: str = "train") -> None:
  """Raises ``ValueError`` (one line, naming the key) if a file ``mode`` reads is missing: the
  source folders (train, eval), the weights to start from (train) or the prompt file
  (sample)."""
  if mode == "sample":
    _check_prompt_file(config.sample)
  else:
    _check_source_dirs(config.data)
  if mode == "train" and config.init_from:
    _check_init_from(config.init_from)


def _linked(config: ml_collections.ConfigDict, a: str, b: str) -> bool:
  """Whether keys ``a`` and ``b`` hold one shared field (a ``FieldReference``)."""
  def ref(key):
    *path, name = key.split(".")
    parent = config
    for part in path:
      parent = parent[part]
    return parent.get_ref(name) if isinstance(parent, ml_collections.ConfigDict) else None
  try:
    return ref(a) is ref(b)
  except (AttributeError, KeyError, TypeError):
    return False


def check_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Raises ``ValueError`` if two command-line overrides set one linked field to different
  values (``model.max_len`` follows ``data.seq_len``, ``model.vocab_size`` follows
  ``data.vocab_size``): the later one would silently rewrite the earlier one."""
  for key, value in overrides.items():
    if _get(config, key) == value:
      continue
    other = next((k for k in overrides if k != key and _linked(config, key, k)), None)
    partner = f"--config.{other}={overrides[other]!r}" if other else "another override"
    raise ValueError(f"--config.{key}={value!r} conflicts with {partner}: the two keys are one "
                     "value by default; give one of them, or the same value to both.")
