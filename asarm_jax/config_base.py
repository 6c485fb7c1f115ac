"""The complete default config; every file in configs/ starts from it and changes a few keys.

This is the one place of every default: the code reads the keys without restating them.
Configs are locked by ``main.py`` (``config_flags``), so a misspelt ``--config.x=...`` override
is an error rather than a silently ignored key. :func:`complete` reads the config of a
checkpoint written by an older version.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections

from asarm_jax.data import default_data_config
from asarm_jax.sampling.spec import SamplerSpec


def default_eval_config() -> ml_collections.ConfigDict:
  """Defaults for :func:`asarm_jax.evaluation.runner.run` (see ``docs/evaluation.md``).

  The sampler of every generating task is ``config.sample``'s
  (:class:`asarm_jax.sampling.SamplerSpec`). Task names: ``density``, ``draft_acceptance``,
  ``humaneval_single_line``, ``humaneval_multi_line`` (and their ``_prefix`` variants),
  ``text_infill`` and ``gen_quality`` (which needs ``judge_workdir``). Sequence fields are tuples so that
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
      gen_parallel_ks=(2, 4, 8),  # k values of "parallel" and "mdlm"; other methods use `k`
      # Held-out density.
      density_fractions=(0.0, 0.05, 0.25, 0.5),
      density_batches=4,         # held-out batches of density and draft_acceptance
      # Draft acceptance by depth (evaluation/draft_eval.py), on the density batches.
      draft_fractions=(0.05, 0.5),
      draft_temperatures=(1.0, 0.7, 0.2),
      draft_depth=6,
      draft_cuts=16,
  ))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = default_data_config()
  c.data.data_dir = ""  # "" -> WORKDIR/data

  # arch: "two_stream" (ours) or "xlnet" (HF XLNet's network: models.xlnet, docs/xlnet.md).
  c.model = ml_collections.ConfigDict(dict(
      arch="two_stream",
      vocab_size=c.data.get_ref("vocab_size"), max_len=c.data.get_ref("seq_len"),
      num_layers=4, d_model=256, num_heads=4, d_ff=1024, rope_base=10_000.0, alibi=True,
      tie_embeddings=True, num_special_tokens=4, causal_prompt=False, dtype="float32",
      param_dtype="float32", attention_impl="pallas", fused_decoding=False))

  # kind: "asarm" (the joint loss below) or "mdlm" (the masked-diffusion baseline's negative
  # ELBO, asarm_jax/mdlm.py, docs/mdlm.md; it reads no other objective key).
  # Visible fraction range of the joint loss: [0.01, 0.10] for generation models,
  # e.g. [0.15, 0.6] for infilling models. random_order / parallel are ablations.
  # draft_weight > 0 adds the draft term (objectives.draft_rows): draft_cuts cut points per row,
  # draft_depth draft targets after each, weighted by draft_weight against the joint loss.
  c.objective = ml_collections.ConfigDict(dict(
      kind="asarm", fraction_range=(0.01, 0.10), random_order=False, parallel=False,
      draft_weight=0.0, draft_depth=6, draft_cuts=16))

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, schedule="cosine", final_lr_fraction=0.1,
      weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0, accumulation_steps=1,
      max_consecutive_nonfinite=5))

  # Fine-tuning: a workdir or a Hugging Face XLNet folder whose weights (and tokenizer) a new
  # run starts from; its parameters must fit config.model (docs/xlnet.md). "" starts from
  # random weights. A run that has its own checkpoint resumes from that instead.
  c.init_from = ""

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=1000, log_every=50, eval_every=500, eval_batches=4,
      eval_fractions=(0.0, 0.05, 0.25, 0.5), checkpoint_every=500, keep_checkpoints=3,
      time_limit_s=0.0,  # > 0: save and stop after this long, counted once step 1 compiled
      stop_step=0,  # > 0: save and stop at this step; the schedule still spans num_steps
      debug_nan_steps=()))  # test hook: steps whose loss is made NaN (docs/reliability.md)

  # Mesh axis sizes; one may be -1 (the remaining devices). rules map the parameters' logical
  # axes (models.two_stream.PARAM_AXES) to mesh axes; None keeps an axis whole (docs/scaling.md).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules=(
      ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
      ("kv", None), ("position", None), ("norm", None))))

  # The sampler of --mode=sample, of the infills shown after training and of --mode=eval: the
  # fields of sampling.spec.SamplerSpec. method: a name of sampling.METHODS; k: drafts per round
  # (parallel, assd, assd_fused); num_nodes: the tree's node budget N and depth its depth D
  # (tree); ngram: length of the prompt-lookup match that adds a candidate chain to the tree
  # (0: off); temperature 0 = greedy; size_choice: auto's draft size chosen per "row" or per
  # "batch" (a row's tokens then depend on its neighbours). prompt / prompt_file: what
  # --mode=sample fills, slots of them at once (continuous batching; 0: all); num_examples
  # held-out snippets with the middle example_mask_fraction hidden after training.
  # deterministic: decode with the batch-invariant kernels, so a row's tokens never depend on
  # the batch, the slots or the method's call shapes (docs/sampling.md, "Deterministic
  # decoding"; sample and eval modes).
  c.sample = ml_collections.ConfigDict(dict(
      method="assd_fused", k=5, num_nodes=8, depth=6, ngram=2, temperature=1.0,
      size_choice="row", prompt="", prompt_file="", slots=0, num_examples=3,
      example_mask_fraction=0.25, deterministic=False))
  c.eval = default_eval_config()
  return c


def complete(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config a checkpoint carries (``meta["config"]``, a dict), with the keys added since it
  was written at their defaults; its own keys keep their values (also keys this version lacks,
  such as the xlnet arch's). Its sampler keys are read as :class:`SamplerSpec` reads them
  (``tree_depth`` is ``depth``; a tree's ``k`` is ``num_nodes``)."""
  config = base_config().copy_and_resolve_references()
  for name, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(name), ml_collections.ConfigDict):
      config[name].update(value)
    else:
      config[name] = value
  if "sample" in saved:
    if "tree_depth" in config.sample:
      del config.sample["tree_depth"]
    config.sample.update(dataclasses.asdict(SamplerSpec.from_config(saved["sample"])))
  return config


def from_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file given by path (configs/ is not a package)."""
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
