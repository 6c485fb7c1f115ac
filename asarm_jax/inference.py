"""Loading a trained AS-ARM from a workdir and sampling from it (``--mode=sample``).

:func:`load` reads a checkpoint's parameters alone (with the config and tokenizer it carries):
no optimizer is built. The sampler is ``config.sample``'s :class:`SamplerSpec`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from asarm_jax import checkpoint, config_base, data, models, sampling, state
from asarm_jax.sampling.methods import auto
from asarm_jax.sampling.spec import SamplerSpec


class Loaded(NamedTuple):
  model: nn.Module
  params: Any
  tokenizer: data.Tokenizer
  config: ml_collections.ConfigDict
  step: int


def load(workdir: str, attention_impl: str | None = None) -> Loaded:
  """The newest readable checkpoint of ``workdir``, with the config and tokenizer it carries.

  ``attention_impl`` (one of :data:`asarm_jax.models.attention.IMPLEMENTATIONS`) replaces the
  checkpoint's ``model.attention_impl``: the kernel is not part of the parameters, and the
  fastest one for sampling depends on the batch.
  Writes nothing; raises ``FileNotFoundError`` if there is no checkpoint and
  :class:`checkpoint.CheckpointError` if none is readable.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint under {directory}; train first (--mode=train).")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=None, read_only=True)
  try:
    meta = ckpt.read_meta()
    restored = None if meta is None else _restore(ckpt, meta, attention_impl)
    if restored is None:
      raise _none_readable(ckpt, directory)
  finally:
    ckpt.close()
  config, model, found = restored
  logging.info("loaded step %d from %s", found.step, directory)
  tokenizer = data.Tokenizer.from_serialized(checkpoint.tokenizer_bytes(found.meta))
  return Loaded(model, found.params, tokenizer, config, found.step)


def load_tokenizer(workdir: str) -> data.Tokenizer:
  """The tokenizer of ``workdir``'s newest checkpoint whose meta reads (no arrays are read);
  raises as :func:`load` does when there is none."""
  directory = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=None, read_only=True)
  try:
    meta = ckpt.read_meta()
    if meta is None:
      raise _none_readable(ckpt, directory)
  finally:
    ckpt.close()
  return data.Tokenizer.from_serialized(checkpoint.tokenizer_bytes(meta))


def _restore(ckpt: checkpoint.Checkpointer, meta: dict, attention_impl: str | None
             ) -> tuple[ml_collections.ConfigDict, nn.Module, checkpoint.RestoredParams] | None:
  """``(config, model, restored)`` of the newest checkpoint whose parameters read, on this
  process's first device (whatever mesh it was written from)."""
  config = config_base.complete(meta["config"])
  if attention_impl is not None:
    config.model.attention_impl = attention_impl
  model = models.build(config.model)
  restored = ckpt.restore_latest_params(
      state.on_one_device(state.abstract_params(model, config.data.seq_len)))
  return None if restored is None else (config, model, restored)


def _none_readable(ckpt: checkpoint.Checkpointer, directory: str) -> Exception:
  """The error for a checkpoint dir with nothing to load: empty, or every checkpoint unreadable."""
  steps = ckpt.all_steps()
  if not steps:
    return FileNotFoundError(f"no checkpoint under {directory}; train first (--mode=train).")
  return checkpoint.CheckpointError(
      f"all {len(steps)} checkpoints under {directory} (steps {', '.join(map(str, steps))}) are "
      "unreadable (see the warnings above); nothing was changed on disk.")


def _prompts(sample: ml_collections.ConfigDict) -> list[str]:
  """``sample.prompt`` inline, or prompts separated by lines of ``---`` in ``sample.prompt_file``
  (checked by :mod:`asarm_jax.validation` in ``sample`` mode)."""
  if sample.prompt_file:
    with open(sample.prompt_file, encoding="utf-8") as f:
      return [p.strip("\n") for p in f.read().split("\n---\n") if p.strip()]
  return [sample.prompt]


def marked(tokens: np.ndarray, visible: np.ndarray, decode: Callable[[list[int]], str]) -> str:
  """The text of ``tokens`` with every generated (not ``visible``) run between ⟦ and ⟧."""
  out, start = [], 0
  for end in range(1, len(tokens) + 1):
    if end == len(tokens) or visible[end] != visible[start]:
      text = decode([int(t) for t in tokens[start:end]])
      out.append(text if visible[start] else f"\u27e6{text}\u27e7")
      start = end
  return "".join(out)


def ignored_overrides(overrides: dict[str, Any], trained: ml_collections.ConfigDict) -> list[str]:
  """``--config.model.*`` / ``--config.data.*`` overrides that differ from the trained
  checkpoint's config: they cannot apply to it (the checkpoint's values are used)."""
  as_json = lambda value: json.loads(json.dumps(value))  # tuples as the checkpoint's lists
  ignored = []
  for key, value in overrides.items():
    block, _, name = key.partition(".")
    if block in ("model", "data") and name in trained[block]:
      saved = trained[block][name]
      if as_json(saved) != as_json(value):
        ignored.append(f"--config.{key}={value!r} (the checkpoint has {saved!r})")
  return ignored


def sample_prompts(config: ml_collections.ConfigDict, workdir: str,
                   overrides: dict[str, Any] | None = None) -> list[dict]:
  """Fills the ``<mask:N>`` spans of the configured prompts; prints and returns each result
  (``{"text", "num_generated", "num_calls", "tokens_per_call"}``, the text with its filled spans
  marked ⟦ ⟧). ``overrides`` (the command line's) are checked against the checkpoint: a model
  or data override that cannot apply is warned about."""
  loaded = load(workdir)
  for line in ignored_overrides(overrides or {}, loaded.config):
    logging.warning("%s does not apply to the trained checkpoint; sampling uses the "
                    "checkpoint's value.", line)
  spec = SamplerSpec.from_config(config.sample)
  filled_BxL, visible_BxL, length_B, calls_B, rounds_BxS = _fill(
      loaded, _prompts(config.sample), spec, config.seed, config.sample.slots,
      config.sample.deterministic)
  results = []
  for b, size in enumerate(length_B):
    hidden, calls = int((~visible_BxL[b, :size]).sum()), int(calls_B[b])
    if not hidden:
      logging.warning("prompt %d has no <mask:N> span: nothing to generate.", b)
    per_call = hidden / calls if calls else 0.0
    text = marked(filled_BxL[b, :size], visible_BxL[b, :size], loaded.tokenizer.decode)
    chosen = f"; {auto.describe_choices(spec, rounds_BxS[b])}" if spec.method == "auto" else ""
    print(f"{text}\n--- {spec.describe()}: {hidden} tokens in {calls} calls, "
          f"{per_call:.2f} tokens/call{chosen}\n", flush=True)
    results.append({"text": text, "num_generated": hidden, "num_calls": calls,
                    "tokens_per_call": per_call})
  return results


def _fill(loaded: Loaded, texts: list[str], spec: SamplerSpec, seed: int, slots: int,
          deterministic: bool) -> tuple[np.ndarray, ...]:
  """``(filled_BxL, visible_BxL, length_B, calls_B, rounds_BxS)``: the prompts ``texts``
  padded to the model's context (one compiled shape) and their hidden slots generated in one
  dispatch through ``slots`` slots (0: all at once; none if no prompt has a span), with each
  row's calls and (``auto``) rounds at each draft size."""
  tokens_BxL, visible_BxL, length_B = sampling.prompt.encode_batch(
      texts, loaded.tokenizer, vocab_size=loaded.model.vocab_size, max_len=loaded.model.max_len,
      length=loaded.model.max_len)
  if not (~visible_BxL & (np.arange(tokens_BxL.shape[1]) < length_B[:, None])).any():
    return (tokens_BxL, visible_BxL, length_B, np.zeros(len(texts), np.int32),
            np.zeros((len(texts), 0), np.int32))
  out = sampling.generate(loaded.model, loaded.params, jnp.asarray(tokens_BxL),
                          jnp.asarray(visible_BxL), jax.random.PRNGKey(seed),
                          length_B=jnp.asarray(length_B), spec=spec,
                          slots=min(slots, len(texts)) or None, deterministic=deterministic)
  return (np.asarray(out.tokens_BxL), visible_BxL, length_B, np.asarray(out.num_calls_B),
          np.asarray(out.rounds_by_size_BxS))


def show_infills(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Hides a middle span of a few held-out snippets and prints the model's infill beside it."""
  loaded = load(workdir)
  spec = SamplerSpec.from_config(config.sample)
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
                          spec=spec, deterministic=config.sample.deterministic)
  decode = lambda ids: loaded.tokenizer.decode([int(t) for t in ids])
  results = []
  for i, doc in enumerate(documents):
    filled = np.asarray(out.tokens_BxL[i])
    calls = int(out.num_calls_B[i])
    print(f"=== {doc['path']}: {hidden} hidden tokens filled in {calls} calls "
          f"({hidden / max(calls, 1):.2f} tokens/call, {spec.describe()})")
    print(decode(filled[:start]) + "\u27e6" + decode(filled[start:start + hidden]) + "\u27e7"
          + decode(filled[start + hidden:]))
    print(f"--- original middle:\n{decode(tokens_BxL[i, start:start + hidden])}\n")
    results.append({"path": doc["path"], "num_calls": calls, "num_hidden": hidden})
  return results
