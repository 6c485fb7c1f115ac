"""Helpers shared by the test modules."""
import functools
import importlib.util
import os

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(overrides: dict) -> ml_collections.ConfigDict:
  """configs/demo.py with ``overrides`` applied, as ``--config.KEY=VALUE`` would."""
  spec = importlib.util.spec_from_file_location("demo_config", f"{ROOT}/configs/demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    *path, name = key.split(".")
    functools.reduce(lambda c, k: c[k], path, config)[name] = value
  return config
