"""~30M-parameter text AS-ARM on a folder of .txt/.md/.rst files (generation regime).

Command (offline text: the .rst sources of Debian's python3-doc, `apt-get install python3-doc`;
the folder is python3.X for your Python: see docs/data.md; or any folder you point at):
  python -m asarm_jax.main --config=configs/text_small.py --workdir=runs/text_small \
      --config.data.source_dirs="('/usr/share/doc/python3.11/html/_sources',)"

Expected: held-out bits/token at 5% visible falling steadily; visible fractions are drawn from
[0.01, 0.10] as in the paper's generation models.
"""
from asarm_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.name = "text_files"
  c.data.vocab_size = 8192
  c.data.seq_len = 512
  c.model.update(num_layers=6, d_model=512, num_heads=8, d_ff=2048, dtype="bfloat16")
  c.objective.fraction_range = (0.01, 0.10)
  c.optim.update(learning_rate=1e-3, warmup_steps=500)
  c.train.update(batch_size=64, num_steps=20_000, log_every=100, eval_every=1000,
                 checkpoint_every=1000)
  return c
