"""CPU demo, the README's main job: a small AS-ARM on the Python standard library.

Command:
  python -m asarm_jax.main --config=configs/demo.py --workdir=/tmp/asarm_demo

Expected on a 2-core CPU (measured: 3.8 to 12 minutes in all, depending on the machine): data
preparation and tokenizer training in seconds, 1000 steps with the joint loss falling from ~9 to
~5 bits/token (held-out bits/token is reported at visible fractions 0, 0.05, 0.25 and 0.5;
5.82/5.35 at 0/0.5 at the end, 2026-12-02), a checkpoint under WORKDIR/checkpoints, and three
held-out stdlib snippets whose middle 32 tokens are infilled with ASSD (k=5), with the calls
spent. The model is tiny (~0.9M parameters): the infills are code-flavoured, not correct code.
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
  c.optim.update(learning_rate=1e-3, warmup_steps=20)
  c.train.update(batch_size=16, num_steps=1000, log_every=50, eval_every=250, eval_batches=2,
                 checkpoint_every=250)
  return c
