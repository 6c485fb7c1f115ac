"""Where a profiler trace's time goes, thread by thread (not a test).

  python benchmarks/trace_summary.py DIR/trace [--top=8] [--within=time_calls]

Reads the Perfetto JSON (``perfetto_trace.json.gz``) that ``jax.profiler.trace(...,
create_perfetto_trace=True)`` writes, e.g. ``benchmarks/task_overhead.py --trace``. For every
thread (the Python main thread, the runtime's threads, each GPU stream) it prints the events,
the busy time (the union of its events' intervals, so nested Python calls count once) as a
share of the trace's span, and the event names with the most time (nested time included).
A device stream busy for a small share of the span, beside a busy host thread, means the
device waits on the host. ``--within NAME`` narrows the span to the events whose name contains
NAME (``time_calls`` for ``task_overhead.py``: the decoded tasks, not the profiler's own start
and stop).
"""
import argparse
import collections
import glob
import gzip
import json
import os


def busy_us(intervals: list[tuple[float, float]], low: float, high: float) -> float:
  """Length of the union of ``(start, end)`` intervals, clipped to ``[low, high]``."""
  total, end = 0.0, low
  for start, stop in sorted(intervals):
    stop = min(stop, high)
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summary(path: str, top: int, within: str = "") -> str:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    events = json.load(f)["traceEvents"]
  names = {}
  for e in events:
    if e.get("ph") == "M" and e["name"] in ("process_name", "thread_name"):
      names[(e["pid"], e.get("tid"))] = e["args"]["name"]
  spans = [e for e in events if e.get("ph") == "X"]
  if not spans:
    return f"{path}: no events"
  marks = [e for e in spans if within in e["name"]]
  if not marks:
    return f"{path}: no event named like {within!r}"
  low = min(e["ts"] for e in marks)
  high = max(e["ts"] + e["dur"] for e in marks)
  window = high - low
  by_thread = collections.defaultdict(list)
  for e in spans:
    if e["ts"] < high and e["ts"] + e["dur"] > low:
      by_thread[(e["pid"], e["tid"])].append(e)
  lines = [f"{path}: span {window / 1e3:.2f} ms" + (f" (within {within})" if within else "")]
  for (pid, tid), group in sorted(by_thread.items(), key=lambda kv: -len(kv[1])):
    busy = busy_us([(e["ts"], e["ts"] + e["dur"]) for e in group], low, high)
    lines.append(f"\n{names.get((pid, None), pid)} / {names.get((pid, tid), tid)}: "
                 f"{len(group)} events, busy {busy / 1e3:.2f} ms ({100 * busy / window:.0f}%)")
    totals = collections.Counter()
    for e in group:
      totals[e["name"]] += e["dur"]
    for name, dur in totals.most_common(top):
      lines.append(f"  {dur / 1e3:9.2f} ms  {name[:100]}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace_dir")
  parser.add_argument("--top", type=int, default=8)
  parser.add_argument("--within", default="", help="narrow the span to events named like this")
  args = parser.parse_args()
  paths = glob.glob(os.path.join(args.trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise SystemExit(f"no perfetto_trace.json.gz under {args.trace_dir}")
  for path in sorted(paths):
    print(summary(path, args.top, args.within))


if __name__ == "__main__":
  main()
