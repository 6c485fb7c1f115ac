"""The left-to-right judge of a model's samples (generation quality, eval mode).

`--config=configs/judge.py:NAME` judges `configs/NAME.py` (`:code_small` by default, `:text_small`,
`:xlnet_base`, ...). The judge is the same two-stream transformer trained by this codebase on the
same corpus, with nothing visible: `objective.fraction_range = (0, 0)` in left-to-right order is
plain causal LM training (special tokens such as the `<eos>` separators stay visible, as in every
objective here). It keeps NAME's data block and model size (override `--config.model.*` for a
smaller, faster judge). It must share the evaluated model's tokenizer, so point `data.data_dir`
at that model's data directory (its prepared dataset and tokenizer are then reused, not rebuilt).

Commands (after training code_small in runs/code_small):
  python -m asarm_jax.main --config=configs/judge.py:code_small --workdir=runs/judge_code \
      --config.data.source_dirs="('/usr/lib/python3/dist-packages',)" \
      --config.data.data_dir=runs/code_small/data
  python -m asarm_jax.main --config=configs/code_small.py --workdir=runs/code_small --mode=eval \
      --config.eval.tasks="('gen_quality',)" --config.eval.judge_workdir=runs/judge_code
and for text (after training text_small in runs/text_small):
  python -m asarm_jax.main --config=configs/judge.py:text_small --workdir=runs/judge_text \
      --config.data.source_dirs="('/usr/share/doc/python3-doc/html/_sources',)" \
      --config.data.data_dir=runs/text_small/data
  python -m asarm_jax.main --config=configs/text_small.py --workdir=runs/text_small --mode=eval \
      --config.eval.tasks="('gen_quality', 'text_infill', 'density')" \
      --config.eval.judge_workdir=runs/judge_text

Expected: held-out bits_per_token@0 (the causal LM loss it reports) at or somewhat below the
AS-ARM's own bits_per_token@0 after the same number of steps, since all its capacity goes to one
order; then in eval mode the sequential and ASSD samples get judge perplexities that a Welch
t-test cannot tell apart, and parallel(k) samples get higher perplexities as k grows (seen on
the H100 with `:xlnet_base`: docs/results.md).
"""
import os

from asarm_jax.config_base import from_file


def get_config(judged: str = "code_small"):
  # configs/{judged}.py with every key kept (the same dataset, tokenizer and model size), but
  # trained left to right with nothing visible.
  c = from_file(os.path.join(os.path.dirname(__file__), f"{judged}.py"))
  c.objective.update(fraction_range=(0.0, 0.0), random_order=False, parallel=False)
  c.train.eval_fractions = (0.0,)
  c.sample.num_examples = 0  # no infill examples: the judge is not an infilling model
  return c
