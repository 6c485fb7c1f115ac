"""Entry point: ``python -m asarm_jax.main --config=configs/X.py --workdir=DIR [--mode=...]``.

Overrides go as ``--config.a.b=value``; the config is locked, so unknown keys are errors. Every
mode validates the config before it writes anything; a bad input or a fault the user must act
on ends the run with one line ``error: ...`` and exit status 1, Ctrl-C outside the training
loop with one line and status 130 (:mod:`asarm_jax.cli`; ``--verbose``: the traceback, and the
libraries' own logs and progress bars). Training takes the workdir's lock
(:mod:`asarm_jax.workdir_lock`); sampling and evaluation only read it (evaluation writes under
``WORKDIR/eval``).
"""
import logging as pylogging
import os
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from asarm_jax import cli, inference, train, validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, checkpoints and logs.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                  "train (then show a few infills); sample: fill the <mask:N> spans of "
                  "config.sample.prompt(_file); eval: the benchmarks of config.eval.tasks.")
flags.DEFINE_bool("multihost", os.environ.get("ASARM_MULTIHOST") == "1",
                  "Call jax.distributed.initialize() first: one process per host (TPU) or per "
                  "GPU (SLURM); default from ASARM_MULTIHOST=1. See docs/scaling.md.")
flags.DEFINE_bool("verbose", False,
                  "Keep the libraries' logs (Orbax, TensorFlow Datasets, TensorBoard, asyncio), "
                  "their progress bars and full tracebacks; by default only this project's "
                  "messages are shown and errors are one line.")
flags.mark_flags_as_required(["config", "workdir"])

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _Plain(pylogging.Formatter):
  """``HH:MM:SS message``, with ``warning:`` / ``error:`` before the message where it is one."""

  def format(self, record: pylogging.LogRecord) -> str:
    level = "" if record.levelno < pylogging.WARNING else f"{record.levelname.lower()}: "
    return f"{self.formatTime(record, '%H:%M:%S')} {level}{record.getMessage()}"


def _from_this_project(record: pylogging.LogRecord) -> bool:
  return record.pathname.startswith(_PACKAGE_DIR)


def _drop_closed_loop_errors(hook: Any) -> Any:
  """``sys.unraisablehook`` that drops the "Event loop is closed" errors TensorStore reports
  after Orbax gave up reading a damaged checkpoint (the checkpoint is skipped with a warning)."""
  def unraisable(info):
    if not (isinstance(info.exc_value, RuntimeError)
            and str(info.exc_value) == "Event loop is closed"):
      hook(info)
  return unraisable


def quiet_libraries() -> None:
  """Shows only this project's log records, in a short format; silences the libraries' logs,
  Python warnings, progress bars and their shutdown noise (undone by ``--verbose``)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  handler.addFilter(_from_this_project)
  handler.setFormatter(_Plain())
  pylogging.captureWarnings(True)  # to the "py.warnings" logger, which the filter drops
  tfds.disable_progress_bar()
  sys.unraisablehook = _drop_closed_loop_errors(sys.unraisablehook)


def run(mode: str, config: ml_collections.ConfigDict, workdir: str,
        overrides: dict[str, Any]) -> None:
  """Checks ``config`` for ``mode`` (and the command line's ``overrides``), then runs it."""
  validation.check_overrides(config, overrides)
  if mode == "train":  # checks the config itself, before it writes anything
    result = train.train_and_evaluate(config, workdir)
    if result["completed"] and config.sample.num_examples:
      inference.show_infills(config, workdir)
    return
  validation.validate_config(config, mode)
  validation.check_inputs(config, mode)
  if mode == "sample":
    inference.sample_prompts(config, workdir, overrides)
  else:
    from asarm_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
    runner.run(config, workdir)  # (its scoring packages load only when asked for)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with cli.ends_in_one_line(FLAGS.verbose):
    if FLAGS.multihost:
      jax.distributed.initialize()  # before anything touches devices: discovers the cluster
    logging.set_verbosity(logging.INFO)
    if FLAGS.verbose:
      # Orbax logs every save step at INFO; keep its warnings, drop the chatter.
      logging.get_absl_handler().addFilter(
          lambda r: r.levelno >= pylogging.WARNING or "/orbax/" not in r.pathname)
    else:
      quiet_libraries()
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir,
        config_flags.get_override_values(FLAGS["config"]))


def unknown_key(error: Exception) -> str:
  """The message of a locked ConfigDict's error for a new key, unquoted, on one line."""
  detail = error
  while isinstance(detail, BaseException) and detail.args:  # (an AttributeError wraps a KeyError)
    detail = detail.args[0]
  key, *hint = str(detail).splitlines()
  hint = f" ({hint[0][:1].lower()}{hint[0][1:]})" if hint else ""
  return (f"unknown config key {key}{hint}; configs are locked: see configs/ and "
          "asarm_jax/config_base.py for the keys.")


def unloadable_config(error: OSError) -> str:
  """The path and cause of a config file that did not load, on one line: ml_collections'
  message names neither on its first line; the error it was raised from ends with both."""
  cause = str(error.__cause__ or error).strip().splitlines()[-1].strip()
  return f"config file not loaded: {cause}"


def parse_flags(argv):
  """absl parsing, but a config file that does not load and a bad ``--config.*`` override are
  one-line errors, not tracebacks."""
  try:
    argv = FLAGS(argv)
    FLAGS.config.keys()  # ml_collections defers a config file's load error to its first use
    return argv
  except (AttributeError, KeyError) as e:  # what a locked ConfigDict raises for a new key
    sys.exit(f"error: {unknown_key(e)}")
  except OSError as e:
    sys.exit(f"error: {unloadable_config(e)}")
  except (flags.Error, TypeError, ValueError) as e:
    sys.exit(f"error: {type(e).__name__}: {e}".splitlines()[0])


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
