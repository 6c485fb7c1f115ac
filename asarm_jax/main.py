"""Entry point: ``python -m asarm_jax.main --config=configs/X.py --workdir=DIR [--mode=...]``.

Overrides go as ``--config.a.b=value``; the config is locked, so unknown keys are errors.
"""
import logging as pylogging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from asarm_jax import inference, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, checkpoints and logs.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                  "train (then show a few infills); sample: fill the <mask:N> spans of "
                  "config.sample.prompt(_file); eval: the benchmarks of config.eval.tasks.")
flags.DEFINE_bool("multihost", os.environ.get("ASARM_MULTIHOST") == "1",
                  "Call jax.distributed.initialize() first: one process per host (TPU) or per "
                  "GPU (SLURM); default from ASARM_MULTIHOST=1. See docs/scaling.md.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.multihost:
    jax.distributed.initialize()  # before anything touches devices: discovers the cluster
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save step at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or "/orbax/" not in r.pathname)
  if FLAGS.mode == "train":
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if result["completed"] and FLAGS.config.sample.num_examples:
      inference.show_infills(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    inference.sample_prompts(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "eval":
    from asarm_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
    runner.run(FLAGS.config, FLAGS.workdir)  # (its scoring packages load only when asked for)


def parse_flags(argv):
  """absl parsing, but a bad ``--config.*`` override is a one-line error, not a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # what a locked ConfigDict raises for a new key
    sys.exit(f"error: unknown config key {e} (configs are locked: see configs/ and "
             "asarm_jax/config_base.py for the keys)")
  except (flags.Error, TypeError, ValueError) as e:
    sys.exit(f"error: {type(e).__name__}: {e}".splitlines()[0])


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
