"""A workdir written before issue 33 (the checkpoint holds the whole TrainState; the config has
``sample.tree_depth`` and sampler keys in ``config.eval``) still loads, samples and resumes.

The fixture ``tests/fixtures/old_workdir`` was made at commit 66cea59 by
``tests/fixtures/make_old_workdir.py``: 2 steps of configs/demo.py with a tiny model; the same
script recorded the metrics of step 3 of an uninterrupted 3-step run in
``old_workdir_expected.json``.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import checkpoint, config_base, inference, optim, sampling
from asarm_jax.sampling.spec import SamplerSpec
from tests.conftest import FAST_COMPILE
from tests.helpers import ROOT, read_trace

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "old_workdir")
with open(os.path.join(ROOT, "tests", "fixtures", "old_workdir_expected.json")) as f:
  EXPECTED = json.load(f)


@pytest.fixture()
def workdir(tmp_path):
  path = str(tmp_path / "old")
  shutil.copytree(FIXTURE, path)
  return path


def test_its_config_reads_with_todays_keys():
  ckpt = checkpoint.Checkpointer(os.path.join(FIXTURE, "checkpoints"), None, read_only=True)
  saved = ckpt.read_meta()["config"]
  ckpt.close()
  assert "tree_depth" in saved["sample"] and "depth" not in saved["sample"]
  config = config_base.complete(saved)
  assert SamplerSpec.from_config(config.sample) == SamplerSpec(
      method="assd_fused", k=5, num_nodes=8, depth=6, ngram=2, temperature=1.0)
  assert "tree_depth" not in config.sample
  assert config.model.num_layers == 2 and config.data.vocab_size == 384


def test_loads_its_parameters_alone_and_samples(workdir, monkeypatch):
  def no_optimizer(*args):
    raise AssertionError("loading parameters built an optimizer")
  monkeypatch.setattr(optim, "make_optimizer", no_optimizer)
  loaded = inference.load(workdir)
  assert loaded.step == 2 and loaded.model.num_layers == 2
  assert loaded.tokenizer.vocab_size == loaded.model.vocab_size == 384
  tokens_BxL = jnp.asarray(np.arange(16, dtype=np.int32)[None] % 300 + 4)
  visible_BxL = jnp.arange(16)[None] < 10
  out = sampling.generate(loaded.model, loaded.params, tokens_BxL, visible_BxL,
                          jax.random.PRNGKey(0), spec=SamplerSpec(method="sequential"))
  filled = np.asarray(out.tokens_BxL)
  np.testing.assert_array_equal(filled[0, :10], np.asarray(tokens_BxL)[0, :10])
  assert (filled[0, 10:] >= loaded.model.num_special_tokens).all()


def test_training_resumes_to_the_uninterrupted_old_run_exactly(workdir):
  """Step 3 resumed by this code from the old step-2 checkpoint equals step 3 of the old code's
  uninterrupted run (its metrics, to the bit). The float32 bits depend on the CPU code XLA
  generates, so this run is a subprocess at XLA's default optimisation level, as the old run
  was (without tests/conftest.py's fast-compile flag or the session's compilation cache)."""
  overrides = dict(EXPECTED["overrides"], **{"train.num_steps": 3})
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip())
  out = subprocess.run(
      [sys.executable, "-m", "asarm_jax.main", f"--config={ROOT}/configs/demo.py",
       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  trace = read_trace(workdir)
  assert [r["step"] for r in trace] == [1, 2, 3]
  assert trace[-1] == EXPECTED["step3"]
