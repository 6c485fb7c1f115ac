"""Rewrites the docs' tables from the committed records.

  python -m benchmarks report [--check=true]

In ``docs/**/*.md``, the lines between ``<!-- table:DATE/NAME -->`` and ``<!-- /table:DATE/NAME
-->`` are replaced by the markdown table of ``docs/results/records/DATE/NAME.jsonl``: one row per
record, in file order; the columns are the records' ``settings`` keys then their ``metrics``
keys, in order of first appearance. Numbers are written with 4 significant digits, text as it
is. ``--check=true`` changes nothing and fails where a doc is not what the records make.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
from typing import Any

from benchmarks import cli, records

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")
MARKER = re.compile(r"^(\s*)<!-- table:(\S+) -->$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--docs", default=DOCS, help="folder of the markdown files")
  parser.add_argument("--records_dir", default=records.RECORDS_DIR)
  parser.add_argument("--check", type=cli.flag_bool, default=False,
                      help="fail where a doc differs from its records' tables; write nothing")


def cell(value: Any) -> str:
  """A table cell: numbers with 4 significant digits, text as it is."""
  if isinstance(value, bool) or value is None:
    return str(value).lower() if value is not None else ""
  if isinstance(value, float):
    return format(value, ".4g")
  if isinstance(value, (dict, list)):
    return ", ".join(f"{k}: {cell(v)}" for k, v in value.items()) if isinstance(value, dict) \
        else ", ".join(map(cell, value))
  return str(value)


def table(rows: list[dict]) -> list[str]:
  """The markdown lines of ``rows`` (records)."""
  columns: dict[str, None] = {}
  for part in ("settings", "metrics"):
    for r in rows:
      columns.update(dict.fromkeys(r[part]))
  line = lambda cells: "| " + " | ".join(cells) + " |"
  return [line(columns), "|" + "---|" * len(columns),
          *(line(cell({**r["settings"], **r["metrics"]}.get(c, "")) for c in columns)
            for r in rows)]


def rewrite(text: str, records_dir: str) -> str:
  """``text`` with every marked table made from its records."""
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    out.append(lines[i])
    found = MARKER.match(lines[i])
    i += 1
    if not found:
      continue
    indent, name = found.groups()
    end = f"{indent}<!-- /table:{name} -->"
    try:
      stop = lines.index(end, i)
    except ValueError as e:
      raise ValueError(f"table {name}: no closing {end.strip()}") from e
    made = records.read(os.path.join(records_dir, f"{name}.jsonl"))
    out += [indent + row for row in table(made)] + [end]
    i = stop + 1
  return "\n".join(out)


def main(docs: str, records_dir: str, check: bool) -> None:
  """Rewrites (or, with ``check``, checks) every markdown file under ``docs``."""
  stale = []
  for path in sorted(glob.glob(os.path.join(docs, "**", "*.md"), recursive=True)):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    made = rewrite(text, records_dir)
    if made == text:
      continue
    stale.append(os.path.relpath(path, docs))
    if not check:
      with open(path, "w", encoding="utf-8") as f:
        f.write(made)
  if check and stale:
    raise SystemExit(f"tables differ from their records in {', '.join(stale)}: "
                     "run python -m benchmarks report")
  print(f"{'stale' if check else 'rewritten'}: {', '.join(stale) or 'none'}")
