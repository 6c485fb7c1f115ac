"""Markdown tables of the results dict of :func:`asarm_jax.evaluation.runner.run`."""
from __future__ import annotations

import math
from typing import Any, Sequence


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return "-" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; floats with 4 significant digits, ``None``/NaN as ``-``."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def _humaneval(results: dict) -> str:
  ks = sorted({key for r in results.values() for key in r if key.startswith("pass@")},
              key=lambda key: int(key[5:]))
  header = ["task", "tasks", "samples/task", "too long", "truncated", *ks, "tokens/call"]
  return table(header, [[name, r["num_tasks"], r["num_samples"], r["num_too_long"],
                         r["num_truncated"], *(r.get(k) for k in ks), r["tokens_per_call"]]
                        for name, r in results.items()])


def _text(result: dict) -> str:
  return table(["setting", "stories", "too long", "ROUGE-1", "ROUGE-2", "ROUGE-L", "tokens/call"],
               [[setting, r["num_tasks"], r["num_too_long"], r["rouge1"], r["rouge2"],
                 r["rougeL"], r["tokens_per_call"]] for setting, r in result.items()])


def gen_quality(result: dict) -> str:
  """The generation-quality table (or, for samples not judged yet, their tokens per call)."""
  if "baseline" not in result:  # eval.gen_samples_only: not judged yet
    return (f"Samples in {result['samples']}, not judged ({result['num_prompts']} prompts with "
            f"{result['visible_fraction']:g} of positions visible; judge them with python -m "
            "asarm_jax.evaluation.judge_samples).\n\n"
            + table(["method", "tokens/call"], [[name, r["tokens_per_call"]]
                                                for name, r in result["methods"].items()]))
  header = ["method", "samples", "judge PPL", "PPL sd", "entropy", "t (PPL)", "p (PPL)",
            "t (entropy)", "p (entropy)", "tokens/call"]
  rows = [[name, r["num_samples"], r["judge_ppl"], r["judge_ppl_std"], r["entropy"], r["t_ppl"],
           r["p_ppl"], r["t_entropy"], r["p_entropy"], r["tokens_per_call"]]
          for name, r in result["methods"].items()]
  return (f"Baseline of the t-tests: {result['baseline']}; {result['num_prompts']} prompts with "
          f"{result['visible_fraction']:g} of positions visible.\n\n" + table(header, rows))


def _density(result: dict) -> str:
  bits = result["bits_per_token"]
  orders = list(bits)
  fractions = list(bits[orders[0]])
  return table(["visible fraction", *(f"{o} bits/token" for o in orders)],
               [[f, *(bits[o][f] for o in orders)] for f in fractions])


def _draft_acceptance(result: dict) -> str:
  """One row per (temperature, visible fraction): acceptance rate at depth 1..D."""
  depths = [f"depth {d}" for d in range(1, result["depth"] + 1)]
  rows = [[temperature, fraction, *rates]
          for temperature, by_fraction in result["acceptance"].items()
          for fraction, rates in by_fraction.items()]
  return (f"E_q[min(1, p/q)] of the draft rows by depth ({result['cuts']} cut points per "
          "row).\n\n" + table(["temperature", "visible fraction", *depths], rows))


def sections(tasks: dict) -> list[str]:
  """The markdown section of every task in ``tasks`` (``{name: result}``; HumanEval tasks share
  one table)."""
  parts = []
  humaneval = {name: r for name, r in tasks.items() if name.startswith("humaneval")}
  if humaneval:
    parts.append("## HumanEval infilling\n\n" + _humaneval(humaneval))
  if "text_infill" in tasks:
    parts.append("## Text infilling (ROCStories protocol)\n\n" + _text(tasks["text_infill"]))
  if "gen_quality" in tasks:
    parts.append("## Generation quality\n\n" + gen_quality(tasks["gen_quality"]))
  if "density" in tasks:
    parts.append("## Held-out density\n\n" + _density(tasks["density"]))
  if "draft_acceptance" in tasks:
    parts.append("## Draft acceptance\n\n" + _draft_acceptance(tasks["draft_acceptance"]))
  return parts


def markdown(results: dict) -> str:
  """Sections for every task present in ``results["tasks"]``."""
  title = f"# Evaluation of {results['workdir']} (step {results['step']})"
  return "\n\n".join([title, *sections(results["tasks"])]) + "\n"


def _joined(values: Sequence[Any]) -> str:
  return " / ".join(_cell(v) for v in values)


def _headline_rows(name: str, result: dict) -> list[list[Any]]:
  """``[task, figure, value]`` rows of one task's main figures."""
  if name.startswith("humaneval"):
    ks = sorted((key for key in result if key.startswith("pass@")), key=lambda key: int(key[5:]))
    if not ks:
      return [[name, "middles to score elsewhere", result.get("middles")]]
    return [[name, k, result[k]] for k in ks] + [[name, "tokens/call", result["tokens_per_call"]]]
  if name == "text_infill":
    return [[f"{name} {setting}", "ROUGE-L", r["rougeL"]] for setting, r in result.items()]
  if name == "gen_quality":
    if "baseline" not in result:
      return [[name, "samples, not judged yet", result["samples"]]]
    return [[f"{name} {method}", "judge PPL", r["judge_ppl"]]
            for method, r in result["methods"].items()]
  if name == "density":
    return [[f"{name} {order}", f"bits/token at visible {'/'.join(by_fraction)}",
             _joined(by_fraction.values())]
            for order, by_fraction in result["bits_per_token"].items()]
  if name == "draft_acceptance":
    return [[f"{name} T={temperature}", f"depth-1 acceptance at visible {'/'.join(by_fraction)}",
             _joined(rates[0] for rates in by_fraction.values())]
            for temperature, by_fraction in result["acceptance"].items()]
  return []


def headline(results: dict) -> str:
  """A short table of every task's main figures (the full tables: :func:`markdown`)."""
  rows = [row for name, r in results["tasks"].items() for row in _headline_rows(name, r)]
  return table(["task", "figure", "value"], rows)
