"""How many tasks' middles are identical between HumanEval middles files (not a test).

  python benchmarks/compare_middles.py BASE_middles.json OTHER_middles.json ...

For greedy decoding (T=0) every exact decoder at every batch size must give the same middles,
up to the device's rounding on near-ties: the check of ``benchmarks/plans/causal_h200.sh``,
stage ``greedy``. Prints, per file against the first, the tasks both hold and how many of
them are identical, and the first few task ids that differ.
"""
import json
import sys

from asarm_jax.evaluation import jsonio


def by_task(path: str) -> dict:
  with jsonio.open_text(path) as f:
    return json.load(f)["by_task"]


def main(paths: list[str]) -> None:
  if len(paths) < 2:
    sys.exit(__doc__)
  base = by_task(paths[0])
  print("| file | tasks in both | identical | first differing tasks |")
  print("|---|---|---|---|")
  for path in paths[1:]:
    other = by_task(path)
    shared = sorted(set(base) & set(other))
    differ = [t for t in shared if base[t] != other[t]]
    print(f"| {path} | {len(shared)} | {len(shared) - len(differ)} | {', '.join(differ[:3])} |")


if __name__ == "__main__":
  main(sys.argv[1:])
