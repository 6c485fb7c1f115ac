"""``python -m benchmarks NAME [--flags]``: one benchmark, its records written as JSONL.

``NAME`` is a module of :data:`benchmarks.BENCHMARKS` (its records go to
``--records_dir/DATE/NAME.jsonl`` and to stdout, each as soon as its ``run`` yields it, so a
run cut short keeps what it measured) or a tool of :data:`benchmarks.TOOLS`
(``experiment``, ``report``). ``python -m benchmarks NAME --help`` lists a command's flags.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from benchmarks import BENCHMARKS, TOOLS, records


def parser_for(name: str) -> argparse.ArgumentParser:
  """The flags of command ``name`` (a benchmark also gets ``--records_dir``)."""
  module = importlib.import_module(f"benchmarks.{name}")
  parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}",
                                   description=module.__doc__.split("\n\n")[0])
  module.add_arguments(parser)
  if name in BENCHMARKS:
    parser.add_argument("--records_dir", default="runs/records",
                        help="records go to RECORDS_DIR/DATE/NAME.jsonl")
  return parser


def main(argv: list[str]) -> None:
  if not argv or argv[0] not in BENCHMARKS + TOOLS:
    sys.exit(f"{__doc__}\nbenchmarks: {', '.join(BENCHMARKS)}\ntools: {', '.join(TOOLS)}")
  name = argv[0]
  args = vars(parser_for(name).parse_args(argv[1:]))
  module = importlib.import_module(f"benchmarks.{name}")
  if name in TOOLS:
    module.main(**args)
    return
  records_dir = args.pop("records_dir")
  written = set()
  for record in module.run(**args):
    print(json.dumps(record), flush=True)
    path = records.path_for(records_dir, record)
    records.write(path, [record])
    written.add(path)
  for path in sorted(written):
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
