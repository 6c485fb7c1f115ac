"""``--mode=eval``: runs the benchmarks of ``config.eval.tasks`` on the checkpoint of a workdir.

Everything is written under ``WORKDIR/eval``: ``results.json`` and ``results.md`` (rewritten
after every task, so finished tasks survive an interruption), the generation caches and
HumanEval score files (JSONL, resumed by a rerun), ``gen_quality.png``, and the dataset where
the workdir has none prepared (``eval/data``). Evaluation only reads the rest of the workdir, so
it takes no lock (:mod:`asarm_jax.workdir_lock`). Each task's table is printed as it finishes,
and a short table of the headline figures at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, NamedTuple

import ml_collections

from asarm_jax import data, inference, models, run_io, sampling
from asarm_jax.data import builders
from asarm_jax.evaluation import (density_eval, draft_eval, gen_quality, infill_eval, jsonio,
                                  report, text_infill)


class Context(NamedTuple):
  """What every task needs: the loaded model, the run's config and sampler, its directories."""
  loaded: inference.Loaded
  config: ml_collections.ConfigDict
  spec: sampling.SamplerSpec
  data_dir: str
  out_dir: str


def _density(ctx: Context) -> dict:
  ecfg = ctx.config.eval
  batches = data.heldout_batches(ctx.config.data, ctx.loaded.tokenizer, ctx.data_dir,
                                 batch_size=ecfg.batch_size, num_batches=ecfg.density_batches)
  return density_eval.evaluate(ctx.loaded.model, ctx.loaded.params, batches,
                               ecfg.density_fractions, ecfg.seed,
                               orders=density_eval.orders_for(ctx.loaded.config.objective.kind))


def _draft_acceptance(ctx: Context) -> dict:
  ecfg = ctx.config.eval
  batches = data.heldout_batches(ctx.config.data, ctx.loaded.tokenizer, ctx.data_dir,
                                 batch_size=ecfg.batch_size, num_batches=ecfg.density_batches)
  return draft_eval.evaluate(ctx.loaded.model, ctx.loaded.params, batches,
                             ecfg.draft_fractions, ecfg.draft_temperatures, ecfg.draft_depth,
                             ecfg.draft_cuts, ecfg.seed)


def _sampler_tag(ctx: Context) -> str:
  """What generated completions depend on besides the task: checkpoint step, sampler (every
  setting that changes the samples or the calls they took), seed, batch size (in bf16 the
  call's shape can round a near-tie either way) and ``_det`` for deterministic decoding."""
  e = ctx.config.eval
  det = "_det" if ctx.config.sample.deterministic else ""
  return f"step{ctx.loaded.step}_{ctx.spec.tag()}_seed{e.seed}_b{e.batch_size}{det}"


def _humaneval(kind: str) -> Callable[[Context], dict]:
  def task(ctx: Context) -> dict:
    return infill_eval.humaneval(ctx.loaded.model, ctx.loaded.params, ctx.loaded.tokenizer,
                                 ctx.config.eval, ctx.spec, kind, ctx.out_dir,
                                 _sampler_tag(ctx))
  return task


def stories(ctx: Context) -> list[text_infill.Story]:
  """The official ROCStories CSV if ``eval.rocstories_csv`` is set, else 5-sentence windows of
  the held-out split."""
  ecfg = ctx.config.eval
  if ecfg.rocstories_csv:
    return text_infill.read_rocstories_csv(ecfg.rocstories_csv, ecfg.text_max_stories)
  texts = [doc["text"] for doc in data.heldout_documents(ctx.config.data, ctx.data_dir)]
  return text_infill.windows_from_documents(texts, ecfg.text_max_stories)


def _text_infill(ctx: Context) -> dict:
  return infill_eval.text(ctx.loaded.model, ctx.loaded.params, ctx.loaded.tokenizer,
                          ctx.config.eval, ctx.spec, stories(ctx), ctx.out_dir,
                          _sampler_tag(ctx))


def _gen_quality(ctx: Context) -> dict:
  """Samples of every ``eval.gen_methods`` variant, written to ``gen_samples_{tag}.npz``, and
  judged by ``eval.judge_workdir`` unless ``eval.gen_samples_only`` (then judge them later
  with ``python -m asarm_jax.evaluation.judge_samples``)."""
  ecfg = ctx.config.eval
  judge = None if ecfg.gen_samples_only else inference.load(ecfg.judge_workdir)
  if judge is not None and judge.tokenizer.serialized() != ctx.loaded.tokenizer.serialized():
    raise ValueError(f"the judge in {ecfg.judge_workdir} has another tokenizer; train it with "
                     "--config.data.data_dir set to the evaluated model's data dir")
  (heldout,) = data.heldout_batches(ctx.config.data, ctx.loaded.tokenizer, ctx.data_dir,
                                    batch_size=ecfg.gen_num_prompts, num_batches=1)
  tag = (f"step{ctx.loaded.step}_t{ctx.spec.temperature:g}_f{ecfg.gen_visible_fraction:g}"
         f"_seed{ecfg.seed}_b{ecfg.batch_size}")
  if judge is not None:  # fails before generating
    gen_quality.check_judge_fits(judge.model, heldout.shape[1])
  samples = gen_quality.generate(ctx.loaded.model, ctx.loaded.params, heldout, ecfg, ctx.spec,
                                 ctx.out_dir, tag)
  name = f"gen_samples_{tag}.npz"
  gen_quality.write_samples(os.path.join(ctx.out_dir, name), samples,
                            ctx.loaded.tokenizer.serialized())
  if judge is None:
    return {"samples": name, "num_prompts": len(heldout),
            "visible_fraction": ecfg.gen_visible_fraction, "methods": samples.info}
  result = gen_quality.judge(judge.model, judge.params, samples, ecfg.batch_size)
  gen_quality.plot(result, os.path.join(ctx.out_dir, "gen_quality.png"))
  return {**result, "samples": name, "judge_workdir": ecfg.judge_workdir,
          "judge_step": judge.step, "plot": "gen_quality.png"}


TASKS: dict[str, Callable[[Context], dict]] = {
    "density": _density,
    "draft_acceptance": _draft_acceptance,
    **{kind: _humaneval(kind) for kind in infill_eval.HUMANEVAL_KINDS},
    "text_infill": _text_infill,
    "gen_quality": _gen_quality,
}


def validate(ecfg: ml_collections.ConfigDict) -> None:
  """Fails fast on a config that some task would reject only hours into the run."""
  unknown = [t for t in ecfg.tasks if t not in TASKS]
  if unknown or not ecfg.tasks:
    raise ValueError(f"eval.tasks has unknown {unknown}; expected names of {sorted(TASKS)}")
  methods = list(ecfg.gen_methods) if "gen_quality" in ecfg.tasks else []
  bad = [m for m in methods if m not in sampling.METHODS]
  if bad:
    raise ValueError(f"unknown sampling methods {bad}; expected one of {sampling.METHODS}")
  if "gen_quality" in ecfg.tasks:
    if not ecfg.judge_workdir and not ecfg.gen_samples_only:
      raise ValueError("gen_quality needs eval.judge_workdir (train one with configs/judge_*.py), "
                       "or eval.gen_samples_only to judge the samples later")
    if ecfg.gen_num_prompts < 2 or not ecfg.gen_methods:
      raise ValueError("gen_quality needs eval.gen_num_prompts >= 2 and some eval.gen_methods")


def _write(results: dict, out_dir: str) -> None:
  """Writes results.json and results.md atomically."""
  for name, content in (("results.json", json.dumps(jsonio.strict(results), indent=2) + "\n"),
                        ("results.md", report.markdown(results))):
    path = os.path.join(out_dir, name)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
      f.write(content)
    os.replace(f"{path}.tmp", path)


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the evaluation reads its dataset: ``data.data_dir``; else ``WORKDIR/data`` where
  training prepared it; else ``WORKDIR/eval/data`` (prepared there: a converted workdir has
  none)."""
  if config.data.data_dir:
    return config.data.data_dir
  trained = os.path.join(workdir, "data")
  if builders.is_prepared(config.data.name, trained, **builders.options(config.data)):
    return trained
  return os.path.join(workdir, "eval", "data")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the newest checkpoint of ``workdir`` on ``config.eval.tasks``; writes
  ``WORKDIR/eval/results.{json,md}``, prints each task's table and, at the end, the headline
  figures (:func:`report.headline`), and returns the results dict
  ``{"workdir", "step", "eval", "sample", "tasks": {name: result}}``; the sampler of every
  generating task is ``config.sample``'s."""
  ecfg = config.eval
  validate(ecfg)
  spec = sampling.SamplerSpec.from_config(config.sample)
  loaded = inference.load(workdir)
  if config.sample.deterministic:
    loaded = loaded._replace(model=models.batch_invariant(loaded.model))
  saved, current = (json.loads(c.model.to_json_best_effort()) for c in (loaded.config, config))
  saved.setdefault("arch", "two_stream")  # written before model.arch existed
  if saved != current:
    raise ValueError(f"config.model differs from the checkpoint's in {workdir} "
                     f"({sorted(k for k in current if saved.get(k) != current[k])})")
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  ctx = Context(loaded, config, spec, data_dir(config, workdir), out_dir)
  results = {"workdir": workdir, "step": loaded.step, "eval": ecfg.to_dict(),
             "sample": dataclasses.asdict(spec), "tasks": {}}
  for i, name in enumerate(ecfg.tasks):
    print(f"=== eval task {i + 1}/{len(ecfg.tasks)}: {name} (step {loaded.step})", flush=True)
    began = time.perf_counter()
    results["tasks"][name] = TASKS[name](ctx)
    _write(results, out_dir)
    print("\n\n".join([f"{name} done in {run_io.duration(time.perf_counter() - began)}",
                        *report.sections({name: results["tasks"][name]})]) + "\n", flush=True)
  print(f"=== eval of {workdir} (step {loaded.step}): headline figures; every table is in "
        f"{os.path.join(out_dir, 'results.md')}\n\n{report.headline(results)}", flush=True)
  return results
