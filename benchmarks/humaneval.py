"""HumanEval infilling, each sampler timed: pass@1 (or the middles, to score elsewhere), tokens
per call and generation wall-clock, on one trained checkpoint.

  python -m benchmarks humaneval --workdir=runs/asarm --specs=sequential,tree:8 \
      [--kind=humaneval_single_line --temperature=0.2 --batch_size=64 \
       --batching=continuous,batches --execute=false]

For each sampler and batching, a warm-up on the first ``--batch_size`` tasks (into a throwaway
cache, padded to the run's dispatch shape) compiles it; then every task is completed and
``Completions.seconds`` (the library's own timing of the generation) is the wall-clock.
Batchings: ``continuous`` (``--batch_size`` slots, a finished slot takes the next task inside
the loop, :func:`asarm_jax.evaluation.generation.dispatch_size` tasks per dispatch) and
``batches`` (one batch of ``--batch_size`` tasks per dispatch, as before continuous batching;
tasks of like length batched together). Every row draws from its own key, so both give the
same samples. With ``--execute=false`` the middles are written to
``WORKDIR/eval/KIND_TAG_middles.json`` and ``python -m asarm_jax.evaluation.score_middles``
scores them on another machine; :mod:`benchmarks.decoders` then compares the samplers. One
record per sampler.
"""
from __future__ import annotations

import argparse
import itertools
import os

from asarm_jax import inference
from asarm_jax.evaluation import generation, infill_eval, infill_model
from asarm_jax.config_base import default_eval_config
from benchmarks import cli, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="trained workdir")
  parser.add_argument("--specs", type=cli.list_of(str), default="sequential,tree:8",
                      help="samplers: method[:k] or tree:N[:D]")
  parser.add_argument("--kind", default="humaneval_single_line",
                      choices=sorted(infill_eval.HUMANEVAL_KINDS))
  parser.add_argument("--temperature", type=float, default=0.2)
  parser.add_argument("--batch_size", type=int, default=64, help="rows decoded at once (slots)")
  parser.add_argument("--batching", type=cli.list_of(str), default="continuous",
                      help="continuous and/or batches (one batch per dispatch)")
  parser.add_argument("--max_tasks", type=int, default=0, help="a subsample (0: every task)")
  parser.add_argument("--execute", type=cli.flag_bool, default=True,
                      help="run the tests here (false: write the middles only)")
  parser.add_argument("--workers", type=int, default=14, help="sandbox processes")


BATCHINGS = ("continuous", "batches")


def run(workdir: str, specs: list[str] = ("sequential",), kind: str = "humaneval_single_line",
        temperature: float = 0.2, batch_size: int = 64, batching: list[str] = ("continuous",),
        max_tasks: int = 0, execute: bool = True, workers: int = 14) -> list[dict]:
  """One record per (sampler, batching): pass@1 (with ``execute``), tokens per call,
  generation seconds."""
  unknown = sorted(set(batching) - set(BATCHINGS))
  if unknown:
    raise ValueError(f"--batching: unknown {unknown}; expected some of {list(BATCHINGS)}")
  loaded = inference.load(workdir)
  ecfg = default_eval_config()
  ecfg.update(humaneval_max_tasks=max_tasks, sandbox_workers=workers)
  tasks = infill_eval.humaneval_tasks(kind, max_tasks, ecfg.seed)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  made = []
  for text, how in itertools.product(specs, batching):
    spec = cli.parse_spec(text).replace(temperature=temperature)
    per_dispatch = (batch_size if how == "batches" else
                    generation.dispatch_size(len(tasks), batch_size))
    tag = f"step{loaded.step}_{spec.tag()}_seed{ecfg.seed}_b{batch_size}_{how}"
    complete = lambda chosen, path, spec=spec, per_dispatch=per_dispatch: infill_model.complete(
        loaded.model, loaded.params, loaded.tokenizer, chosen, path, spec=spec, num_samples=1,
        batch_size=batch_size, seed=ecfg.seed, desc=f"{kind} {spec.describe()} {how}",
        show_suffix=not kind.endswith("_prefix"), rows_per_dispatch=per_dispatch)
    warmup_path = os.path.join(out_dir, f"{kind}_{tag}_warmup.jsonl")
    warmup = complete(tasks[:batch_size], warmup_path)
    os.remove(warmup_path)
    done = complete(tasks, os.path.join(out_dir, f"{kind}_{tag}_completions.jsonl"))
    metrics = {"num_tasks": len(tasks), "num_too_long": len(done.too_long),
               "num_truncated": done.num_truncated, "tokens_per_call": done.tokens_per_call,
               "warmup_s": warmup.seconds, "generation_s": done.seconds}
    if execute:
      metrics.update(infill_eval.score_humaneval(
          tasks, done.by_task, [1], workers, ecfg.sandbox_timeout_s,
          os.path.join(out_dir, f"{kind}_{tag}_scores.jsonl")))
    else:
      path = os.path.join(out_dir, f"{kind}_{tag}_middles.json")
      infill_eval.write_middles(path, kind, ecfg, done.by_task, metrics)
      metrics["middles"] = os.path.relpath(path, workdir)
    made.append(records.make(
        "humaneval", {"kind": kind, **cli.spec_settings(spec), "batch_size": batch_size,
                      "batching": how, "rows_per_dispatch": per_dispatch,
                      "max_tasks": max_tasks},
        metrics, {"workdir": workdir, "step": int(loaded.step)}))
  return made
