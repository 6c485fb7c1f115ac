"""Builds the dataset and tokenizer of a run once, before its processes start.

Every process of ``asarm_jax.main`` prepares the data when it is missing; several processes
doing it at once in one shared ``data_dir`` collide. The launch scripts run this first, as one
process, with ``asarm_jax.main``'s ``--config``, ``--workdir`` and ``--config.*`` overrides.

  python3 launch/prepare_data.py --config=configs/X.py --workdir=DIR [--config.a.b=value ...]
"""
import os

from absl import app, flags
from ml_collections import config_flags

from asarm_jax import data

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's --workdir (data goes to WORKDIR/data by default).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  config = FLAGS.config.data
  data_dir = config.data_dir or os.path.join(FLAGS.workdir, "data")
  tokenizer = data.prepare(config, data_dir)
  size = data.corpus_size(config, tokenizer, data_dir)
  print(f"data ready: {config.name}, tokenizer of {tokenizer.vocab_size} pieces; train split: "
        f"{size['documents']} documents, {size['bytes'] / 1e6:.1f} MB, about "
        f"{size['tokens'] / 1e6:.1f}M tokens")


if __name__ == "__main__":
  app.run(main)
