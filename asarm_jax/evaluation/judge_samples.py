"""Judges generation-quality samples written earlier (``eval.gen_samples_only``).

  python -m asarm_jax.evaluation.judge_samples --judge=JUDGE_WORKDIR \
      WORKDIR/eval/gen_samples_TAG.npz ...

The samples carry their tokenizer, so the judge may be trained later and elsewhere (on the same
corpus and tokenizer: a judge with another tokenizer is refused). For each file this writes
``gen_samples_TAG_judged.json`` (the ``gen_quality`` result of ``--mode=eval``) and
``gen_samples_TAG_judged.png`` beside it, and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from asarm_jax import inference
from asarm_jax.evaluation import gen_quality, report


def judge_file(path: str, judge: inference.Loaded, batch_size: int = 64) -> dict:
  """The judged ``gen_quality`` result of one samples file; writes its JSON and plot."""
  samples, tokenizer_proto = gen_quality.read_samples(path)
  if tokenizer_proto != judge.tokenizer.serialized():
    raise ValueError(f"{path}: the samples were written with another tokenizer than the judge's")
  result = gen_quality.judge(judge.model, judge.params, samples, batch_size)
  base = path[:-len(".npz")] if path.endswith(".npz") else path
  gen_quality.plot(result, f"{base}_judged.png")
  result = {**result, "judge_step": judge.step}
  with open(f"{base}_judged.json", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="+", help="gen_samples_*.npz files")
  parser.add_argument("--judge", required=True, help="the judge's workdir")
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args(argv)
  judge = inference.load(args.judge)
  for path in args.files:
    print(f"## {path}\n\n" + report.gen_quality(judge_file(path, judge, args.batch_size)) + "\n")


if __name__ == "__main__":
  main()
