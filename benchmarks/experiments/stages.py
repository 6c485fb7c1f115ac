"""A stage of an experiment: commands to run in order, and the files under RUNS it returns.

Commands are argument lists, built here for the project's entry points (training and
evaluation through ``python -m asarm_jax.main``, data preparation, benchmarks, other modules).
:func:`check` validates a command without running it: a config loads and its ``--config.*``
overrides name existing keys with values of the right type, and a benchmark's flags parse.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import site
import sysconfig
from typing import Any

PYTHON = sys.executable


@dataclasses.dataclass(frozen=True)
class Command:
  """One process: ``argv``, extra environment, and a hard stop (SIGTERM) after ``timeout_s``."""
  argv: tuple[str, ...]
  env: tuple[tuple[str, str], ...] = ()
  timeout_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """Commands run in order; ``outputs`` (globs under RUNS) are copied into RUNS/out/NAME."""
  name: str
  commands: tuple[Command, ...]
  outputs: tuple[str, ...] = ()


def overrides(values: dict[str, Any]) -> list[str]:
  """``{"train.num_steps": 40}`` -> ``["--config.train.num_steps=40"]``."""
  return [f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}"
          for key, value in values.items()]


def data_overrides(runs: str, max_files: int) -> dict[str, Any]:
  """The corpus of every experiment: this machine's standard library and site-packages,
  prepared once under RUNS/data."""
  return {"data.source_dirs": (sysconfig.get_paths()["stdlib"], site.getsitepackages()[0]),
          "data.max_files": max_files, "data.data_dir": f"{runs}/data"}


def prepare(config: str, workdir: str, values: dict[str, Any]) -> Command:
  """Builds the dataset and tokenizer of ``config`` (``launch/prepare_data.py``)."""
  return Command((PYTHON, "launch/prepare_data.py", f"--config={config}", f"--workdir={workdir}",
                  *overrides(values)))


def main(mode: str, config: str, workdir: str, values: dict[str, Any],
         timeout_s: float | None = None, memory_fraction: float | None = None) -> Command:
  """``python -m asarm_jax.main --mode=MODE`` on ``config`` with ``--config.*`` ``values``."""
  env = (("XLA_PYTHON_CLIENT_MEM_FRACTION", str(memory_fraction)),) if memory_fraction else ()
  return Command((PYTHON, "-m", "asarm_jax.main", f"--mode={mode}", f"--config={config}",
                  f"--workdir={workdir}", *overrides(values)), env, timeout_s)


def flag_text(value: Any) -> str:
  """A benchmark flag's value as :mod:`benchmarks.cli` reads it (lists comma-separated)."""
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def benchmark(name: str, runs: str, **flags: Any) -> Command:
  """``python -m benchmarks NAME --flag=value ...``, its records under RUNS/records."""
  return Command((PYTHON, "-m", "benchmarks", name,
                  *(f"--{key}={flag_text(value)}" for key, value in flags.items()),
                  f"--records_dir={runs}/records"))


def module(name: str, *args: str) -> Command:
  """``python -m NAME ARGS``."""
  return Command((PYTHON, "-m", name, *args))


def copy_tree(source: str, target: str) -> Command:
  """A copy of the folder ``source`` (e.g. a workdir to branch a training run from)."""
  return Command(("cp", "-r", source, target))


def _check_config(argv: tuple[str, ...]) -> None:
  """Parses ``--config=...`` and its ``--config.*`` overrides as absl would."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_args = [argv[0], *(a for a in argv if a.startswith("--config"))]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=config_args)  # which overrides to define
  try:
    values(config_args)
  except (AttributeError, KeyError, flags.Error, TypeError, ValueError) as e:
    raise ValueError(f"{' '.join(argv)}: {type(e).__name__}: {e}") from e


def check(command: Command) -> None:
  """Raises ``ValueError`` where ``command`` would fail on its arguments (nothing runs)."""
  argv = command.argv
  if argv[0] != PYTHON:
    return
  if argv[1] == "-m" and argv[2] == "benchmarks":
    from benchmarks import __main__ as cli  # pylint: disable=g-import-not-at-top
    try:
      cli.parser_for(argv[3]).parse_args(argv[4:])
    except SystemExit as e:
      raise ValueError(f"bad flags: {' '.join(argv)}") from e
  elif argv[1] == "-m":
    if importlib.util.find_spec(argv[2]) is None:
      raise ValueError(f"no module {argv[2]}")
  if any(a.startswith("--config=") for a in argv):
    _check_config(argv)
