"""The ``config.eval`` block: which benchmarks ``--mode=eval`` runs, and how."""
from __future__ import annotations

import ml_collections


def default_eval_config() -> ml_collections.ConfigDict:
  """Defaults for :func:`asarm_jax.evaluation.runner.run` (see ``docs/evaluation.md``).

  The sampler of every generating task is ``config.sample``'s
  (:class:`asarm_jax.sampling.SamplerSpec`). Task names: ``density``, ``draft_acceptance``,
  ``humaneval_single_line``, ``humaneval_multi_line`` (and their ``_prefix`` variants), ``text_infill`` and ``gen_quality``
  (which needs ``judge_workdir``). Sequence fields are tuples so that
  ``--config.eval.tasks="('density',)"`` can override them.
  """
  return ml_collections.ConfigDict(dict(
      tasks=("density", "humaneval_single_line", "humaneval_multi_line"),
      seed=0,
      batch_size=16,             # rows per sampler / density call
      # HumanEval infilling.
      humaneval_max_tasks=0,     # a deterministic subsample of this many tasks, 0 = all
      num_samples=1,             # completions per task
      pass_at=(1, 10),           # pass@k reported for every k <= num_samples
      humaneval_execute=True,    # False: write the middles, score them elsewhere
                                 # (python -m asarm_jax.evaluation.score_middles)
      sandbox_workers=2,
      sandbox_timeout_s=5.0,
      # Text infilling (ROCStories protocol).
      rocstories_csv="",         # "" -> 5-sentence windows of the held-out split
      text_max_stories=100,
      text_settings=("1/5", "3/5"),
      # Generation quality: samples scored by a left-to-right judge.
      judge_workdir="",          # a workdir trained with configs/judge_*.py
      gen_samples_only=False,    # True: write the samples only, for evaluation.judge_samples
      gen_num_prompts=32,
      gen_visible_fraction=0.05,
      gen_methods=("sequential", "assd", "parallel"),  # the first is the t-test baseline
      gen_parallel_ks=(2, 4, 8),  # k values of "parallel"; other methods use `k`
      # Held-out density.
      density_fractions=(0.0, 0.05, 0.25, 0.5),
      density_batches=4,         # held-out batches of density and draft_acceptance
      # Draft acceptance by depth (evaluation/draft_eval.py), on the density batches.
      draft_fractions=(0.05, 0.5),
      draft_temperatures=(1.0, 0.7, 0.2),
      draft_depth=6,
      draft_cuts=16,
  ))
