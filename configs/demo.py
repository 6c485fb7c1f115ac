"""CPU demo, the README's main job: a small AS-ARM on the Python standard library.

Command:
  python -m asarm_jax.main --config=configs/demo.py --workdir=/tmp/asarm_demo

Expected on a 2-core CPU: data preparation and tokenizer training in about a minute, then
training in under ~8 minutes, the joint loss falling from ~7 to below ~3.5 bits/token (held-out
bits/token is reported at visible fractions 0, 0.05, 0.25 and 0.5), and a checkpoint under
WORKDIR/checkpoints.
"""
from asarm_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.name = "python_code"
  c.data.vocab_size = 1024
  c.data.seq_len = 128
  c.data.max_files = 600
  c.data.tokenizer_max_chars = 2_000_000
  c.model.update(num_layers=3, d_model=128, num_heads=4, d_ff=512)
  c.objective.fraction_range = (0.05, 0.5)
  c.optim.update(learning_rate=3e-3, warmup_steps=50)
  c.train.update(batch_size=16, num_steps=600, log_every=25, eval_every=200, eval_batches=2,
                 checkpoint_every=200)
  return c
