"""Where a profiler trace's time goes, thread by thread.

  python -m benchmarks trace_summary --trace=DIR [--top=8] [--within=time_calls]

Reads the Perfetto JSON (``perfetto_trace.json.gz``) that ``jax.profiler.trace(...,
create_perfetto_trace=True)`` writes, e.g. ``python -m benchmarks task_overhead --trace=DIR``.
One record per thread (the Python main thread, the runtime's threads, each GPU stream): its
events, the busy time (the union of its events' intervals, so nested Python calls count once) as a
share of the trace's span, and the event names with the most time (nested time included).
A device stream busy for a small share of the span, beside a busy host thread, means the
device waits on the host. ``--within NAME`` narrows the span to the events whose name contains
NAME (``time_calls`` for :mod:`benchmarks.task_overhead`: the decoded tasks, not the
profiler's own start and stop).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os

from benchmarks import records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--trace", required=True, help="folder holding perfetto_trace.json.gz")
  parser.add_argument("--top", type=int, default=8, help="event names listed per thread")
  parser.add_argument("--within", default="", help="narrow the span to events named like this")


def busy_us(intervals: list[tuple[float, float]], low: float, high: float) -> float:
  """Length of the union of ``(start, end)`` intervals, clipped to ``[low, high]``."""
  total, end = 0.0, low
  for start, stop in sorted(intervals):
    stop = min(stop, high)
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def load(path: str) -> tuple[list[dict], dict]:
  """The events of the Perfetto JSON at ``path`` and the names of its processes (keyed
  ``(pid, None)``) and threads (keyed ``(pid, tid)``)."""
  with gzip.open(path, "rt", encoding="utf-8") as f:
    events = json.load(f)["traceEvents"]
  names = {}
  for e in events:
    if e.get("ph") == "M" and e["name"] in ("process_name", "thread_name"):
      names[(e["pid"], e.get("tid"))] = e["args"]["name"]
  return events, names


def span(events: list[dict], within: str = "") -> tuple[float, float]:
  """``(low, high)`` in us: from the first start to the last end of the complete events whose
  name contains ``within`` (all of them by default)."""
  marks = [e for e in events if e.get("ph") == "X" and within in e["name"]]
  if not marks:
    raise ValueError("no complete events" + (f" named like {within!r}" if within else ""))
  return min(e["ts"] for e in marks), max(e["ts"] + e["dur"] for e in marks)


def summary(path: str, top: int, within: str = "",
            loaded: tuple[list[dict], dict] | None = None) -> list[dict]:
  """One record per thread of the trace at ``path`` (or of ``loaded``, its :func:`load`
  already read): events, busy time, its top event names."""
  events, names = loaded or load(path)
  low, high = span(events, within)
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and e["ts"] < high and e["ts"] + e["dur"] > low:
      by_thread[(e["pid"], e["tid"])].append(e)
  made = []
  for (pid, tid), group in sorted(by_thread.items(), key=lambda kv: -len(kv[1])):
    busy = busy_us([(e["ts"], e["ts"] + e["dur"]) for e in group], low, high)
    totals = collections.Counter()
    for e in group:
      totals[e["name"]] += e["dur"]
    thread = f"{names.get((pid, None), pid)} / {names.get((pid, tid), tid)}"
    made.append(records.make(
        "trace_summary", {"trace": path, "within": within, "thread": thread},
        {"span_ms": (high - low) / 1e3, "events": len(group), "busy_ms": busy / 1e3,
         "busy_share": busy / (high - low),
         "top_ms": {name[:100]: dur / 1e3 for name, dur in totals.most_common(top)}}))
  return made


def keep_perfetto_only(folder: str) -> None:
  """Deletes every file under ``folder`` but ``perfetto_trace.json.gz``: the profiler's other
  files hold the same timelines in bulkier formats."""
  for parent, _, files in os.walk(folder):
    for name in files:
      if name != "perfetto_trace.json.gz":
        os.remove(os.path.join(parent, name))


def perfetto_files(folder: str) -> list[str]:
  """Every ``perfetto_trace.json.gz`` under ``folder`` (the profiler's traces), sorted."""
  return sorted(glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True))


def run(trace: str, top: int = 8, within: str = "") -> list[dict]:
  """The records of every ``perfetto_trace.json.gz`` under the folder ``trace``."""
  paths = perfetto_files(trace)
  if not paths:
    raise ValueError(f"no perfetto_trace.json.gz under {trace}")
  return [record for path in paths for record in summary(path, top, within)]
