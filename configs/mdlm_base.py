"""The masked-diffusion baseline (MDLM, docs/mdlm.md) of configs/xlnet_base.py: that config with
``objective.kind="mdlm"`` and nothing else changed (model, data, tokenizer, batches, recipe).

Command (one GPU; the same overrides as the AS-ARM run it is compared with, e.g. the headline
recipe's --config.optim.learning_rate=1.2e-3 --config.train.num_steps=7650):
  python -m asarm_jax.main --config=configs/mdlm_base.py --workdir=runs/mdlm_base

Expected: the AS-ARM's parameters (about 110M) and step cost (the same network, trained on the
draft rule); the logged loss and ``bits`` are the negative ELBO per token and the held-out
figures ``elbo_bits_per_token@f`` an upper bound on bits per hidden token.
"""
import os

from asarm_jax.config_base import from_file


def get_config():
  c = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "xlnet_base.py"))
  c.objective.kind = "mdlm"
  return c
