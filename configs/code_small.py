"""~30M-parameter code AS-ARM for one GPU, on the standard library plus site-packages.

Command (one GPU):
  python -m asarm_jax.main --config=configs/code_small.py --workdir=runs/code_small \
      --config.data.source_dirs="('/usr/lib/python3/dist-packages',)"

Expected: about 27M parameters (6 layers, d=512, 16k vocabulary); held-out bits/token at 5%
visible well under 2 after a few thousand steps. HumanEval files are excluded by
`data.exclude_patterns`.
"""
from asarm_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.name = "python_code"
  c.data.vocab_size = 16384
  c.data.seq_len = 512
  c.data.exclude_patterns = ["*human_eval*", "*humaneval*", "*HumanEval*"]
  c.model.update(num_layers=6, d_model=512, num_heads=8, d_ff=2048, dtype="bfloat16")
  c.objective.fraction_range = (0.01, 0.5)
  c.optim.update(learning_rate=1e-3, warmup_steps=500)
  c.train.update(batch_size=64, num_steps=20_000, log_every=100, eval_every=1000,
                 checkpoint_every=1000)
  return c
