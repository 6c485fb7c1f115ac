"""Paper scale: ~110M parameters (12 layers, d=768, 12 heads, 32k vocabulary), 512 context.

Command (one GPU; add mesh sizes to spread it over more):
  python -m asarm_jax.main --config=configs/xlnet_base.py --workdir=runs/xlnet_base

Expected: about 110M parameters, bf16 compute with fp32 parameters, the paper's generation
recipe (visible fraction in [0.01, 0.10], AdamW, warmup, clipping at 1.0, 512-token packed
chunks with <eos> between documents).
"""
from asarm_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.name = "python_code"
  c.data.vocab_size = 32000
  c.data.seq_len = 512
  c.data.exclude_patterns = ["*human_eval*", "*humaneval*", "*HumanEval*"]
  c.model.update(num_layers=12, d_model=768, num_heads=12, d_ff=3072, dtype="bfloat16")
  c.objective.fraction_range = (0.01, 0.10)
  c.optim.update(learning_rate=6e-4, warmup_steps=1000, weight_decay=0.01)
  c.train.update(batch_size=64, num_steps=50_000, log_every=100, eval_every=2000,
                 checkpoint_every=2000)
  return c
