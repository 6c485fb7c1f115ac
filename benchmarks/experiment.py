"""Runs an experiment of :mod:`benchmarks.experiments` stage by stage, with resume.

  python -m benchmarks experiment headline --runs=/tmp/runs --out=$OUT [--set limit_s=300]
  python -m benchmarks experiment headline --dry_run     # builds and checks every command

A stage whose done-marker record is in RUNS/stages.jsonl is skipped on a rerun. After every
stage, its logs and outputs (RUNS/out/STAGE/) and the benchmarks' records (RUNS/records/) are
packed into OUT/NAME.tgz: the one file a device call returns. ``--detach`` starts the run from a
copy of the checkout of its own (RUNS/code_*), detached from the calling process, and returns;
``--wait STAGE`` waits (at most ``--wait_s``) until STAGE is done, then packs what is there.
Two detached runs of disjoint ``--stages`` may share RUNS, e.g. one model's evaluations beside
another's training once the stages they read are done (their done-markers are one line each).
"""
from __future__ import annotations

import argparse
import ast
import glob
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

from benchmarks import cli, records
from benchmarks.experiments import EXPERIMENTS, stages as stage_lib

CODE = ("asarm_jax", "benchmarks", "configs", "launch", "tests", "setup.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("experiment", choices=EXPERIMENTS)
  parser.add_argument("--runs", default="runs", help="workdirs, logs and records go here")
  parser.add_argument("--out", default="", help="the packed results go to OUT/NAME.tgz")
  parser.add_argument("--stages", type=cli.list_of(str), default="",
                      help="run only these stages (default: all)")
  parser.add_argument("--set", dest="settings", action="append", default=[],
                      metavar="KEY=VALUE", help="override one of the experiment's KNOBS")
  parser.add_argument("--dry_run", type=cli.flag_bool, default=False,
                      help="build and check every stage's commands, run nothing")
  parser.add_argument("--detach", type=cli.flag_bool, default=False,
                      help="run from a copy of the checkout in the background, and return")
  parser.add_argument("--wait", default="", help="wait until this stage is done, then pack")
  parser.add_argument("--wait_s", type=float, default=540.0)


def knobs_of(experiment: str, settings: list[str]) -> dict[str, Any]:
  """The experiment's ``KNOBS`` with ``KEY=VALUE`` overrides (values parsed as the default's
  type: a Python literal, or the text itself for a string knob)."""
  knobs = dict(importlib.import_module(f"benchmarks.experiments.{experiment}").KNOBS)
  for setting in settings:
    key, _, text = setting.partition("=")
    if key not in knobs:
      raise ValueError(f"{experiment} has no knob {key!r}; knobs: {', '.join(knobs)}")
    knobs[key] = text if isinstance(knobs[key], str) else type(knobs[key])(ast.literal_eval(text))
  return knobs


def build(experiment: str, knobs: dict[str, Any], runs: str) -> list[stage_lib.Stage]:
  """The stages of ``experiment`` with ``knobs``; names are unique."""
  built = importlib.import_module(f"benchmarks.experiments.{experiment}").build(knobs, runs)
  names = [s.name for s in built]
  if len(set(names)) != len(names):
    raise ValueError(f"{experiment}: repeated stage names {names}")
  return built


def check_all(built: list[stage_lib.Stage]) -> None:
  """Checks every command (configs load, overrides and flags exist) and prints them."""
  for stage in built:
    print(f"# stage {stage.name}")
    for command in stage.commands:
      stage_lib.check(command)
      print(shlex.join([f"{k}={v}" for k, v in command.env] + list(command.argv)))


def done_stages(runs: str) -> set[str]:
  """The stages whose done-marker record is in RUNS/stages.jsonl."""
  path = os.path.join(runs, "stages.jsonl")
  return {r["settings"]["stage"] for r in records.read(path)} if os.path.exists(path) else set()


def run_stage(stage: stage_lib.Stage, runs: str, experiment: str, knobs: dict) -> None:
  """Runs the stage's commands (logs in RUNS/out/STAGE/), copies its outputs, marks it done."""
  folder = os.path.join(runs, "out", stage.name)
  os.makedirs(folder, exist_ok=True)
  start, codes = time.time(), []
  for i, command in enumerate(stage.commands):
    with open(os.path.join(folder, f"{i}.log"), "w", encoding="utf-8") as log:
      log.write(" ".join(command.argv) + "\n")
      log.flush()
      proc = subprocess.Popen(command.argv, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **dict(command.env)})
      try:
        codes.append(proc.wait(timeout=command.timeout_s))
      except subprocess.TimeoutExpired:  # the hard stop: SIGTERM checkpoints a training run
        proc.terminate()
        codes.append(proc.wait())
    print(f"{stage.name}: command {i} exited {codes[-1]}", flush=True)
  for pattern in stage.outputs:
    for path in glob.glob(os.path.join(runs, pattern)):  # a path outside RUNS: its base name
      relative = os.path.relpath(path, runs)
      outside = relative.startswith(os.pardir + os.sep)
      name = os.path.basename(path) if outside else relative.replace(os.sep, "__")
      shutil.copy(path, os.path.join(folder, name))
  records.write(os.path.join(runs, "stages.jsonl"), [records.make(
      "experiment_stage", {"experiment": experiment, "stage": stage.name, "knobs": knobs},
      {"seconds": time.time() - start, "exit_codes": codes})])


def pack(runs: str, out: str, experiment: str) -> None:
  """RUNS/out, RUNS/records and RUNS/stages.jsonl into OUT/EXPERIMENT.tgz, written whole under
  another name and then renamed (a run and a ``--wait`` may pack at the same moment)."""
  if not out:
    return
  os.makedirs(out, exist_ok=True)
  fd, partial = tempfile.mkstemp(prefix=f".{experiment}_", suffix=".tgz", dir=out)
  with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
    for name in ("out", "records", "stages.jsonl"):
      if os.path.exists(os.path.join(runs, name)):
        tar.add(os.path.join(runs, name), arcname=name)
  os.replace(partial, os.path.join(out, f"{experiment}.tgz"))


def start_detached(argv: list[str], runs: str) -> None:
  """``python -m benchmarks experiment ARGV`` from a new copy of the checkout, RUNS/code_*, in a
  new session (a later device call may replace or remove the checkout it was started from, and
  another detached run of the same RUNS has its own copy)."""
  os.makedirs(runs, exist_ok=True)
  code = tempfile.mkdtemp(prefix="code_", dir=runs)
  for name in CODE:
    (shutil.copytree if os.path.isdir(name) else shutil.copy)(name, os.path.join(code, name))
  # The log stays open for the child; this process returns at once.
  log = open(os.path.join(runs, "experiment.log"), "a", encoding="utf-8")  # pylint: disable=R1732
  subprocess.Popen([sys.executable, "-m", "benchmarks", "experiment", *argv], cwd=code,
                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                   start_new_session=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(
                       filter(None, (code, os.environ.get("PYTHONPATH"))))})
  print(f"started in the background from {code}; log: {log.name}")


def main(experiment: str, runs: str, out: str, stages: list[str], settings: list[str],
         dry_run: bool, detach: bool, wait: str, wait_s: float) -> None:
  """The ``experiment`` tool: see the module docstring."""
  runs, out = os.path.abspath(runs), out and os.path.abspath(out)
  knobs = knobs_of(experiment, settings)
  built = build(experiment, knobs, runs)
  unknown = set(stages) - {s.name for s in built}
  if unknown:
    raise SystemExit(f"unknown stages {sorted(unknown)}; {experiment} has "
                     f"{', '.join(s.name for s in built)}")
  if dry_run:
    check_all(built)
    return
  if wait:
    deadline = time.time() + wait_s
    while wait not in done_stages(runs) and time.time() < deadline:
      time.sleep(1)
    print(json.dumps(sorted(done_stages(runs))))
    pack(runs, out, experiment)
    return
  if detach:
    start_detached([experiment, f"--runs={runs}", f"--out={out}", f"--stages={','.join(stages)}",
                    *(f"--set={s}" for s in settings)], runs)
    return
  for stage in built:
    if stages and stage.name not in stages or stage.name in done_stages(runs):
      continue
    run_stage(stage, runs, experiment, knobs)
    pack(runs, out, experiment)
