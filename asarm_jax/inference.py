"""Loading a trained AS-ARM from a workdir and sampling from it (``--mode=sample``)."""
from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asarm_jax import checkpoint, data, models, optim, sampling, sharding, train


class Loaded(NamedTuple):
  model: nn.Module
  params: Any
  tokenizer: data.Tokenizer
  config: ml_collections.ConfigDict
  step: int


def load(workdir: str, attention_impl: str | None = None) -> Loaded:
  """The newest readable checkpoint of ``workdir``, with the config and tokenizer it carries.

  ``attention_impl`` ("xla" or "cudnn") replaces the checkpoint's ``model.attention_impl``: the
  kernel is not part of the parameters, and the fastest one for sampling depends on the batch.
  """
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  meta = ckpt.read_meta()
  if meta is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first.")
  config = ml_collections.ConfigDict(meta["config"])
  if attention_impl is not None:
    config.model.attention_impl = attention_impl
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  abstract = jax.eval_shape(functools.partial(train.create_state, model, tx,
                                              seq_len=config.data.seq_len), jax.random.PRNGKey(0))
  # Restore onto this process's first device, whatever mesh the checkpoint was written from.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = ckpt.restore_latest(sharding.with_shardings(
      abstract, jax.tree_util.tree_map(lambda _: device, abstract)))
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint under {workdir}/checkpoints.")
  tokenizer = data.Tokenizer.from_serialized(checkpoint.tokenizer_bytes(restored.meta))
  return Loaded(model, restored.state.params, tokenizer, config, restored.step)


def _prompts(sample: ml_collections.ConfigDict) -> list[str]:
  """``sample.prompt`` inline, or prompts separated by lines of ``---`` in ``sample.prompt_file``."""
  if sample.prompt_file:
    with open(sample.prompt_file) as f:
      return [p.strip("\n") for p in f.read().split("\n---\n") if p.strip()]
  if sample.prompt:
    return [sample.prompt]
  raise ValueError("set --config.sample.prompt='text with <mask:N> spans' or "
                   "--config.sample.prompt_file=PATH.")


def sample_prompts(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Fills the ``<mask:N>`` spans of the configured prompts and prints the results."""
  loaded = load(workdir)
  results = sampling.sample_text(
      loaded.model, loaded.params, loaded.tokenizer, _prompts(config.sample),
      jax.random.PRNGKey(config.seed), method=config.sample.method, k=config.sample.k,
      temperature=config.sample.temperature, length=loaded.model.max_len)
  for r in results:
    print(r["text"])
    print(f"--- {config.sample.method} (k={config.sample.k}): {r['num_generated']} tokens in "
          f"{r['num_calls']} calls, {r['tokens_per_call']:.2f} tokens/call\n")
  return results


def show_infills(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Hides a middle span of a few held-out snippets and prints the model's infill beside it."""
  loaded = load(workdir)
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  length = loaded.model.max_len
  encoded = ((doc, loaded.tokenizer.encode(doc["text"]))
             for doc in data.heldout_documents(config.data, data_dir))
  examples = [(doc, ids[:length]) for doc, ids in encoded
              if len(ids) >= length][:config.sample.num_examples]
  documents = [doc for doc, _ in examples]
  tokens_BxL = np.asarray([ids for _, ids in examples], np.int32).reshape(-1, length)
  visible_BxL = np.ones_like(tokens_BxL, bool)
  hidden = int(config.sample.example_mask_fraction * length)
  start = (length - hidden) // 2
  visible_BxL[:, start:start + hidden] = False
  out = sampling.generate(loaded.model, loaded.params, jnp.asarray(tokens_BxL),
                          jnp.asarray(visible_BxL), jax.random.PRNGKey(config.seed),
                          method=config.sample.method, k=config.sample.k,
                          temperature=config.sample.temperature)
  decode = lambda ids: loaded.tokenizer.decode([int(t) for t in ids])
  results = []
  for i, doc in enumerate(documents):
    filled = np.asarray(out.tokens_BxL[i])
    calls = int(out.num_calls_B[i])
    print(f"=== {doc['path']}: {hidden} hidden tokens filled in {calls} calls "
          f"({hidden / max(calls, 1):.2f} tokens/call, {config.sample.method}, k={config.sample.k})")
    print(decode(filled[:start]) + "\u27e6" + decode(filled[start:start + hidden]) + "\u27e7"
          + decode(filled[start + hidden:]))
    print(f"--- original middle:\n{decode(tokens_BxL[i, start:start + hidden])}\n")
    results.append({"path": doc["path"], "num_calls": calls, "num_hidden": hidden})
  return results
