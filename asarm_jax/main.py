"""Entry point: ``python -m asarm_jax.main --config=configs/X.py --workdir=DIR [--mode=...]``.

Overrides go as ``--config.a.b=value``; the config is locked, so unknown keys are errors.
"""
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from asarm_jax import inference, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, checkpoints and logs.")
flags.DEFINE_enum("mode", "train", ["train", "sample"],
                  "train (then show a few infills), or sample: fill <mask:N> spans of a prompt.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save step at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or "/orbax/" not in r.pathname)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if FLAGS.config.sample.num_examples:
      inference.show_infills(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    inference.sample_prompts(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
