"""One record schema for every benchmark and experiment: a JSON object per line (JSONL).

A record is ``{"name", "date", "machine", "accelerator", "commit", "config", "settings",
"metrics"}``: what was measured (``name``), when (ISO date), on what (``machine``: CPU model and
count, no host name; ``accelerator``: ``jax.devices()[0].device_kind``), from which code
(``commit``: the checkout's git revision, or ``"unknown"``), with which model configuration
(``config``) and run settings (``settings``), and the measured ``metrics``. Committed records
live under ``docs/results/records/DATE/NAME.jsonl``; ``python -m benchmarks report`` makes the
docs' tables from them.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any, Iterable

FIELDS = ("name", "date", "machine", "accelerator", "commit", "config", "settings", "metrics")
RECORDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "results",
                           "records")


def machine() -> str:
  """The CPU model and its core count, e.g. ``"AMD EPYC x 2"`` (no host name)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  return f"{model} x {os.cpu_count()}"


def accelerator() -> str:
  """The first JAX device's kind, e.g. ``"NVIDIA H200"`` or ``"cpu"``."""
  import jax  # pylint: disable=g-import-not-at-top  (the schema itself needs no JAX)
  return jax.devices()[0].device_kind


def commit() -> str:
  """``$BENCHMARK_COMMIT`` if set (a copy of the tree whose git history is not its own, such as
  the device machine's, gets it from the launching side), else the git revision of this
  checkout, or ``"unknown"`` outside one."""
  if os.environ.get("BENCHMARK_COMMIT"):
    return os.environ["BENCHMARK_COMMIT"]
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))
                          ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def make(name: str, settings: dict[str, Any], metrics: dict[str, Any],
         config: dict[str, Any] | None = None, **known: str) -> dict[str, Any]:
  """A record of this machine, today and this checkout; ``known`` overrides any of ``date``,
  ``machine``, ``accelerator`` and ``commit`` (for figures measured elsewhere)."""
  unknown = set(known) - {"date", "machine", "accelerator", "commit"}
  if unknown:
    raise ValueError(f"not a record field: {sorted(unknown)}")
  record = {"name": name,
            "date": known.get("date") or datetime.date.today().isoformat(),
            "machine": known.get("machine") or machine(),
            "accelerator": known.get("accelerator") or accelerator(),
            "commit": known.get("commit") or commit(),
            "config": config or {}, "settings": settings, "metrics": metrics}
  return validate(record)


def validate(record: dict[str, Any]) -> dict[str, Any]:
  """``record`` itself, after checking it has exactly the schema's fields with their types."""
  if tuple(record) != FIELDS:
    raise ValueError(f"record fields {list(record)}; expected {list(FIELDS)}")
  for field in FIELDS[:5]:
    if not isinstance(record[field], str) or not record[field]:
      raise ValueError(f"record field {field!r} must be a non-empty string: {record[field]!r}")
  datetime.date.fromisoformat(record["date"])
  for field in FIELDS[5:]:
    if not isinstance(record[field], dict):
      raise ValueError(f"record field {field!r} must be an object: {record[field]!r}")
  return record


def path_for(records_dir: str, record: dict[str, Any]) -> str:
  """``RECORDS_DIR/DATE/NAME.jsonl``, where ``record`` belongs."""
  return os.path.join(records_dir, record["date"], f"{record['name']}.jsonl")


def write(path: str, records: Iterable[dict[str, Any]]) -> None:
  """Appends ``records`` (validated) to the JSONL file ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(validate(record), allow_nan=False, ensure_ascii=False) + "\n")


def read(path: str) -> list[dict[str, Any]]:
  """The validated records of the JSONL file ``path``."""
  with open(path, encoding="utf-8") as f:
    return [validate(json.loads(line)) for line in f if line.strip()]
