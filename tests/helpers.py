"""Helpers shared by the test modules."""
import contextlib
import functools
import glob
import json
import os
import shutil
import sysconfig

import jax
import ml_collections
import pytest
from jax._src import compilation_cache as _compilation_cache

from asarm_jax.config_base import base_config, from_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(**keys) -> ml_collections.ConfigDict:
  """The config base's ``model`` block with ``keys`` changed (every other key its default)."""
  config = base_config().model
  config.update(keys)
  return config


def demo_config(overrides: dict) -> ml_collections.ConfigDict:
  """configs/demo.py with ``overrides`` applied, as ``--config.KEY=VALUE`` would."""
  config = from_file(f"{ROOT}/configs/demo.py")
  for key, value in overrides.items():
    *path, name = key.split(".")
    functools.reduce(lambda c, k: c[k], path, config)[name] = value
  return config


def tiny_config(batch_size: int = 4) -> ml_collections.ConfigDict:
  """4 heads, d_model 32, d_ff 64, vocab 40 (every sharded dimension divides by 4), 16 tokens."""
  c = base_config()
  c.data.vocab_size = 40
  c.data.seq_len = 16
  c.model.update(num_layers=2, d_model=32, num_heads=4, d_ff=64)
  c.optim.update(warmup_steps=2, accumulation_steps=2)
  c.train.update(batch_size=batch_size, num_steps=6)
  return c


def copy_stdlib_files(dest: str, count: int = 30) -> None:
  """The first ``count`` ASCII stdlib modules of 1-20 kB, copied into ``dest`` (created)."""
  os.makedirs(dest)
  copied = 0
  for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
    with open(path, "rb") as f:
      text = f.read()
    if 1000 < len(text) < 20000 and text.isascii() and copied < count:
      shutil.copy(path, dest)
      copied += 1


def read_trace(workdir: str) -> list[dict]:
  """The complete lines of ``workdir/metrics.jsonl`` (a torn last line is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")[:-1]
  return [json.loads(line) for line in lines]


# Every compile is cached, however short (the defaults skip compiles under 1 s, most of ours).
_CACHE_SETTINGS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
                   "jax_persistent_cache_min_entry_size_bytes": -1}


def compilation_cache_env(path: str) -> dict[str, str]:
  """Environment of a subprocess that reads and fills the persistent compilation cache ``path``
  (runs of the same computation then compile it once; the executables are the same)."""
  return {"JAX_COMPILATION_CACHE_DIR": path,
          **{name.upper(): str(value) for name, value in _CACHE_SETTINGS.items()}}


def subprocess_env(**changes: str) -> dict[str, str]:
  """``os.environ`` for a subprocess on CPU, with ``changes``, that shares this process's
  persistent compilation cache if it has one."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **changes)
  if "XLA_FLAGS" in changes:  # keep the session's flags (tests/conftest.py) too
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {changes['XLA_FLAGS']}".strip()
  if jax.config.jax_compilation_cache_dir:
    env.update(compilation_cache_env(jax.config.jax_compilation_cache_dir))
  return env


@contextlib.contextmanager
def compilation_cache(path: str):
  """This process reads and fills the persistent compilation cache ``path`` inside the block;
  the previous settings are back after it."""
  settings = dict(_CACHE_SETTINGS, jax_compilation_cache_dir=path)
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  _compilation_cache.reset_cache()  # (the cache is set up once, at the first compile)
  try:
    yield path
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    _compilation_cache.reset_cache()


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """An autouse fixture for a test module to import: its in-process compiles go through one
  persistent cache per test worker (:func:`compilation_cache`); yields the cache's path, for
  subprocesses (:func:`compilation_cache_env`)."""
  with compilation_cache(str(tmp_path_factory.getbasetemp() / "jax_cache")) as path:
    yield path


class CharTokenizer:
  """A fake tokenizer: ids are code points; ``<mask>`` is 3, padding 0."""
  mask_id, pad_id = 3, 0

  def encode(self, text: str) -> list[int]:
    return [ord(c) for c in text]

  def decode(self, ids) -> str:
    return "".join(chr(i) for i in ids)


def equations(jaxpr, skip: str = ""):
  """Every equation of ``jaxpr`` and of its sub-jaxprs (loops, conds, calls), but not inside
  equations of the primitive ``skip`` (e.g. ``"pallas_call"``: a kernel's body)."""
  for eqn in jaxpr.eqns:
    yield eqn
    if eqn.primitive.name == skip:
      continue
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr, or a Jaxpr
        if hasattr(inner, "eqns"):
          yield from equations(inner, skip)
