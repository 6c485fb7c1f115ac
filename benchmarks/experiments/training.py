"""Training and evaluation commands shared by the experiments: the recipe, the time limits, the
corpus, and evaluation with a sampler spec (``config.sample``)."""
from __future__ import annotations

from typing import Any

from asarm_jax.sampling.spec import FIELDS, SamplerSpec
from benchmarks.experiments import stages

STARTUP_S = 240  # the hard stop's margin over train.time_limit_s: startup and compilation
BY_STEPS_S = 1200  # the hard stop of a run with no time limit (stopped by its steps)


def recipe(lr: float, batch: int) -> dict[str, Any]:
  """Learning rate and batch; warmup is 300 steps at batch 64, the same tokens at others."""
  return {"optim.learning_rate": lr, "train.batch_size": batch,
          "optim.warmup_steps": 300 * 64 // batch}


def config_file(model: str, causal: bool = False) -> str:
  """configs/MODEL.py, or the causal LM of the same model (configs/judge.py:MODEL)."""
  return f"configs/judge.py:{model}" if causal else f"configs/{model}.py"


def model_overrides(knobs: dict[str, Any], runs: str) -> dict[str, Any]:
  """What training and evaluation of one experiment share: corpus and attention kernel."""
  return {**stages.data_overrides(runs, knobs["max_files"]),
          "model.attention_impl": knobs["attention"]}


def prepare(knobs: dict[str, Any], runs: str) -> stages.Command:
  """The corpus and tokenizer under RUNS/data (reused when already there)."""
  return stages.prepare(config_file(knobs["model"]), f"{runs}/data",
                        stages.data_overrides(runs, knobs["max_files"]))


def train(knobs: dict[str, Any], runs: str, workdir: str, limit_s: float, steps: int,
          causal: bool = False, **extra: Any) -> stages.Command:
  """Trains RUNS/WORKDIR for ``limit_s`` seconds after compilation (``train.time_limit_s``; 0:
  to ``train.stop_step`` or ``steps``, with a hard stop after :data:`BY_STEPS_S`; SIGTERM
  checkpoints at the hard stop), resuming from its checkpoint where it has one."""
  fractions = (0.0, 0.0) if causal else tuple(knobs["fractions"])
  return stages.main("train", config_file(knobs["model"], causal), f"{runs}/{workdir}", {
      **model_overrides(knobs, runs), "train.num_steps": steps, "train.eval_every": steps,
      "train.checkpoint_every": 1000, "train.log_every": 100,
      **recipe(knobs["lr"], knobs["batch"]), "objective.fraction_range": fractions,
      "sample.num_examples": 0, "train.time_limit_s": limit_s, **extra},
      timeout_s=(limit_s or BY_STEPS_S) + STARTUP_S, memory_fraction=0.62)


def spec_overrides(spec: SamplerSpec) -> dict[str, Any]:
  """``config.sample``'s sampler keys for ``spec``."""
  return {f"sample.{name}": getattr(spec, name) for name in FIELDS}


def evaluate(knobs: dict[str, Any], runs: str, workdir: str, tasks: tuple[str, ...],
             spec: SamplerSpec, causal: bool = False, **extra: Any) -> stages.Command:
  """``--mode=eval`` of RUNS/WORKDIR on ``tasks``, sampling with ``spec``; results in
  RUNS/WORKDIR/eval/results.json."""
  return stages.main("eval", config_file(knobs["model"], causal), f"{runs}/{workdir}", {
      **model_overrides(knobs, runs), **spec_overrides(spec), "eval.tasks": tuple(tasks),
      "eval.batch_size": 64, "eval.sandbox_workers": 14,
      "eval.humaneval_max_tasks": knobs["max_tasks"],
      "eval.humaneval_execute": knobs["execute"], **extra})
