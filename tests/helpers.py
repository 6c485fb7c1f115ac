"""Helpers shared by the test modules."""
import functools
import glob
import json
import os
import shutil
import sysconfig

import ml_collections

from asarm_jax.config_base import base_config, from_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
