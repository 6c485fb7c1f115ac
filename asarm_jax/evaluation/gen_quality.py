"""Generation quality: judge perplexity and unigram entropy of samples, per sampler.

Prompts are held-out rows with a fraction of positions visible, chosen uniformly at random
with a fixed seed (plus every special token: samplers never produce those). Each sampler
variant fills the same prompts; a *judge* (a left-to-right causal LM trained on the same corpus
with the same tokenizer, ``configs/judge_*.py``) scores every whole sample with nothing visible
but its special tokens. Every variant is compared with the baseline (the first of
``eval.gen_methods``) by Welch's t-test on per-sample perplexity and entropy. The held-out rows
themselves are scored as the ``data`` row.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from asarm_jax import density, sampling
from asarm_jax.evaluation import generation, metrics


class Variant(NamedTuple):
  name: str
  spec: sampling.SamplerSpec


def variants(ecfg: ml_collections.ConfigDict, spec: sampling.SamplerSpec) -> list[Variant]:
  """``parallel`` and ``mdlm`` (tokens per call: their number of calls) once per
  ``eval.gen_parallel_ks``, every other method of ``eval.gen_methods`` once with the settings of
  ``spec`` (its method replaced)."""
  specs = []
  for method in ecfg.gen_methods:
    specs += ([spec.replace(method=method, k=k) for k in ecfg.gen_parallel_ks]
              if method in ("parallel", "mdlm") else [spec.replace(method=method)])
  size = lambda s: {"sequential": "", "tree": f"(N={s.num_nodes})"}.get(s.method, f"(k={s.k})")
  return [Variant(s.method + size(s), s) for s in specs]


def prompt_visible(tokens_NxL: np.ndarray, fraction: float, seed: int,
                   num_special_tokens: int) -> np.ndarray:
  """bool ``N x L``: ``floor(fraction * L)`` uniformly random positions per row, plus specials."""
  num, length = tokens_NxL.shape
  rng = np.random.default_rng(seed)
  visible = np.zeros((num, length), bool)
  for row in visible:
    row[rng.choice(length, int(fraction * length), replace=False)] = True
  return visible | (tokens_NxL < num_special_tokens)


@functools.partial(jax.jit, static_argnames="model")
def _row_nll(model: nn.Module, params: Any, tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed left-to-right NLL (nats) of every row's non-special tokens, and their number."""
  visible_BxL = tokens_BxL < model.num_special_tokens
  logp_BxL = density.log_prob(model, params, tokens_BxL, visible_BxL)
  return -logp_BxL.sum(-1), (~visible_BxL).sum(-1)


def judge_nll(model: nn.Module, params: Any, tokens_NxL: np.ndarray,
              batch_size: int) -> np.ndarray:
  """Mean NLL per token (nats, float64 ``N``) of each row under a left-to-right judge."""
  out = []
  for start in range(0, len(tokens_NxL), batch_size):
    batch = np.zeros((batch_size, tokens_NxL.shape[1]), np.int32)  # all-<pad> rows: ignored
    rows = tokens_NxL[start:start + batch_size]
    batch[:len(rows)] = rows
    nll, count = jax.device_get(_row_nll(model, params, jnp.asarray(batch)))
    out.append(nll[:len(rows)] / np.maximum(count[:len(rows)], 1))
  return np.concatenate(out).astype(np.float64)


class Scores(NamedTuple):
  """Per-sample judge perplexity and unigram entropy (nats), float64 ``N``."""
  ppl: np.ndarray
  entropy: np.ndarray


def score(judge_model: nn.Module, judge_params: Any, samples_NxL: np.ndarray,
          batch_size: int) -> Scores:
  """Judge perplexity and unigram entropy of each sample's non-special tokens."""
  entropy = [metrics.unigram_entropy(row[row >= judge_model.num_special_tokens].tolist())
             for row in samples_NxL]
  return Scores(np.exp(judge_nll(judge_model, judge_params, samples_NxL, batch_size)),
                np.asarray(entropy, np.float64))


def _row(scores: Scores, baseline: Scores) -> dict:
  """Means, the perplexity's standard deviation, and Welch's t-tests against ``baseline``."""
  t_ppl, p_ppl = metrics.welch_t_test(scores.ppl.tolist(), baseline.ppl.tolist())
  t_ent, p_ent = metrics.welch_t_test(scores.entropy.tolist(), baseline.entropy.tolist())
  return {"num_samples": len(scores.ppl), "judge_ppl": float(scores.ppl.mean()),
          "judge_ppl_std": float(scores.ppl.std(ddof=1)), "entropy": float(scores.entropy.mean()),
          "t_ppl": t_ppl, "p_ppl": p_ppl, "t_entropy": t_ent, "p_entropy": p_ent}


class Samples(NamedTuple):
  """One prompt set's samples: ``heldout`` (int32 ``N x L``, the rows the prompts were cut
  from), ``by_variant[name]`` (int32 ``N x L``, prompt and generated tokens), ``info[name]``
  (``method``, ``k``, ``tokens_per_call``) and the prompts' ``visible_fraction``."""
  heldout: np.ndarray
  by_variant: dict[str, np.ndarray]
  info: dict[str, dict]
  visible_fraction: float


def generate(model: nn.Module, params: Any, heldout_NxL: np.ndarray,
             ecfg: ml_collections.ConfigDict, spec: sampling.SamplerSpec, out_dir: str,
             tag: str) -> Samples:
  """Samples of every variant (:func:`variants`) for the prompts cut from ``heldout_NxL``
  (cached per variant in ``out_dir``, file names carrying ``tag``)."""
  if len(heldout_NxL) < 2:
    raise ValueError(f"gen_quality: {len(heldout_NxL)} held-out rows; the t-test needs >= 2")
  visible_NxL = prompt_visible(heldout_NxL, ecfg.gen_visible_fraction, ecfg.seed,
                               model.num_special_tokens)
  prompts = [generation.Row(str(i), heldout_NxL[i], visible_NxL[i], heldout_NxL.shape[1])
             for i in range(len(heldout_NxL))]
  by_variant, info = {}, {}
  for variant in variants(ecfg, spec):
    records = generation.generate_rows(
        model, params, prompts, os.path.join(out_dir, f"gen_{variant.spec.tag()}_{tag}.jsonl"),
        spec=variant.spec, batch_size=ecfg.batch_size, seed=ecfg.seed,
        desc=f"gen_quality {variant.name}").records
    by_variant[variant.name] = np.stack([row.filled(records[row.key]["hidden"])
                                         for row in prompts])
    info[variant.name] = {"method": variant.spec.method, "k": variant.spec.k,
                          "tokens_per_call": generation.tokens_per_call(list(records.values()))}
  return Samples(np.asarray(heldout_NxL, np.int32), by_variant, info, ecfg.gen_visible_fraction)


def check_judge_fits(judge_model: nn.Module, length: int) -> None:
  """Raises unless the judge reads samples of ``length`` tokens."""
  if judge_model.max_len < length:
    raise ValueError(f"the judge's max_len {judge_model.max_len} is shorter than the samples "
                     f"({length} tokens)")


def judge(judge_model: nn.Module, judge_params: Any, samples: Samples, batch_size: int) -> dict:
  """Judge perplexity, entropy and tokens per call of every variant and of the held-out rows
  (``data``), with Welch's t-tests against the first variant (the baseline)."""
  check_judge_fits(judge_model, samples.heldout.shape[1])
  scores = {name: score(judge_model, judge_params, rows, batch_size)
            for name, rows in samples.by_variant.items()}
  scores["data"] = score(judge_model, judge_params, samples.heldout, batch_size)
  info = {**samples.info, "data": {"method": "data", "k": 0, "tokens_per_call": None}}
  baseline = next(iter(samples.by_variant))
  return {"baseline": baseline, "num_prompts": len(samples.heldout),
          "visible_fraction": samples.visible_fraction,
          "methods": {name: {**info[name], **_row(scores[name], scores[baseline])}
                      for name in scores}}


def write_samples(path: str, samples: Samples, tokenizer_proto: bytes) -> None:
  """``samples`` and the serialized tokenizer they are written in, as one ``.npz``: what a
  judge trained later (:mod:`asarm_jax.evaluation.judge_samples`) needs."""
  names = list(samples.by_variant)
  with open(f"{path}.tmp", "wb") as f:
    np.savez_compressed(
        f, heldout=samples.heldout, names=np.array(json.dumps(names)),
        info=np.array(json.dumps(samples.info)), visible_fraction=samples.visible_fraction,
        tokenizer=np.frombuffer(tokenizer_proto, np.uint8),
        **{f"variant{i}": samples.by_variant[name] for i, name in enumerate(names)})
  os.replace(f"{path}.tmp", path)


def read_samples(path: str) -> tuple[Samples, bytes]:
  """The samples of :func:`write_samples` and their serialized tokenizer."""
  with np.load(path) as z:
    names = json.loads(str(z["names"]))
    samples = Samples(z["heldout"], {name: z[f"variant{i}"] for i, name in enumerate(names)},
                      json.loads(str(z["info"])), float(z["visible_fraction"]))
    return samples, z["tokenizer"].tobytes()


def plot(result: dict, path: str) -> None:
  """Judge perplexity (mean, ±1 standard error) per sampler variant, the data as a line; a log
  axis, since exact samplers sit near each other and far below parallel decoding."""
  names = [n for n in result["methods"] if n != "data"]
  rows = [result["methods"][n] for n in names]
  figure = Figure(figsize=(1.2 * len(names) + 2.5, 3.5))
  FigureCanvasAgg(figure)
  ax = figure.add_subplot()
  ax.errorbar(range(len(names)), [r["judge_ppl"] for r in rows],
              yerr=[r["judge_ppl_std"] / math.sqrt(r["num_samples"]) for r in rows],
              fmt="o", capsize=4)
  ax.axhline(result["methods"]["data"]["judge_ppl"], color="gray", linestyle="--",
             label="held-out data")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_yscale("log")
  ax.set_ylabel("judge perplexity")
  ax.set_title(f"{result['num_prompts']} prompts, "
               f"{result['visible_fraction']:g} of positions visible")
  ax.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
