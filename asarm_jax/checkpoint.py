"""Orbax checkpoints: train state, data-iterator state, config and tokenizer, in one step dir.

The ``state`` item is a tree with a ``params`` entry: the whole train state
(:class:`asarm_jax.state.TrainState`) from training, or ``{"params": ...}`` alone from the
converter. :meth:`Checkpointer.restore_latest_params` reads the ``params`` subtree alone (an
Orbax partial restore), so that reading weights never needs an optimizer.

Every checkpoint carries fingerprints of its arrays and of its parameters (in ``meta``),
checked on restore: Orbax notices truncated or missing files, but not overwritten bytes inside
an array file. (Checkpoints written before the parameters' own fingerprint existed restore their
parameters alone without that check.)
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """A checkpoint problem the user must act on; the message is one line."""


class SaveError(CheckpointError):
  """An (asynchronous) checkpoint save failed; raised by the next save or wait."""


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict
  meta: dict


class RestoredParams(NamedTuple):
  step: int
  params: Any
  meta: dict


def meta_for(config: ml_collections.ConfigDict, tokenizer_bytes: bytes) -> dict:
  """What a checkpoint carries besides arrays: the config and the tokenizer model."""
  return {"config": json.loads(config.to_json_best_effort()),
          "tokenizer": base64.b64encode(tokenizer_bytes).decode("ascii")}


def tokenizer_bytes(meta: dict) -> bytes:
  return base64.b64decode(meta["tokenizer"])


@jax.jit
def fingerprint(tree: Any) -> jax.Array:
  """uint32 digest of the bits of every leaf of ``tree``: flipping any single bit changes it.

  Leaf ``i`` contributes ``sum_j bits_j * (2j + 1)`` (odd weights, mod 2^32) and leaves are
  chained by ``* 31``; integer sums are exact, so the digest does not depend on sharding.
  """
  digest = jnp.uint32(0)
  for leaf in jax.tree.leaves(tree):
    leaf = jnp.asarray(leaf)
    if leaf.dtype == jnp.bool_:
      leaf = leaf.astype(jnp.uint8)
    bits = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * leaf.dtype.itemsize}"))
    bits = bits.ravel().astype(jnp.uint32)
    weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
    digest = digest * jnp.uint32(31) + jnp.sum(bits * weights, dtype=jnp.uint32)
  return digest


class Checkpointer:
  """Keeps the ``max_to_keep`` newest checkpoints under ``directory``; saves asynchronously.

  A failed save raises :class:`SaveError` at the latest at the next :meth:`save` or
  :meth:`wait`. ``read_only`` never creates ``directory``.
  """

  def __init__(self, directory: str, max_to_keep: int | None, async_save: bool = True,
               read_only: bool = False):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                             enable_async_checkpointing=async_save))
    self.pending: int | None = None  # the step of a save that may still be in progress

  def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> None:
    """Starts saving ``step``; raises :class:`SaveError` if this or the previous save failed."""
    self.wait()
    meta = dict(meta, fingerprint=int(fingerprint(state)),
                params_fingerprint=int(fingerprint(_params_of(state))))
    self.pending = step
    with self._failure_of(step):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), force=force)

  def _restore(self, step: int, abstract_state: Any) -> Restored:
    """Step ``step``; raises if it is unreadable or its arrays do not match their fingerprint."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    _check_fingerprint(out.state, out.meta.get("fingerprint"))
    return Restored(step, out.state, out.data, out.meta)

  def _restore_params(self, step: int, abstract_params: Any) -> RestoredParams:
    """The ``params`` subtree of step ``step`` alone; raises as :meth:`_restore` does."""
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore()))
    _check_fingerprint(out.state["params"], out.meta.get("params_fingerprint"))
    return RestoredParams(step, out.state["params"], out.meta)

  def _newest_readable(self, restore: Callable[[int], Any]) -> tuple[Any, list[int]]:
    """The newest checkpoint that ``restore(step)`` reads, and the newer steps that did not
    (newest first)."""
    unreadable = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return restore(step), unreadable
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d is unreadable (%s); skipped.", step, cause(e))
        unreadable.append(step)
    return None, unreadable

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """Restores the newest readable checkpoint onto ``abstract_state``'s shapes and shardings.

    A checkpoint that fails to read (truncated or corrupted files) is skipped with a warning and
    the next older one is tried. Nothing is moved or deleted.
    """
    return self._newest_readable(lambda step: self._restore(step, abstract_state))[0]

  def restore_latest_params(self, abstract_params: Any) -> RestoredParams | None:
    """:meth:`restore_latest` of the parameters alone, onto ``abstract_params`` (the
    ``{'params': ...}`` tree of :func:`asarm_jax.state.abstract_params`); the optimizer state
    and the data position are not read."""
    return self._newest_readable(lambda step: self._restore_params(step, abstract_params))[0]

  def resume(self, abstract_state: Any, corrupt_dir: str) -> Restored | None:
    """:meth:`restore_latest` for the process that goes on saving: the unreadable checkpoints
    newer than the restored one are moved into ``corrupt_dir`` (nothing is deleted), so that the
    next saves are numbered after the restored step and ``max_to_keep`` counts good ones only.

    Returns None if there is no checkpoint; raises ``RuntimeError`` (moving nothing) if there
    are checkpoints but none restores, e.g. after a change of the state's structure.
    """
    restored, unreadable = self._newest_readable(lambda step: self._restore(step, abstract_state))
    if restored is None and unreadable:
      raise CheckpointError(f"none of the {len(unreadable)} checkpoints in "
                            f"{self.manager.directory} restores (see the warnings above); move "
                            "them away or use another --workdir.")
    if unreadable:
      if jax.process_index() == 0:
        os.makedirs(corrupt_dir, exist_ok=True)
        for step in unreadable:
          target = _free_path(os.path.join(corrupt_dir, str(step)))
          os.rename(os.path.join(self.manager.directory, str(step)), target)
          logging.warning("Moved unreadable checkpoint %d to %s; resuming from step %d.", step,
                          target, restored.step)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("asarm_checkpoint_set_aside")
      self.manager.reload()
    return restored

  def read_meta(self) -> dict | None:
    """The meta item (config and tokenizer) of the newest checkpoint whose meta reads, without
    the arrays; None if there is none. Unreadable ones are logged at debug level only: the
    restore that follows warns once per skipped step."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # pylint: disable=broad-except
        logging.debug("Checkpoint meta at step %d is unreadable (%s).", step, cause(e))
    return None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def committed(self) -> bool:
    """Whether the pending save's step dir is in place (Orbax renames it when complete), so that
    :meth:`wait` returns at once."""
    return self.pending is not None and os.path.isdir(
        os.path.join(self.manager.directory, str(self.pending)))

  def wait(self) -> int | None:
    """Blocks until the pending save is complete and returns its step (None if there was none);
    raises :class:`SaveError` if it failed."""
    step, self.pending = self.pending, None
    with self._failure_of(step):
      self.manager.wait_until_finished()
    return step

  @contextlib.contextmanager
  def _failure_of(self, step: int | None) -> Iterator[None]:
    """Turns an exception of Orbax's save of ``step`` into a one-line :class:`SaveError`."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self.pending = None
      last = self.manager.latest_step()
      kept = (f"the last good checkpoint is step {last} in {self.manager.directory}"
              if last is not None else "there is no earlier checkpoint")
      raise SaveError(f"saving the checkpoint of step {step} failed ({cause(e)}); {kept}. "
                      "Fix the cause (e.g. free disk space) and rerun to resume.") from e

  def close(self) -> None:
    self.manager.close()


def _params_of(state: Any) -> Any:
  """The ``params`` entry of a saved state: a train state's field or a mapping's key."""
  return state["params"] if isinstance(state, Mapping) else state.params


def _check_fingerprint(tree: Any, expected: int | None) -> None:
  """Raises ``ValueError`` if ``tree`` does not match the ``expected`` fingerprint (if any)."""
  if expected is not None and int(fingerprint(tree)) != expected:
    raise ValueError("its arrays do not match the fingerprint written with them")


def cause(error: BaseException, limit: int = 240) -> str:
  """``Type: message`` of ``error`` on one short line (TensorStore appends long specs)."""
  text = str(error).split("\n")[0].split(" [tensorstore_spec")[0]
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _free_path(path: str) -> str:
  """``path``, or ``path.1``, ``path.2``, ... : the first that does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate
