"""Reliability: preemption and exact resume, damaged checkpoints, the NaN guard, validated inputs.

Training runs use configs/demo.py with a tiny model over a folder of ~30 standard-library files
(prepared once per module); the preemption test signals real ``python -m asarm_jax.main``
processes. See docs/reliability.md.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from asarm_jax import checkpoint, data, inference, models, optim, sampling, train, validation
from asarm_jax.sampling import core, prompt
from tests.helpers import (CharTokenizer, copy_stdlib_files, demo_config,  # pylint: disable=unused-import
                           model_config, read_trace, shared_compilation_cache, subprocess_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 40  # of the subprocess runs


def tiny_overrides(tmp: str) -> dict:
  """``--config.`` overrides of configs/demo.py: a tiny model, data under ``tmp``, every step
  logged, a checkpoint every 3 steps, no held-out evaluation and no samples."""
  return {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.d_ff": 64,
          # SentencePiece byte fallback needs 256 + the characters + 4 specials.
          "data.vocab_size": 512, "data.seq_len": 32, "data.source_dirs": (f"{tmp}/src",),
          "data.data_dir": f"{tmp}/data", "train.batch_size": 4, "train.num_steps": NUM_STEPS,
          "train.checkpoint_every": 3, "train.log_every": 1, "train.eval_batches": 0,
          "sample.num_examples": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """``(overrides, tmp)``: ~30 ASCII stdlib files under ``tmp/src``, dataset and tokenizer
  prepared under ``tmp/data`` (shared by every run, so runs only differ by their workdir)."""
  tmp = str(tmp_path_factory.mktemp("reliability"))
  copy_stdlib_files(f"{tmp}/src")
  overrides = tiny_overrides(tmp)
  config = demo_config(overrides)
  data.prepare(config.data, config.data.data_dir)
  return overrides, tmp


@pytest.fixture(scope="module")
def trained(tiny):
  """``(config, workdir, trace)`` of one finished 9-step run (checkpoints 3, 6, 9); tests copy
  the workdir rather than change it."""
  overrides, tmp = tiny
  config = demo_config(dict(overrides, **{"train.num_steps": 9}))
  train.train_and_evaluate(config, f"{tmp}/trained")
  return config, f"{tmp}/trained", read_trace(f"{tmp}/trained")


def restore(workdir: str, config: ml_collections.ConfigDict, step: int | None = None):
  """``Restored`` of ``workdir``'s newest readable checkpoint, or of ``step``."""
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  abstract = jax.eval_shape(functools.partial(train.create_state, model, tx,
                                              seq_len=config.data.seq_len), jax.random.key(0))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  try:
    if step is None:
      return ckpt.restore_latest(abstract)
    return ckpt._restore(step, abstract)  # pylint: disable=protected-access
  finally:
    ckpt.close()


def all_finite(tree) -> bool:
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def assert_trees_equal(a, b) -> None:
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- Preemption: real processes, exact resume ---------------------------------------------------


def launch(overrides: dict, workdir: str) -> subprocess.Popen:
  """``python -m asarm_jax.main`` on configs/demo.py with ``overrides``; output to WORKDIR.log.
  Runs share this process's persistent compilation cache (the same executables, fewer
  compiles)."""
  args = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]
  env = subprocess_env()
  with open(f"{workdir}.log", "ab") as log:  # not a pipe: a full pipe would block the child
    return subprocess.Popen(
        [sys.executable, "-m", "asarm_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *args], cwd=ROOT, env=env, stdout=log, stderr=log)


def signal_at(plans: dict[str, tuple[subprocess.Popen, int, int]], timeout: float = 300) -> None:
  """Sends each ``workdir: (process, step, signal)`` its signal once its trace shows ``step``."""
  pending, deadline = dict(plans), time.time() + timeout
  while pending and time.time() < deadline:
    for workdir, (proc, step, signum) in list(pending.items()):
      trace = read_trace(workdir)
      if trace and trace[-1]["step"] >= step:
        proc.send_signal(signum)
        del pending[workdir]
      elif proc.poll() is not None:
        pytest.fail(f"{workdir} exited ({proc.returncode}) before step {step}")
    time.sleep(0.005)
  assert not pending, f"timed out waiting for {list(pending)}"


def test_preempted_runs_resume_to_the_uninterrupted_run_exactly(tiny):
  """SIGTERM, SIGINT and SIGKILL at random (seeded) steps, then the same command again; and a
  run stopped by ``train.stop_step``, then resumed without it: every metric of every step equals
  the uninterrupted run's (so separate runs from scratch agree too, up to the kill), and so do
  the final state and data position."""
  overrides, tmp = tiny
  rng = random.Random(0)
  signals = {"term": signal.SIGTERM, "int": signal.SIGINT, "kill": signal.SIGKILL}
  steps = {"term": rng.randint(4, 20), "int": rng.randint(4, 20), "kill": rng.randint(8, 30)}
  stop_step = rng.randint(4, NUM_STEPS - 1)
  straight = f"{tmp}/straight"
  runs = {name: f"{tmp}/{name}" for name in (*signals, "phased")}
  # The uninterrupted run first, alone until its first step is logged: it fills the compilation
  # cache, and the other runs start from it instead of compiling the same step again.
  procs = {straight: launch(overrides, straight)}
  deadline = time.time() + 300
  while not read_trace(straight) and procs[straight].poll() is None and time.time() < deadline:
    time.sleep(0.05)
  procs.update({runs[n]: launch(overrides, runs[n]) for n in signals})
  procs[runs["phased"]] = launch({**overrides, "train.stop_step": stop_step}, runs["phased"])
  signal_at({runs[n]: (procs[runs[n]], steps[n], signals[n]) for n in signals})
  rcs = {w: p.wait(timeout=300) for w, p in procs.items()}
  logs = {}
  for name, workdir in runs.items():
    with open(f"{workdir}.log") as f:
      logs[name] = f.read()
  assert rcs == {straight: 0, runs["term"]: 0, runs["int"]: 0, runs["phased"]: 0,
                 runs["kill"]: -signal.SIGKILL}, logs["term"][-3000:]

  config = demo_config(overrides)
  stopped = {}
  for name in ("term", "int"):  # stopped early at a step boundary, saved exactly that step
    stopped[name] = read_trace(runs[name])[-1]["step"]
    assert steps[name] <= stopped[name] < NUM_STEPS
    assert f"Stopped at step {stopped[name]} after a signal" in logs[name]
    assert restore(runs[name], config).step == stopped[name]
  assert f"Stopped at train.stop_step={stop_step};" in logs["phased"]
  assert read_trace(runs["phased"])[-1]["step"] == stop_step
  stopped["phased"] = stop_step
  assert restore(runs["phased"], config).step == stop_step
  assert read_trace(runs["kill"])[-1]["step"] < NUM_STEPS  # killed mid-run
  complete = restore(runs["kill"], config)  # the newest complete checkpoint, if any
  stopped["kill"] = complete.step if complete else None

  resumed = {w: launch(overrides, w) for w in runs.values()}
  assert all(p.wait(timeout=300) == 0 for p in resumed.values())
  for name, step in stopped.items():
    with open(f"{runs[name]}.log") as f:
      assert (f"Resumed from step {step}." in f.read()) == (step is not None)
  expected = read_trace(straight)
  assert [r["step"] for r in expected] == list(range(1, NUM_STEPS + 1))
  final = restore(straight, config)
  assert final.step == NUM_STEPS
  for workdir in runs.values():
    assert read_trace(workdir) == expected  # bit for bit
    again = restore(workdir, config)
    assert again.step == NUM_STEPS and again.data_state == final.data_state
    assert_trees_equal(again.state, final.state)


# --- Damaged checkpoints ------------------------------------------------------------------------


def test_damaged_checkpoints_are_set_aside_and_training_resumes_from_the_last_good_one(
    trained, tmp_path, caplog):
  config, source, first = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  ckpts = f"{workdir}/checkpoints"
  # Step 9 half-written: every file truncated to half. Step 6 silently damaged: bytes of its
  # largest array file overwritten (Orbax alone restores that without complaint).
  for path in glob.glob(f"{ckpts}/9/**", recursive=True):
    if os.path.isfile(path):
      os.truncate(path, os.path.getsize(path) // 2)
  largest = max((p for p in glob.glob(f"{ckpts}/6/state/**", recursive=True)
                 if os.path.isfile(p)), key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    f.write(b"\xff" * 16)
  with open(largest, "rb") as f:
    damaged = f.read()

  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, workdir)
  assert "Checkpoint at step 9 is unreadable" in caplog.text
  assert "Checkpoint at step 6 is unreadable (ValueError: its arrays do not match the " \
         "fingerprint" in caplog.text
  assert "Moved unreadable checkpoint 6" in caplog.text
  assert "resuming from step 3" in caplog.text
  # Nothing deleted: the damaged ones are set aside, the good one and the new ones restore.
  assert sorted(os.listdir(f"{workdir}/checkpoints_corrupt")) == ["6", "9"]
  with open(largest.replace("/checkpoints/6/", "/checkpoints_corrupt/6/"), "rb") as f:
    assert f.read() == damaged
  assert sorted(os.listdir(ckpts)) == ["3", "6", "9"]
  for step in (3, 6, 9):
    assert all_finite(restore(workdir, config, step).state)
  assert read_trace(workdir) == first  # steps 4..9 redone exactly
  assert_trees_equal(restore(workdir, config).state, restore(source, config).state)


def test_unrestorable_workdir_is_refused_without_moving_anything(trained, tmp_path):
  config, source, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  for step in (3, 6, 9):
    os.truncate(f"{workdir}/checkpoints/{step}/data/metadata", 3)
  with pytest.raises(RuntimeError, match="none of the 3 checkpoints in .* restores"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3", "6", "9"]
  assert not os.path.exists(f"{workdir}/checkpoints_corrupt")


# --- NaN / Inf guard ----------------------------------------------------------------------------


def test_nan_updates_are_skipped_counted_and_n_in_a_row_stop_training(tiny, tmp_path, caplog):
  overrides, _ = tiny
  config = demo_config(dict(overrides, **{"train.num_steps": 12, "train.checkpoint_every": 1,
                                          "train.keep_checkpoints": 20,
                                          "optim.max_consecutive_nonfinite": 3}))
  config.train.debug_nan_steps = (2, 5, 6, 7)
  workdir = str(tmp_path / "w")
  with caplog.at_level(logging.WARNING), pytest.raises(
      FloatingPointError, match=r"^3 updates in a row had a non-finite loss or gradient "
      r"\(optim.max_consecutive_nonfinite\) by step 7; stopped without saving. The last "
      r"checkpoint \(step 6\) is intact"):
    train.train_and_evaluate(config, workdir)
  assert "Skipped 1 update(s) with a non-finite loss or gradient by step 2 (1 in total)" \
      in caplog.text
  trace = read_trace(workdir)
  assert [r["step"] for r in trace] == list(range(1, 8))
  assert [np.isnan(r["loss"]) for r in trace] == [False, True, False, False, True, True, True]
  assert [r["nonfinite_skipped"] for r in trace] == [0, 1, 1, 1, 2, 3, 4]
  assert [r["nonfinite_in_a_row"] for r in trace] == [0, 1, 0, 0, 1, 2, 3]

  # Nothing past step 6 was saved; every checkpoint is finite; skipped steps moved nothing.
  assert sorted(int(s) for s in os.listdir(f"{workdir}/checkpoints")) == [1, 2, 3, 4, 5, 6]
  states = {step: restore(workdir, config, step).state for step in range(1, 7)}
  assert all(all_finite(s) for s in states.values())
  for before, skipped in ((1, 2), (4, 5), (5, 6)):
    assert_trees_equal((states[before].params, states[before].opt_state.inner_state),
                       (states[skipped].params, states[skipped].opt_state.inner_state))
  assert any((np.asarray(a) != np.asarray(b)).any() for a, b in
             zip(jax.tree.leaves(states[2].params), jax.tree.leaves(states[3].params)))
  assert int(states[6].opt_state.skipped) == 3 and not bool(states[6].opt_state.tripped)
  assert restore(workdir, config).step == 6


def test_guard_latches_and_never_applies_a_nonfinite_update():
  tx = optim.skip_nonfinite(optax.sgd(1.0), max_consecutive=3)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  nan, one = {"w": jnp.full(3, jnp.nan)}, {"w": jnp.ones(3)}
  seen = []
  for grads in (one, nan, nan, nan, one, one):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    seen.append((float(params["w"][0]), int(state.in_a_row), int(state.skipped),
                 bool(state.tripped)))
  # Applied, skipped x3 (tripped at the third), then finite updates are skipped too: the
  # parameters stay finite until the caller sees ``tripped`` and stops.
  assert seen == [(0.0, 0, 0, False), (0.0, 1, 1, False), (0.0, 2, 2, False),
                  (0.0, 3, 3, True), (0.0, 0, 3, True), (0.0, 0, 3, True)]



@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_guard_skips_a_nonfinite_value_in_any_one_leaf(bad):
  tx = optim.skip_nonfinite(optax.sgd(1.0), max_consecutive=3)
  params = {"a": jnp.ones(3), "b": jnp.ones((2, 2)), "c": jnp.ones(())}
  state = tx.init(params)
  for leaf in params:
    grads = dict(params, **{leaf: params[leaf].at[(0,) * params[leaf].ndim].set(bad)})
    updates, after = tx.update(grads, state, params)
    assert int(after.skipped) == 1 and all(
        not jnp.any(u) for u in jax.tree.leaves(updates)), leaf


# --- Validated inputs ---------------------------------------------------------------------------


def _unlinked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` without field references (model.max_len and data.seq_len set independently)."""
  return ml_collections.ConfigDict(config.to_dict())


@pytest.mark.parametrize("key, value, match", [
    ("model.num_heads", 3, r"model.num_heads=3 does not divide model.d_model=32"),
    ("model.num_heads", 32, r"model.num_heads=32 gives an odd head size 1"),
    ("model.max_len", 16, r"data.seq_len=32 exceeds model.max_len=16"),
    ("train.batch_size", 6, r"train.batch_size=6 is not divisible by optim.accumulation_steps=4"),
    ("objective.fraction_range", (0.5, 0.2), r"objective.fraction_range=\(0.5, 0.2\): lo > hi"),
    ("objective.fraction_range", (-0.1, 0.5), r"objective.fraction_range=\(-0.1, 0.5\): "
                                               r"expected numbers in \[0, 1\]"),
    ("objective.fraction_range", (0.1, 1.5), r"objective.fraction_range=\(0.1, 1.5\)"),
    ("sample.k", 0, r"sample.k=0: expected an int >= 1"),
    ("model.arch", "bogus", r"model.arch='bogus': expected one of \('two_stream', 'xlnet'\)"),
    ("sample.method", "beam", r"sample.method='beam': expected one of \('sequential'"),
    ("sample.temperature", -1.0, r"sample.temperature=-1.0: expected a finite number >= 0"),
    ("sample.temperature", float("nan"), r"sample.temperature=nan: expected a finite number >= 0"),
    ("sample.temperature", float("inf"), r"sample.temperature=inf: expected a finite number >= 0"),
    ("train.time_limit_s", -1.0, r"train.time_limit_s=-1.0: expected a finite number >= 0"),
    ("train.stop_step", -1, r"train.stop_step=-1: expected an int >= 0"),
    ("sample.depth", 0, r"sample.depth=0: expected an int >= 1"),
    ("sample.ngram", -1, r"sample.ngram=-1: expected an int >= 0"),
    ("sample.num_nodes", 0, r"sample.num_nodes=0: expected an int >= 1"),
    ("sample.size_choice", "slot", r"sample.size_choice='slot': expected one of \('row', "),
    ("seed", -1, r"seed=-1: expected an int >= 0"),
    ("optim.learning_rate", float("nan"), r"optim.learning_rate=nan: expected a finite number > 0"),
    ("data.source_dirs", ("/nonexistent/folder",), r"data.source_dirs: '/nonexistent/folder' is "
                                                    r"not a folder"),
    ("optim.schedule", "linear", r"optim.schedule='linear'"),
    ("optim.accumulation_steps", 0, r"optim.accumulation_steps=0"),
    ("model.vocab_size", 600, r"model.vocab_size=600 differs from data.vocab_size=512"),
    ("train.debug_nan_steps", ("3",), r"train.debug_nan_steps"),
])
def test_invalid_config_is_refused_before_anything_is_written(tiny, tmp_path, key, value, match):
  overrides, _ = tiny
  config = _unlinked(demo_config(overrides))
  config.optim.accumulation_steps = 4
  validation.validate_config(config)  # the base is valid
  *path, name = key.split(".")
  functools.reduce(lambda c, k: c[k], path, config)[name] = value
  with pytest.raises(ValueError, match=match) as err:
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert "\n" not in str(err.value)
  assert not os.path.exists(tmp_path / "w")  # no partial output


def test_unknown_config_key_fails_through_main(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "asarm_jax.main", "--config=configs/demo.py",
       f"--workdir={tmp_path}/w", "--config.model.nonexistent=1"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=120)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith("error: unknown config key")
  assert "'nonexistent'" in out.stderr.strip().splitlines()[-1]
  assert not os.path.exists(tmp_path / "w")


def test_workdir_with_another_configs_checkpoint_is_refused_untouched(trained, tmp_path):
  config, source, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  before = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{workdir}/**", recursive=True)}
  other = config.copy_and_resolve_references()
  other.model.d_ff = 128
  with pytest.raises(ValueError, match=r"holds a checkpoint from a different config.model "
                                       r"\(differs in d_ff\); use another --workdir"):
    train.train_and_evaluate(other, workdir)
  assert {p: os.stat(p).st_mtime_ns
          for p in glob.glob(f"{workdir}/**", recursive=True)} == before


# --- Prompts and generate() ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
  model = models.build(model_config(vocab_size=128, num_layers=1, d_model=16, num_heads=2,
                                    d_ff=32, max_len=12))
  return model, jax.jit(model.init)(jax.random.key(0), *models.example_inputs(1, 8, 2))


def test_prompt_validation_messages(small_model):
  model, params = small_model
  tok = CharTokenizer()
  with pytest.raises(sampling.PromptError, match=r"prompt 1 has 13 tokens \(text plus <mask:N> "
                                                  r"slots\); the model context holds 12"):
    sampling.sample_text(model, params, tok, ["ab", "abc<mask:10>"], jax.random.key(0))
  with pytest.raises(sampling.PromptError, match=r"prompt 0 has 4 tokens .*; length=3"):
    sampling.sample_text(model, params, tok, ["ab<mask:2>"], jax.random.key(0), length=3)
  with pytest.raises(sampling.PromptError, match=r"length=20 exceeds the model context of 12"):
    sampling.sample_text(model, params, tok, ["ab<mask:2>"], jax.random.key(0), length=20)
  with pytest.raises(sampling.PromptError, match=r"prompt 0 has token id 233 outside the model "
                                                  r"vocabulary \[0, 128\)"):
    sampling.sample_text(model, params, tok, ["caf\u00e9<mask:2>"], jax.random.key(0))
  with pytest.raises(sampling.PromptError, match=r"malformed '<mask:0>'"):
    sampling.sample_text(model, params, tok, ["a<mask:0>"], jax.random.key(0))


def test_nothing_hidden_is_a_noop_with_a_warning(small_model, monkeypatch, caplog):
  model, params = small_model
  monkeypatch.setattr(core, "generate", lambda *a, **k: pytest.fail("generate was called"))
  with caplog.at_level(logging.WARNING):
    out = sampling.sample_text(model, params, CharTokenizer(), ["def f(x):", ""],
                               jax.random.key(0))
  assert out == [{"text": "def f(x):", "num_calls": 0, "num_generated": 0,
                  "tokens_per_call": 0.0}, {"text": "", "num_calls": 0, "num_generated": 0,
                                            "tokens_per_call": 0.0}]
  assert "prompt 0 has no <mask:N> span" in caplog.text
  assert "prompt 1 has no <mask:N> span" in caplog.text


def test_everything_hidden_generates_unconditionally_and_same_seed_same_sample(small_model):
  model, params = small_model
  tok = CharTokenizer()
  run = lambda seed: sampling.sample_text(model, params, tok, ["<mask:8>", "ab<mask:6>"],
                                          jax.random.key(seed), method="assd", k=3)
  first, again, other = run(0), run(0), run(1)
  assert [r["num_generated"] for r in first] == [8, 6]
  assert all(1 <= r["num_calls"] <= r["num_generated"] for r in first)
  assert len(first[0]["text"]) == 8 and first[1]["text"].startswith("ab")
  assert all(4 <= ord(c) < 128 for c in first[0]["text"])  # samplable ids only
  assert first == again  # same config and seed: the same samples
  assert [r["text"] for r in other] != [r["text"] for r in first]


def test_generate_checks_shapes_and_dtypes(small_model):
  model, params = small_model
  tokens, visible = jnp.zeros((2, 8), jnp.int32), jnp.zeros((2, 8), bool)
  rng = jax.random.key(0)
  cases = [
      (dict(tokens_BxL=jnp.zeros((8,), jnp.int32)), r"tokens_BxL has shape \(8,\); expected "
                                                     r"\(batch, length\)"),
      (dict(tokens_BxL=jnp.zeros((2, 8), jnp.float32)), r"tokens_BxL has dtype float32"),
      (dict(visible_BxL=jnp.zeros((2, 7), bool)), r"visible_BxL has shape \(2, 7\); expected "
                                                   r"\(2, 8\)"),
      (dict(visible_BxL=jnp.zeros((2, 8), jnp.int32)), r"visible_BxL has dtype int32; expected "
                                                        r"bool"),
      (dict(order_BxL=jnp.zeros((2, 8), bool)), r"order_BxL has dtype bool"),
      (dict(length_B=jnp.zeros((3,), jnp.int32)), r"length_B has shape \(3,\)"),
      (dict(method="beam"), r"method='beam'"),
      (dict(k=0), r"k=0; expected an int >= 1"),
      (dict(temperature=float("nan")), r"temperature=nan"),
  ]
  for change, match in cases:
    args = {"tokens_BxL": tokens, "visible_BxL": visible, **change}
    with pytest.raises(ValueError, match=match):
      sampling.generate(model, params, rng=rng, **args)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    texts=st.lists(st.lists(st.sampled_from(["<mask:", ">", "3", "12", "0", "x", "<", ":", "\n",
                                             "\u00e9", "\u20ac", "<mask:2>", "<mask:9>"])
                            | st.text(max_size=3), max_size=6).map("".join),
                   min_size=1, max_size=3),
    vocab_size=st.integers(5, 300), max_len=st.integers(1, 24),
    length=st.none() | st.integers(0, 30))
def test_fuzz_encode_batch_is_valid_or_raises_prompt_error(texts, vocab_size, max_len, length):
  tok = CharTokenizer()
  try:
    tokens_BxL, visible_BxL, length_B = prompt.encode_batch(
        texts, tok, vocab_size=vocab_size, max_len=max_len, length=length)
  except sampling.PromptError as err:
    assert "\n" not in str(err)
    return
  batch, width = tokens_BxL.shape
  assert batch == len(texts) and visible_BxL.shape == tokens_BxL.shape
  assert tokens_BxL.dtype == np.int32 and visible_BxL.dtype == np.bool_
  assert width <= max_len and (length is None or width == length)
  assert ((tokens_BxL >= 0) & (tokens_BxL < vocab_size)).all()
  for b, text in enumerate(texts):
    tokens, visible = sampling.parse(text, tok)
    assert length_B[b] == len(tokens) <= width
    np.testing.assert_array_equal(tokens_BxL[b, :length_B[b]], tokens)
    np.testing.assert_array_equal(visible_BxL[b, :length_B[b]], visible)
    assert not visible_BxL[b, length_B[b]:].any() and (tokens_BxL[b, length_B[b]:] == 0).all()


def test_sample_cli_round_trips_a_prompt_with_two_mask_spans(tiny, trained, tmp_path):
  """``--mode=sample`` on a trained workdir: the visible text comes back around two infills."""
  overrides, _ = tiny
  _, source, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  prompt = "def add(a, b):\n<mask:4>\n    return a<mask:3>\n"
  args = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in dict(overrides, **{"train.num_steps": 9}).items()]
  out = subprocess.run(
      [sys.executable, "-m", "asarm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
       "--mode=sample", *args, f"--config.sample.prompt={prompt}", "--config.sample.k=2"],
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  text, report = out.stdout.split("\n--- ")
  pieces = ["def add(a, b):\n", "\n    return a", "\n"]
  assert text.startswith(pieces[0]) and pieces[1] in text and text.endswith(pieces[2])
  assert text.index(pieces[1]) > len(pieces[0])  # something was infilled between them
  assert report.startswith("assd_fused k=2 T=1: 7 tokens in ")


def test_load_swaps_the_attention_kernel_not_the_params(trained):
  """``inference.load(workdir, attention_impl=...)`` overrides the checkpoint's kernel choice
  (off GPU "pallas" and "cudnn" run as XLA); the restored parameters are the same, a bad name
  is refused."""
  _, workdir, _ = trained
  plain = inference.load(workdir)
  swapped = inference.load(workdir, attention_impl="cudnn")
  assert plain.config.model.attention_impl == "pallas"  # the default
  assert swapped.config.model.attention_impl == "cudnn" and swapped.step == plain.step
  assert_trees_equal(swapped.params, plain.params)
  with pytest.raises(ValueError, match="attention_impl"):
    inference.load(workdir, attention_impl="flash")


def test_init_from_a_workdir_starts_from_its_weights(trained, tmp_path):
  """A new run ``init_from`` another run's workdir starts from that run's newest parameters
  (one step at a negligible learning rate leaves them in place), at step 0 of its own."""
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.init_from, config.train.num_steps, config.optim.learning_rate = workdir, 1, 1e-12
  train.train_and_evaluate(config, str(tmp_path / "finetune"))
  source, run = inference.load(workdir), inference.load(str(tmp_path / "finetune"))
  assert run.step == 1 and run.tokenizer.serialized() == source.tokenizer.serialized()
  for got, want in zip(jax.tree_util.tree_leaves(run.params),
                       jax.tree_util.tree_leaves(source.params)):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_sample_with_auto_says_which_draft_sizes_it_chose(trained, capsys):
  """``--mode=sample`` with ``sample.method=auto`` reports, per prompt, the share of its rounds
  at each draft size (issue 38's last case)."""
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.sample.update(method="auto", k=3, prompt="def f(x):\n<mask:6>\n    return x\n")
  results = inference.sample_prompts(config, workdir)
  report = capsys.readouterr().out.split("\n--- ")[1]
  assert report.startswith("auto k=3 T=1: 6 tokens in ") and "; draft sizes " in report
  assert report.rstrip().endswith(" rounds") and results[0]["num_generated"] == 6
