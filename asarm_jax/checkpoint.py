"""Orbax checkpoints: train state, data-iterator state, config and tokenizer, in one step dir."""
from __future__ import annotations

import base64
import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict
  meta: dict


def meta_for(config: ml_collections.ConfigDict, tokenizer_bytes: bytes) -> dict:
  """What a checkpoint carries besides arrays: the config and the tokenizer model."""
  return {"config": json.loads(config.to_json_best_effort()),
          "tokenizer": base64.b64encode(tokenizer_bytes).decode("ascii")}


def tokenizer_bytes(meta: dict) -> bytes:
  return base64.b64decode(meta["tokenizer"])


class Checkpointer:
  """Keeps the ``max_to_keep`` newest checkpoints under ``directory``; saves asynchronously."""

  def __init__(self, directory: str, max_to_keep: int, async_save: bool = True):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """Restores the newest readable checkpoint onto ``abstract_state``'s shapes and shardings.

    A checkpoint that fails to read (truncated or corrupted files) is skipped with a warning and
    the next older one is tried. Nothing is deleted.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        jax.block_until_ready(out.state)
        return Restored(step, out.state, out.data, out.meta)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d is unreadable (%s: %s); trying an older one.",
                        step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return None

  def read_meta(self) -> dict | None:
    """The meta item of the newest checkpoint (config and tokenizer), without the arrays."""
    step = self.manager.latest_step()
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
