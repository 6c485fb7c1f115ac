"""Infilling tasks as token rows: prefix, ``N`` hidden slots, suffix; and their completions.

The paper's protocol gives the model the reference middle's length: ``N`` is the number of
tokens of ``task.middle``. Prefix, middle and suffix are tokenized separately (as
:func:`asarm_jax.sampling.parse` does), so the middle's tokens never merge with its
neighbours. A row must fit ``max_len``: the prefix loses tokens from its start (left
truncation) and the suffix from its end (right truncation), each side keeping at least half of
the room left by the middle when both are long; a task whose middle alone exceeds ``max_len``
cannot be laid out.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, Sequence

import flax.linen as nn
import numpy as np

from asarm_jax import sampling
from asarm_jax.evaluation import generation


class Task(Protocol):
  """Anything with these fields: ``humaneval_infill.InfillTask``, ``text_infill.TextInfillTask``."""
  task_id: str
  prefix: str
  middle: str
  suffix: str


@dataclasses.dataclass(frozen=True)
class Layout:
  """A task's row: hidden slots ``[start, start + num_hidden)``; ``*_dropped`` count the tokens
  cut off by truncation."""
  tokens: np.ndarray   # int32[max_len], mask_id at hidden slots, pad_id after `length`
  visible: np.ndarray  # bool[max_len]
  length: int
  start: int
  num_hidden: int
  prefix_dropped: int
  suffix_dropped: int


def lay_out(tokenizer: Any, task: Task, max_len: int, show_suffix: bool = True) -> Layout | None:
  """The row of ``task`` (``None`` if its middle has more than ``max_len`` tokens).

  With ``show_suffix=False`` the row ends with the hidden slots: the model sees the prefix
  only, as a left-to-right LM would (the suffix is still part of the program that is run).
  """
  prefix, middle, suffix = (tokenizer.encode(text) if text else []
                            for text in (task.prefix, task.middle,
                                         task.suffix if show_suffix else ""))
  room = max_len - len(middle)
  if room < 0:
    return None
  keep_suffix = min(len(suffix), max(room // 2, room - len(prefix)))
  keep_prefix = min(len(prefix), room - keep_suffix)
  length = keep_prefix + len(middle) + keep_suffix
  tokens = np.full((max_len,), tokenizer.pad_id, np.int32)
  tokens[:length] = (prefix[len(prefix) - keep_prefix:] + [tokenizer.mask_id] * len(middle)
                     + suffix[:keep_suffix])
  visible = np.zeros((max_len,), bool)
  visible[:keep_prefix] = True
  visible[keep_prefix + len(middle):length] = True
  return Layout(tokens, visible, length, keep_prefix, len(middle),
                len(prefix) - keep_prefix, len(suffix) - keep_suffix)


class Completions(NamedTuple):
  """``by_task[task_id]``: sampled middles of every task that fits; ``too_long``: ids of the
  others; ``num_truncated``: tasks whose prefix or suffix was cut; ``seconds``: wall time spent
  generating the rows that were not cached yet (compilation included: warm up on other rows
  first to time the steady state); ``num_generated_rows``: how many rows that was."""
  by_task: dict[str, list[str]]
  too_long: list[str]
  num_truncated: int
  tokens_per_call: float
  seconds: float
  num_generated_rows: int


def complete(model: nn.Module, params: Any, tokenizer: Any, tasks: Sequence[Task],
             cache_path: str, *, spec: sampling.SamplerSpec, num_samples: int, batch_size: int,
             seed: int, desc: str, show_suffix: bool = True,
             rows_per_dispatch: int | None = None) -> Completions:
  """``num_samples`` middles per task, sampled with ``spec`` in rows of ``model.max_len``
  through the resumable cache at ``cache_path`` (keys ``task_id#sample``), ``batch_size``
  slots and ``rows_per_dispatch`` rows per dispatch (:func:`generation.generate_rows`);
  ``show_suffix=False`` hides the suffix (:func:`lay_out`)."""
  layouts = {task.task_id: lay_out(tokenizer, task, model.max_len, show_suffix)
             for task in tasks}
  fitting = [t.task_id for t in tasks if layouts[t.task_id] is not None]
  rows = [generation.Row(f"{task_id}#{s}", layouts[task_id].tokens, layouts[task_id].visible,
                         layouts[task_id].length)
          for task_id in fitting for s in range(num_samples)]
  filled = generation.generate_rows(model, params, rows, cache_path, spec=spec,
                                    batch_size=batch_size, seed=seed, desc=desc,
                                    rows_per_dispatch=rows_per_dispatch)
  records = filled.records
  by_task = {task_id: [tokenizer.decode(records[f"{task_id}#{s}"]["hidden"])
                       for s in range(num_samples)] for task_id in fitting}
  return Completions(
      by_task=by_task,
      too_long=[t.task_id for t in tasks if layouts[t.task_id] is None],
      num_truncated=sum(1 for task_id in fitting if layouts[task_id].prefix_dropped
                        or layouts[task_id].suffix_dropped),
      tokens_per_call=generation.tokens_per_call(list(records.values())),
      seconds=filled.seconds, num_generated_rows=filled.num_generated)
