"""HumanEval infilling, each sampler timed: pass@1 (or the middles, to score elsewhere), tokens
per call and generation wall-clock, on one trained checkpoint.

  python -m benchmarks humaneval --workdir=runs/asarm --specs=sequential,tree:8 \
      [--kind=humaneval_single_line --temperature=0.2 --batch_size=64 --execute=false]

For each sampler, a warm-up on the first batch of tasks (into a throwaway cache) compiles it;
then every task is completed and ``Completions.seconds`` (the library's own timing of the
generation) is the wall-clock. With ``--execute=false`` the middles are written to
``WORKDIR/eval/KIND_TAG_middles.json`` and ``python -m asarm_jax.evaluation.score_middles``
scores them on another machine; :mod:`benchmarks.decoders` then compares the samplers. One
record per sampler.
"""
from __future__ import annotations

import argparse
import os

from asarm_jax import inference
from asarm_jax.evaluation import infill_eval, infill_model
from asarm_jax.config_base import default_eval_config
from benchmarks import cli, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="trained workdir")
  parser.add_argument("--specs", type=cli.list_of(str), default="sequential,tree:8",
                      help="samplers: method[:k] or tree:N[:D]")
  parser.add_argument("--kind", default="humaneval_single_line",
                      choices=sorted(infill_eval.HUMANEVAL_KINDS))
  parser.add_argument("--temperature", type=float, default=0.2)
  parser.add_argument("--batch_size", type=int, default=64, help="rows per sampler call")
  parser.add_argument("--max_tasks", type=int, default=0, help="a subsample (0: every task)")
  parser.add_argument("--execute", type=cli.flag_bool, default=True,
                      help="run the tests here (false: write the middles only)")
  parser.add_argument("--workers", type=int, default=14, help="sandbox processes")


def run(workdir: str, specs: list[str] = ("sequential",), kind: str = "humaneval_single_line",
        temperature: float = 0.2, batch_size: int = 64, max_tasks: int = 0,
        execute: bool = True, workers: int = 14) -> list[dict]:
  """One record per sampler: pass@1 (with ``execute``), tokens per call, generation seconds."""
  loaded = inference.load(workdir)
  ecfg = default_eval_config()
  ecfg.update(humaneval_max_tasks=max_tasks, sandbox_workers=workers)
  tasks = infill_eval.humaneval_tasks(kind, max_tasks, ecfg.seed)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  made = []
  for text in specs:
    spec = cli.parse_spec(text).replace(temperature=temperature)
    tag = f"step{loaded.step}_{spec.tag()}_seed{ecfg.seed}_b{batch_size}"
    complete = lambda chosen, path, spec=spec: infill_model.complete(
        loaded.model, loaded.params, loaded.tokenizer, chosen, path, spec=spec, num_samples=1,
        batch_size=batch_size, seed=ecfg.seed, desc=f"{kind} {spec.describe()}",
        show_suffix=not kind.endswith("_prefix"))
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
        "humaneval", {"kind": kind, **cli.spec_settings(spec),
                      "batch_size": batch_size, "max_tasks": max_tasks},
        metrics, {"workdir": workdir, "step": int(loaded.step)}))
  return made
