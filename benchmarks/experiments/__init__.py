"""Experiments as Python configs, run in stages by ``python -m benchmarks experiment NAME``.

Each experiment module (``headline``, ``causal_lm``, ``mdlm_baseline``, ``recipe``,
``decode_checks``) has ``KNOBS`` (its settings, overridable with ``--set KEY=VALUE``) and
``build(knobs, runs) -> list[Stage]``; the stages are built from the commands of
:mod:`benchmarks.experiments.stages`.
"""

EXPERIMENTS = ("headline", "causal_lm", "mdlm_baseline", "recipe", "decode_checks")
