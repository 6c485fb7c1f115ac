"""Faults and bad inputs as a person meets them (issue 17; the table in docs/reliability.md).

Command-line behaviour is tested on real ``python -m asarm_jax.main`` processes: what the
console shows, the exit status, and what is (not) written. The rest runs in process on the tiny
model of configs/demo.py over ~30 standard-library files.
"""
from __future__ import annotations

import functools
import glob
import io
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import types
from collections.abc import Callable

import jax
import pytest
from tensorboardX.proto import event_pb2

from asarm_jax import (checkpoint, convert, data, inference, main, models, optim, run_io, train,
                       validation, workdir_lock)
from asarm_jax.cli import one_line
from asarm_jax.evaluation import runner
from tests.helpers import (copy_stdlib_files, demo_config, read_trace,  # pylint: disable=unused-import
                           shared_compilation_cache, subprocess_env, tiny_config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("FolderConfig", "Downloading", "\x1b[", "Summary name", "Traceback", "Event loop",
         "tensorstore_spec")


def overrides_for(tmp: str, **changes) -> dict:
  """``--config.`` overrides of configs/demo.py: a tiny model on ``tmp/src``, data in
  ``tmp/data``, 24 steps, a line every 8, a checkpoint every 8, held-out eval every 12."""
  return {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.d_ff": 64,
          "data.vocab_size": 512, "data.seq_len": 32, "data.source_dirs": (f"{tmp}/src",),
          "data.data_dir": f"{tmp}/data", "train.batch_size": 4, "train.num_steps": 24,
          "train.log_every": 8, "train.checkpoint_every": 8, "train.eval_every": 12,
          "train.eval_batches": 1, "sample.num_examples": 0, **changes}


def config_args(overrides: dict) -> list[str]:
  """``--config.KEY=VALUE`` arguments of ``overrides``."""
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


def cli(workdir: str, overrides: dict, *extra: str, prelude: str = "", module: str = "main",
        tmpdir: str | None = None) -> tuple[int, str, str]:
  """``(exit status, stdout, stderr)`` of ``python -m asarm_jax.main`` on configs/demo.py with
  ``overrides``; ``prelude`` is Python run first in the same process (to inject a fault);
  ``module="convert"`` runs the converter (no config); ``tmpdir``: the process's temp folder."""
  entry = (["-c", prelude + f"\nimport runpy; runpy.run_module('asarm_jax.{module}', "
            "run_name='__main__', alter_sys=True)"] if prelude else ["-m", f"asarm_jax.{module}"])
  config = ["--config=configs/demo.py", *config_args(overrides)] if module == "main" else []
  env = subprocess_env(**({"TMPDIR": tmpdir} if tmpdir else {}))
  out = subprocess.run([sys.executable, *entry, *config, f"--workdir={workdir}", *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  """``tmp/src``: 30 stdlib files plus one that is not UTF-8 and one that is blank."""
  tmp = str(tmp_path_factory.mktemp("faults"))
  copy_stdlib_files(f"{tmp}/src")
  with open(f"{tmp}/src/zz_latin1.py", "wb") as f:
    f.write(b"name = 'caf\xe9'\n")
  open(f"{tmp}/src/zz_blank.py", "w").close()
  return tmp


@pytest.fixture(scope="module")
def trained(corpus) -> tuple[dict, str]:
  """``(overrides, workdir)`` of a finished 24-step run (checkpoints 8, 16, 24), in process."""
  overrides = overrides_for(corpus)
  train.train_and_evaluate(demo_config(overrides), f"{corpus}/trained")
  return overrides, f"{corpus}/trained"


def saved_steps(workdir: str) -> list[int]:
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", None, read_only=True)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def truncate_arrays(workdir: str, step: int) -> None:
  """Cuts every array file of checkpoint ``step`` to half (its JSON items stay whole)."""
  for path in glob.glob(f"{workdir}/checkpoints/{step}/state/**/d/*", recursive=True):
    os.truncate(path, os.path.getsize(path) // 2)


# --- What a person sees ---------------------------------------------------------------------------


def test_a_training_run_reads_cleanly_and_sampling_marks_spans(corpus, tmp_path):
  """The run a new user makes, then sampling from it after its newest checkpoint was truncated:
  short lines (progress with ETA, saves, skipped files, a summary), no library chatter."""
  workdir, tmp = str(tmp_path / "w"), tmp_path / "tmp"
  tmp.mkdir()
  overrides = overrides_for(str(tmp_path), **{"data.source_dirs": (f"{corpus}/src",)})
  code, stdout, stderr = cli(workdir, overrides, tmpdir=str(tmp))
  assert code == 0, stderr[-3000:]
  assert not os.listdir(tmp)  # (tfds left an empty tmpXXXXtfds folder per run)
  lines = (stdout + stderr).splitlines()
  assert not [line for line in lines if any(n in line for n in NOISE)], lines
  assert len(lines) <= 16, lines
  text = "\n".join(lines)
  assert re.search(r"warning: python_code: skipped 2 of 32 files, kept 30: 1 blank "
                   r"\(zz_blank.py\), 1 not UTF-8 \(zz_latin1.py\)", text)
  for step in (8, 16, 24):
    assert re.search(rf"\[train\] step {step}/24 \| loss [0-9.]+ \| bits [0-9.]+ \| "
                     r"[0-9.]+k? tokens/s \| "
                     r"ETA [0-9hms]+$", text, re.M), text
  assert "[heldout] step 12 | bits_per_token@0 " in text
  assert re.search(r"saved step 8\n(.*\n)*.*saved step 16\n(.*\n)*.*saved step 24", text)
  assert re.search(rf"done: 24 steps in [0-9hms]+ \| workdir {workdir} \| checkpoint step 24 \| "
                   rf"metrics {workdir}/metrics.jsonl \| tensorboard --logdir "
                   rf"{workdir}/tensorboard"
                   + ("" if shutil.which("tensorboard") else r" \(pip install tensorboard first\)")
                   + "$", text, re.M)

  truncate_arrays(workdir, 24)
  prompt = "def add(a, b):\n<mask:4>\n    return a<mask:3>\n"
  code, stdout, stderr = cli(workdir, dict(overrides, **{"model.d_ff": 128}), "--mode=sample",
                             f"--config.sample.prompt={prompt}", "--config.sample.k=2")
  assert code == 0, stderr[-3000:]
  errors = stderr.splitlines()
  assert not [line for line in errors if any(n in line for n in NOISE)], errors
  assert len(errors) == 3, errors
  assert re.search(r"warning: Checkpoint at step 24 is unreadable \(ValueError: .{20,}\); "
                   r"skipped\.$", errors[0]) and len(errors[0]) < 400
  assert errors[1].endswith(f"loaded step 16 from {workdir}/checkpoints")
  assert errors[2].endswith("warning: --config.model.d_ff=128 (the checkpoint has 64) does not "
                            "apply to the trained checkpoint; sampling uses the checkpoint's "
                            "value.")
  filled, report = stdout.split("\n--- ")
  assert re.fullmatch(r"def add\(a, b\):\n\u27e6[^\u27e6]*\u27e7\n    return a\u27e6[^\u27e6]*"
                      r"\u27e7\n", filled, re.S), filled
  assert re.fullmatch(r"assd_fused k=2 T=1: 7 tokens in \d+ calls, "
                      r"\d\.\d\d tokens/call\n\n", report)


def test_progress_is_a_bar_on_a_terminal():
  class Terminal(io.StringIO):
    def isatty(self):
      return True
  stream = Terminal()
  progress = run_io.Progress(10, 100, stream)
  progress.advance(30)
  progress.log(30, {"loss": 5.25, "bits_per_token": 7.5, "tokens_per_s": 12345.0})
  progress.close()
  shown = stream.getvalue().split("\r")[-1]
  assert re.search(r"train:\s+30%.*\| 30/100 \[\d\d:\d\d<\d\d:\d\d, .*step.*, "
                   r"loss 5.25 \| bits 7.5 \| "
                   r"12.3k tokens/s\]", shown), shown


def read_events(logdir: str) -> list[event_pb2.Event]:
  """Every event of the TFRecord event files under ``logdir``, oldest file first."""
  events = []
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*"),
                     key=lambda p: p.split("tfevents.")[1][:10]):  # by creation time
    with open(path, "rb") as f:
      blob = f.read()
    offset = 0
    while offset < len(blob):
      (length,) = struct.unpack("<Q", blob[offset:offset + 8])
      events.append(event_pb2.Event.FromString(blob[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def tensorboard_view(events: list[event_pb2.Event]) -> dict[str, list[int]]:
  """The steps of every scalar tag as TensorBoard shows them: a ``SessionLog.START`` at step
  ``s`` purges the events of steps ``>= s`` read before it."""
  steps: dict[str, list[int]] = {}
  for event in events:
    if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
      steps = {tag: [s for s in seen if s < event.step] for tag, seen in steps.items()}
    for value in event.summary.value:
      steps.setdefault(value.tag, []).append(event.step)
  return steps


def test_resumed_run_does_not_fold_tensorboard_curves_back(trained, tmp_path):
  """Killed after step 24 was logged but before its checkpoint: the resumed run writes steps
  17..24 again, and TensorBoard shows each step once. Tags are legal TensorBoard names."""
  overrides, source = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  shutil.rmtree(f"{workdir}/checkpoints/24")
  train.train_and_evaluate(demo_config(overrides), workdir)
  events = read_events(f"{workdir}/tensorboard")
  raw = [e.step for e in events for v in e.summary.value if v.tag == "train/loss"]
  assert raw == [8, 16, 24, 24]  # written twice ...
  view = tensorboard_view(events)
  assert view["train/loss"] == [8, 16, 24]  # ... shown once
  assert view["heldout/bits_per_token_0.05"] == [12, 24]
  assert all(re.fullmatch(r"[-/\w.]+", tag) for tag in view), sorted(view)


# --- Faults -------------------------------------------------------------------------------------

FAIL_SAVE = """
import errno, os
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
save = handler.JsonCheckpointHandler._save_fn
async def full_disk(self, item, directory):  # the JSON items of step 16 hit a full disk
  if "/16.orbax-checkpoint-tmp/" in f"{directory}/":
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
  return await save(self, item, directory)
handler.JsonCheckpointHandler._save_fn = full_disk
"""


def test_failed_save_stops_the_run_with_one_line_and_keeps_the_last_good_checkpoint(
    corpus, tmp_path):
  overrides = overrides_for(corpus)
  workdir = str(tmp_path / "w")
  code, stdout, stderr = cli(workdir, overrides, prelude=FAIL_SAVE)
  assert code == 1
  lines = (stdout + stderr).splitlines()
  assert not [line for line in lines if any(n in line for n in NOISE)], lines
  assert len(lines) <= 10, lines
  assert re.fullmatch(
      r"error: saving the checkpoint of step 16 failed \(OSError: \[Errno 28\] No space left "
      rf"on device: '{workdir}/checkpoints/16.orbax-checkpoint-tmp/.*/metadata'\); the last "
      rf"good checkpoint is step 8 in {workdir}/checkpoints\. Fix the cause \(e\.g\. free disk "
      r"space\) and rerun to resume\.", lines[-1]), lines[-1]
  assert "saved step 8" in stderr and "saved step 16" not in stderr and "done:" not in stderr
  assert saved_steps(workdir) == [8]
  assert inference.load(workdir).step == 8  # intact


class InFlight:
  """Wraps the jitted train step (the function jitted with ``donate_argnums=0``): records, at
  each call, how many earlier steps the device has not finished yet."""

  def __init__(self, jit: Callable):
    self.jit, self.counts, self.outputs = jit, [], []

  def __call__(self, fn: Callable, **kwargs) -> Callable:
    jitted = self.jit(fn, **kwargs)
    if kwargs.get("donate_argnums") != 0:
      return jitted
    def step(*args):
      self.counts.append(sum(not x.is_ready() for x in self.outputs))
      out = jitted(*args)
      self.outputs.append(out[1]["loss"])  # the metrics are not donated
      return out
    return step


def test_sigterm_stops_within_two_steps_whatever_log_every(corpus, tmp_path, monkeypatch):
  """With a line every 150 steps, the host keeps at most one step queued behind the one running
  (it used to queue up to ``log_every``), and SIGTERM during step 30 stops the run at most two
  steps later, saved, not at the next logged step."""
  config = demo_config(overrides_for(corpus, **{"train.num_steps": 150, "train.log_every": 150,
                                                "train.checkpoint_every": 150,
                                                "train.eval_batches": 0}))
  in_flight = InFlight(jax.jit)
  monkeypatch.setattr(jax, "jit", in_flight)
  train_iterator = data.train_iterator

  class Signalling:  # SIGTERM as the host fetches the batch of step 30
    def __init__(self, *args, **kwargs):
      self.iterator, self.fetched = train_iterator(*args, **kwargs), 0

    def __next__(self):
      self.fetched += 1
      if self.fetched == 30:
        os.kill(os.getpid(), signal.SIGTERM)
      return next(self.iterator)

    def __getattr__(self, name):  # get_state, set_state
      return getattr(self.iterator, name)

  monkeypatch.setattr(data, "train_iterator", Signalling)
  result = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not result["completed"] and 30 <= result["step"] <= 32, result["step"]
  assert saved_steps(str(tmp_path / "w")) == [result["step"]]
  assert max(in_flight.counts) <= 2, in_flight.counts


def test_time_limit_counts_from_the_first_compiled_step_then_saves_and_stops(
    corpus, tmp_path, monkeypatch):
  """``train.time_limit_s`` excludes compilation, so that runs with and without a warm
  compilation cache get equal training time. A fake clock advances 1 s per batch fetched and
  jumps 100 s during step 1 (its compilation): with a 10 s limit the run stops at step 11 plus
  the usual one or two steps of the stop vote, saved and resumable, not at step 1."""
  config = demo_config(overrides_for(corpus, **{"train.num_steps": 150, "train.log_every": 150,
                                                "train.checkpoint_every": 150,
                                                "train.eval_batches": 0,
                                                "train.time_limit_s": 10.0}))
  fetched = [0]
  train_iterator = data.train_iterator

  class Counting:
    def __init__(self, *args, **kwargs):
      self.iterator = train_iterator(*args, **kwargs)

    def __next__(self):
      fetched[0] += 1
      return next(self.iterator)

    def __getattr__(self, name):
      return getattr(self.iterator, name)

  monkeypatch.setattr(data, "train_iterator", Counting)
  monkeypatch.setattr(train, "time", types.SimpleNamespace(
      perf_counter=lambda: float(fetched[0] + (100 if fetched[0] else 0))))
  workdir = str(tmp_path / "w")
  result = train.train_and_evaluate(config, workdir)
  assert not result["completed"] and 11 <= result["step"] <= 13, result["step"]
  assert saved_steps(workdir) == [result["step"]]
  fetched[0] = 0
  resumed = train.train_and_evaluate(config, workdir)  # the limit applies again, from step 1
  assert result["step"] + 11 <= resumed["step"] <= result["step"] + 13, resumed["step"]


def save_untrained(workdir: str, steps: tuple[int, ...]) -> None:
  """Checkpoints of an initialised tiny model at ``steps`` under ``workdir`` (no training)."""
  config = tiny_config()
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  state = jax.jit(lambda key: train.create_state(model, tx, key, config.data.seq_len))(
      jax.random.PRNGKey(0))
  tokenizer = data.Tokenizer.train(["def f(x):\n    return x\n" * 50], 290, f"{workdir}/tok")
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", None)
  for step in steps:
    ckpt.save(step, state, {"processes": []}, checkpoint.meta_for(config, tokenizer.serialized()))
  ckpt.wait()
  ckpt.close()


def test_all_checkpoints_unreadable_says_so_and_where(tmp_path):
  workdir = str(tmp_path / "w")
  save_untrained(workdir, (1, 2))
  assert inference.load(workdir).step == 2
  for step in (1, 2):  # (arrays are truncated in a subprocess above: TensorStore is noisy)
    os.truncate(f"{workdir}/checkpoints/{step}/meta/metadata", 5)
  with pytest.raises(checkpoint.CheckpointError, match=rf"^all 2 checkpoints under "
                     rf"{workdir}/checkpoints \(steps 1, 2\) are unreadable"):
    inference.load(workdir)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint under .*/missing/checkpoints; "
                                              r"train first \(--mode=train\)"):
    inference.load(str(tmp_path / "missing"))
  assert not os.path.exists(tmp_path / "missing")


# --- Bad input: one line, nothing written ---------------------------------------------------------


@pytest.mark.parametrize("mode, changes, expected", [
    ("train", {"data.seq_len": 64, "model.max_len": 48},
     r"--config.data.seq_len=64 conflicts with --config.model.max_len=48: the two keys are one "
     r"value by default; give one of them, or the same value to both."),
    ("train", {"seed": -1}, r"seed=-1: expected an int >= 0."),
    ("train", {"data.source_dirs": ("/nonexistent",)},
     r"data.source_dirs: '/nonexistent' is not a folder; expected existing folders."),
    ("sample", {"sample.method": "bogus", "sample.prompt": "a<mask:2>"},
     r"sample.method='bogus': expected one of \('sequential', .*\)."),
    ("sample", {"sample.prompt_file": "/nonexistent/prompts.txt"},
     r"sample.prompt_file='/nonexistent/prompts.txt': no such file; expected a file of "
     r"prompts separated by lines of ---."),
    ("sample", {"sample.prompt": "a<mask:2>"},
     r"no checkpoint under .*/w/checkpoints; train first \(--mode=train\)."),
    ("eval", {"sample.temperature": -1.0},
     r"sample.temperature=-1.0: expected a finite number >= 0."),
])
def test_bad_input_on_the_command_line_is_one_line_and_writes_nothing(
    corpus, tmp_path, mode, changes, expected):
  workdir = str(tmp_path / "w")
  code, stdout, stderr = cli(workdir, overrides_for(corpus, **changes), f"--mode={mode}")
  assert code == 1 and not stdout
  assert re.fullmatch("error: " + expected, stderr.strip()), stderr
  assert not os.path.exists(workdir)


def test_verbose_shows_the_traceback(corpus, tmp_path):
  code, _, stderr = cli(str(tmp_path / "w"), overrides_for(corpus, **{"seed": -1}), "--verbose")
  assert code == 1
  assert "Traceback (most recent call last)" in stderr
  assert stderr.strip().endswith("ValueError: seed=-1: expected an int >= 0.")


@pytest.mark.parametrize("mode, changes, expected", [
    ("train", {"optim.learning_rate": -0.1}, r"optim.learning_rate=-0.1: expected a finite "
                                             r"number > 0."),
    ("train", {"model.d_model": 130}, r"model.num_heads=2 gives an odd head size 65 "
                                      r"\(model.d_model=130\); RoPE needs an even one."),
    ("train", {"train.num_steps": 0}, r"train.num_steps=0: expected an int >= 1."),
    ("train", {"objective.fraction_range": (0.5, 0.1)},
     r"objective.fraction_range=\(0.5, 0.1\): lo > hi; expected lo <= hi."),
    ("train", {"data.name": "foo"}, r"data.name='foo': expected one of \('python_code', "
                                    r"'text_files'\)."),
    ("train", {"data.name": "text_files", "data.source_dirs": ()},
     r"data.source_dirs=\(\): data.name='text_files' needs at least one folder, .*"),
    ("train", {"data.source_dirs": ["/tmp"]}, None),  # a list is a sequence: fine
    ("train", {"data.source_dirs": "/tmp"}, r"data.source_dirs='/tmp': expected a tuple of "
                                            r"strings, e.g. \('/path/a',\)."),
    ("sample", {"sample.k": 0, "sample.prompt": "a<mask:2>"}, r"sample.k=0: expected an int >= 1."),
    ("sample", {"sample.temperature": -1.0, "sample.prompt": "a<mask:2>"},
     r"sample.temperature=-1.0: expected a finite number >= 0."),
    ("sample", {"sample.prompt": ""}, r"sample.prompt='': expected text with <mask:N> spans .*"),
    ("sample", {"sample.depth": 0}, r"sample.depth=0: expected an int >= 1."),
    ("sample", {"sample.ngram": -2}, r"sample.ngram=-2: expected an int >= 0."),
    ("sample", {"sample.num_nodes": 65}, r"sample.num_nodes=65: a tree has at most 64 nodes."),
    ("eval", {"sample.k": 0}, r"sample.k=0: expected an int >= 1."),
    ("eval", {"sample.depth": 0}, r"sample.depth=0: expected an int >= 1."),
    ("eval", {"sample.ngram": -1}, r"sample.ngram=-1: expected an int >= 0."),
])
def test_bad_input_of_every_mode_is_refused_before_anything_is_written(
    corpus, tmp_path, mode, changes, expected):
  """The same path as the command line (``main.run``), in process, for the rest of the table
  (and values of any type, as a config file may set them)."""
  config = demo_config(overrides_for(corpus))
  with config.ignore_type():
    for key, value in changes.items():
      *path, name = key.split(".")
      functools.reduce(lambda c, k: c[k], path, config)[name] = value
  if expected is None:
    validation.validate_config(config, mode)
    return
  with pytest.raises(ValueError) as err:
    main.run(mode, config, str(tmp_path / "w"), changes)
  assert re.fullmatch(expected, one_line(err.value)), str(err.value)
  assert "\n" not in str(err.value)
  assert not os.path.exists(tmp_path / "w")


def test_greedy_temperature_and_the_methods_list_are_read_at_validation(corpus, monkeypatch):
  config = demo_config(overrides_for(corpus, **{"sample.temperature": 0.0}))
  validation.validate_config(config, "train")  # 0 = greedy decoding
  config.sample.method = "beam"
  with pytest.raises(ValueError, match="sample.method='beam'"):
    validation.validate_config(config)
  monkeypatch.setattr("asarm_jax.sampling.spec.METHODS", ("sequential", "beam"))
  validation.validate_config(config)


def test_linked_overrides_may_agree_and_a_derived_default_follows(corpus):
  config = demo_config(overrides_for(corpus))
  validation.check_overrides(config, {"data.seq_len": 32, "model.max_len": 32})
  config.data.seq_len = 64  # a derived default: model.max_len follows
  assert config.model.max_len == 64
  validation.check_overrides(config, {"data.seq_len": 64})


def test_quiet_logging_keeps_only_this_projects_records():
  own = logging.LogRecord("x", logging.INFO, os.path.join(main._PACKAGE_DIR, "train.py"), 1,
                          "saved step %d", (8,), None)
  other = logging.LogRecord("x", logging.ERROR, "/site-packages/orbax/checkpoint/x.py", 1,
                            "chatter", (), None)
  assert main._from_this_project(own) and not main._from_this_project(other)
  assert main._Plain().format(own).endswith(" saved step 8")
  own.levelno, own.levelname = logging.WARNING, "WARNING"
  assert main._Plain().format(own).endswith(" warning: saved step 8")


# --- One writer per workdir, interrupts, a newcomer's path (issue 38) -------------------------

HF_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hf_xlnet_tiny")
INTERRUPTED = "interrupted by SIGINT; what was saved is kept: rerun the same command to go on."


def wait_for_step(workdir: str, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
  """Waits until ``workdir``'s checkpoint ``step`` is saved by the running ``proc``."""
  deadline = time.time() + timeout
  while not os.path.isdir(f"{workdir}/checkpoints/{step}"):
    assert proc.poll() is None, f"exited ({proc.returncode}) before step {step}"
    assert time.time() < deadline, f"no checkpoint {step} after {timeout} s"
    time.sleep(0.1)


def test_a_second_writer_exits_at_once_naming_the_holder_and_writes_nothing(corpus, tmp_path):
  """Two trainings on one workdir (two real processes): the second exits with one line naming
  the first's host and pid, before writing a metrics line, an event file, a checkpoint or a
  config; so does the converter, even with --overwrite; sampling reads it meanwhile. The first
  run's checkpoints stay its own, and the converter refuses the finished workdir."""
  workdir = str(tmp_path / "w")
  overrides = overrides_for(corpus, **{"train.num_steps": 100000, "train.log_every": 1,
                                       "train.checkpoint_every": 20, "train.eval_batches": 0,
                                       "train.keep_checkpoints": 1000})  # none deleted meanwhile
  with open(f"{workdir}.log", "wb") as log:
    first = subprocess.Popen([sys.executable, "-m", "asarm_jax.main", "--config=configs/demo.py",
                              f"--workdir={workdir}", *config_args(overrides)],
                             cwd=ROOT, env=subprocess_env(), stdout=log, stderr=log)
  try:
    wait_for_step(workdir, first, 20)
    busy = (rf"error: {workdir} is in use: training \(pid {first.pid} on "
            rf"{re.escape(socket.gethostname())}, since [-0-9: ]+\) holds {workdir}/\.lock; wait "
            r"for it to end, or use another --workdir\.")
    code, stdout, stderr = cli(workdir, dict(overrides, seed=7))
    assert code == 1 and not stdout and re.fullmatch(busy, stderr.strip()), stderr
    code, stdout, stderr = cli(workdir, {}, f"--hf_dir={HF_FIXTURE}", "--max_len=16",
                               "--overwrite", module="convert")
    assert code == 1 and not stdout and re.fullmatch(busy, stderr.strip()), stderr
    code, stdout, stderr = cli(workdir, overrides, "--mode=sample",
                               "--config.sample.prompt=def f(x):<mask:3>")
    assert code == 0 and "\u27e6" in stdout, stderr[-2000:]
    assert len(glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")) == 1
    assert not os.path.exists(f"{workdir}/config.py")
  finally:
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 0
  steps = [record["step"] for record in read_trace(workdir)]
  assert steps == list(range(1, steps[-1] + 1))  # every line the first run's, none dropped
  assert inference.load(workdir).config.seed == 0
  assert sorted(os.listdir(workdir)) == ["checkpoints", "metrics.jsonl", "tensorboard"]

  saved = saved_steps(workdir)
  code, stdout, stderr = cli(workdir, {}, f"--hf_dir={HF_FIXTURE}", "--max_len=16",
                             module="convert")
  assert code == 1 and not stdout
  assert stderr.strip() == (f"error: {workdir} holds checkpoints ({workdir}/checkpoints); convert "
                            "into a new --workdir, or pass --overwrite to delete that run and "
                            "replace it.")
  assert saved_steps(workdir) == saved and not os.path.exists(f"{workdir}/config.py")


def test_converter_overwrites_only_when_asked_and_its_errors_are_one_line(trained, tmp_path):
  overrides, source = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  with pytest.raises(ValueError, match=f"^{workdir} holds checkpoints"):
    convert.convert(HF_FIXTURE, workdir, max_len=16)
  assert saved_steps(workdir) == [8, 16, 24]
  os.makedirs(f"{workdir}/data")  # (the dataset stays)
  convert.convert(HF_FIXTURE, workdir, max_len=16, overwrite=True)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.py", "data"]
  assert saved_steps(workdir) == [0]
  assert inference.load(workdir).config.model.arch == "xlnet"

  code, stdout, stderr = cli(str(tmp_path / "new"), {}, f"--hf_dir={tmp_path}", module="convert")
  assert code == 1 and not stdout
  assert stderr.strip() == (f"error: {tmp_path} has no config.json: expected a Hugging Face "
                            "XLNet folder (config.json, model.safetensors or pytorch_model.bin, "
                            "spiece.model)")
  assert not os.path.exists(tmp_path / "new")


INTERRUPT_AT = {
    # The first example that tfds asks for while it prepares the dataset.
    "data": """
import os, signal
from asarm_jax.data import builders
generate = builders.FolderBuilder._generate_examples
def interrupted(self, files):
  os.kill(os.getpid(), signal.SIGINT)
  yield from generate(self, files)
builders.FolderBuilder._generate_examples = interrupted
""",
    # While the initial state is traced and compiled.
    "compile": """
import os, signal
from asarm_jax import train
create_state = train.create_state
def interrupted(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGINT)
  return create_state(*args, **kwargs)
train.create_state = interrupted
""",
    # Once the sandbox runs HumanEval programs (each would sleep for a minute).
    "eval": """
import glob, os, signal, tempfile, threading, time
from asarm_jax.evaluation import humaneval_infill
humaneval_infill.program_for = lambda task, middle: "import time\\ntime.sleep(60)\\n"
def interrupt():
  while not glob.glob(os.path.join(tempfile.gettempdir(), "asarm-sandbox-*", "program-*")):
    time.sleep(0.05)
  print(f"SIGINT at {time.time()}", flush=True)
  os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
""",
}


@pytest.mark.parametrize("stage", sorted(INTERRUPT_AT))
def test_ctrl_c_at_any_moment_ends_with_one_line_and_leaves_nothing_behind(
    stage, corpus, trained, tmp_path):
  """SIGINT during data preparation, compilation or evaluation: one line, status 130, no
  traceback, nothing in the temp folder; a workdir that got no data is removed again. (SIGINT
  in the training loop saves and stops: test_reliability.py.)"""
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  workdir = str(tmp_path / "w")
  overrides = overrides_for(corpus, **{"data.data_dir": ""})  # the data goes into the workdir
  extra = ()
  if stage == "eval":
    shutil.copytree(trained[1], workdir)
    overrides = trained[0]
    extra = ("--mode=eval", "--config.eval.tasks=('humaneval_single_line',)",
             "--config.eval.humaneval_max_tasks=2", "--config.eval.sandbox_timeout_s=100",
             "--config.sample.method=sequential")
  code, stdout, stderr = cli(workdir, overrides, *extra, prelude=INTERRUPT_AT[stage],
                             tmpdir=str(tmp))
  ended = time.time()
  assert code == 130, stderr[-3000:]
  lines = (stdout + stderr).splitlines()
  assert lines[-1] == INTERRUPTED and not [l for l in lines if any(n in l for n in NOISE)], lines
  assert not os.listdir(tmp)
  if stage == "data":
    assert not os.path.exists(workdir)
  elif stage == "compile":  # the prepared data, and no checkpoint
    assert sorted(os.listdir(workdir)) == ["checkpoints", "data"]
    assert not os.listdir(f"{workdir}/checkpoints")
  else:
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(trained[1]) + ["eval"])
    (interrupted_at,) = re.findall(r"^SIGINT at ([0-9.]+)$", stdout, re.M)
    # The programs were killed, not waited for (60 s); on failure, what the run printed.
    assert ended - float(interrupted_at) < 30, (stdout + stderr)[-3000:]


def test_a_failed_data_build_leaves_no_folder(tmp_path):
  os.makedirs(tmp_path / "src")
  open(tmp_path / "src" / "blank.py", "w").close()
  config = demo_config(overrides_for(str(tmp_path), **{"data.data_dir": ""}))
  with pytest.raises(ValueError, match="no usable file"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  os.makedirs(tmp_path / "data" / "mine")
  with pytest.raises(ValueError, match="no usable file"):
    data.prepare(config.data, str(tmp_path / "data"))
  assert os.listdir(tmp_path / "data") == ["mine"]  # what was there before stays


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/nope.py"],
     "error: config file not loaded: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config=configs/nope.py", "--config.seed=3"],
     "error: config file not loaded: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config=configs/demo.py", "--config.modle.d_model=8"],
     "error: unknown config key 'modle' (did you mean \"model\" instead of \"modle\"?); configs "
     "are locked: see configs/ and asarm_jax/config_base.py for the keys."),
    (["--config=configs/demo.py", "--config.model.d_modl=8"],
     "error: unknown config key 'd_modl' (did you mean \"d_model\" instead of \"d_modl\"?); "
     "configs are locked: see configs/ and asarm_jax/config_base.py for the keys."),
])
def test_a_config_file_that_does_not_load_or_a_mistyped_key_is_one_plain_line(
    args, expected, tmp_path):
  out = subprocess.run([sys.executable, "-m", "asarm_jax.main", f"--workdir={tmp_path}/w", *args],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1 and not out.stdout
  assert out.stderr.strip() == expected
  assert not os.path.exists(tmp_path / "w")


def test_eval_reads_a_held_workdir_prints_its_figures_and_writes_only_under_eval(
    trained, tmp_path, capsys):
  """Evaluation takes no lock (a training may hold it) and writes only under WORKDIR/eval (the
  dataset too, where the workdir has none); it prints each task's table as it ends, then the
  headline figures and where the full tables are."""
  overrides, source = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  config = demo_config(dict(overrides, **{"data.data_dir": "", "eval.tasks": ("density",),
                                          "eval.density_batches": 1}))
  before = sorted(os.listdir(workdir))
  with workdir_lock.hold(workdir, "training"):
    results = runner.run(config, workdir)
  assert sorted(os.listdir(workdir)) == sorted(before + ["eval"])
  assert os.path.isdir(f"{workdir}/eval/data")  # the converted-workdir case: no WORKDIR/data
  out = capsys.readouterr().out
  assert "=== eval task 1/1: density (step 24)\n" in out and "## Held-out density" in out
  headline = out.split(f"headline figures; every table is in {workdir}/eval/results.md\n\n")[1]
  bits = results["tasks"]["density"]["bits_per_token"]
  assert headline == "\n".join(
      ["| task | figure | value |", "|---|---|---|"]
      + [f"| density {order} | bits/token at visible 0/0.05/0.25/0.5 | "
         f"{' / '.join(f'{v:.4g}' for v in by_fraction.values())} |"
         for order, by_fraction in bits.items()]) + "\n"
  os.rename(f"{workdir}/eval/data", f"{workdir}/data")  # as training prepares it
  assert runner.data_dir(config, workdir) == f"{workdir}/data"


def test_progress_in_a_log_file_is_plain_lines():
  stream = io.StringIO()
  with run_io.bar(40, "humaneval_single_line", "row", stream=stream) as progress:
    for _ in range(40):
      progress.update(1)
  lines = stream.getvalue().split("\n")
  assert "\r" not in stream.getvalue() and lines[-1] == ""
  assert lines[0] == "humaneval_single_line: 0/40 (0%) | ?row/s | ETA ?"
  assert re.fullmatch(r"humaneval_single_line: 40/40 \(100%\) \| [0-9.]+k?row/s \| ETA 00:00",
                      lines[-2]), lines
