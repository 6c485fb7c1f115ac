"""Scale-out: FSDP / tensor / mixed layouts against one device, restores across meshes, the
sampler on sharded parameters, and a real two-process run resumed on one device.

Multi-device checks run in subprocesses on 8 fake CPU devices (several checks per script, to
pay the start-up once). See docs/scaling.md.
"""
import os
import shutil
import socket
import signal
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from asarm_jax import checkpoint, data, inference, models, optim, run_io, sharding, train
from asarm_jax.config_base import base_config
from tests.helpers import (copy_stdlib_files, demo_config, read_trace,  # pylint: disable=unused-import
                           shared_compilation_cache, subprocess_env, tiny_config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"fsdp": (2, 4, 1), "tensor": (2, 1, 4), "mixed": (2, 2, 2)}  # (data, fsdp, tensor)


def run_script(script: str, *args: str, devices: int = 8) -> str:
  """Runs ``script`` with ``devices`` fake CPU devices; returns its stdout, which must end in OK."""
  env = subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.stdout.strip().endswith("OK"), out.stdout[-2000:] + out.stderr[-4000:]
  return out.stdout


def test_every_parameter_has_logical_axes_and_bad_rules_are_refused():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  rules = base_config().mesh.rules
  for tie in (True, False):
    config = tiny_config(batch_size=16)
    config.model.tie_embeddings = tie
    model = models.build(config.model)
    tx = optim.make_optimizer(config.optim, 10)
    abstract = jax.eval_shape(lambda rng: train.create_state(model, tx, rng, 16),
                              jax.random.PRNGKey(0))
    names = [sharding.param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)]
    params = [n for n, _ in jax.tree_util.tree_leaves_with_path(abstract.params)]
    # Parameters and their two Adam moments are named; step and counters are not.
    assert sum(bool(n) for n in names) == 3 * len(params)
    sharding.state_shardings(mesh, abstract, rules)  # raises for a parameter without axes
  assert sharding.logical_axes("params/block_0/mlp_in/kernel", 2) == ("embed", "mlp")
  assert sharding.logical_axes("params/position_embed/embedding", 2) == ("position", "embed")
  with pytest.raises(ValueError, match="PARAM_AXES"):
    sharding.logical_axes("params/block_0/new_layer/kernel", 2)
  with pytest.raises(ValueError, match="PARAM_AXES"):
    sharding.logical_axes("params/block_0/mlp_in/kernel", 3)
  for bad in ((("mpl", "tensor"),), (("mlp", "model"),)):
    with pytest.raises(ValueError, match="mesh.rules"):
      sharding.state_shardings(mesh, abstract, bad)


LAYOUT_SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from asarm_jax import models, optim, sharding, train
    from tests.helpers import tiny_config
    from tests.test_sharding import LAYOUTS
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(batch_size=16)
    config.model.num_layers = 1  # every kind of parameter; a second block compiles longer
    rules = config.mesh.rules
    rng = np.random.default_rng(0)
    batches = [rng.integers(4, 40, (16, 16), dtype=np.int32) for _ in range(2)]
    model = models.build(config.model)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    init = functools.partial(train.create_state, model, tx, seq_len=16)
    loss = train.loss_fn(model, config.objective)
    value_and_grad = lambda params, tokens: jax.value_and_grad(
        lambda p: loss(p, tokens, jax.random.PRNGKey(2))[0])(params)

    def mesh_of(sizes):
      return Mesh(np.asarray(jax.devices()[:np.prod(sizes)]).reshape(sizes), sharding.MESH_AXES)

    def run(sizes):
      mesh = mesh_of(sizes)
      shardings = sharding.state_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)), rules)
      state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
      on_batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
      value, grads = jax.jit(value_and_grad, in_shardings=(shardings.params, on_batch))(
          state.params, batches[0])
      step = jax.jit(train.make_train_step(model, tx, config),
                     in_shardings=(shardings, on_batch, replicated),
                     out_shardings=(shardings, replicated))
      new, metrics = state, []
      for b in batches:
        new, m = step(new, jax.device_put(b, on_batch), jax.random.PRNGKey(1))
        metrics.append({k: float(v) for k, v in m.items()})
      return state, float(value), grads, new, metrics

    def shard_shape(tree, name):
      leaf = dict((sharding.param_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree))
      return leaf["params/" + name].addressable_shards[0].data.shape

    ref_state, ref_loss, ref_grads, ref_new, ref_metrics = run((1, 1, 1))
    expected = {  # shard shapes: mlp_in kernel (32, 64), embedding (40, 32), query (32, 4, 8)
        "fsdp": [(8, 64), (40, 8), (8, 4, 8)], "tensor": [(32, 16), (10, 32), (32, 1, 8)],
        "mixed": [(16, 32), (20, 16), (16, 2, 8)]}
    for layout, sizes in LAYOUTS.items():
      state, value, grads, new, metrics = run(sizes)
      params = state.params
      names = ("block_0/mlp_in/kernel", "embed/embedding", "block_0/attention/query/kernel")
      assert [shard_shape(params, n) for n in names] == expected[layout], layout
      assert len(params["params"]["embed"]["embedding"].addressable_shards) == 8
      assert state.step.sharding.is_fully_replicated
      # Adam's moments are sharded like their parameter (2 per parameter).
      by_name = {sharding.param_name(p): x.sharding
                 for p, x in jax.tree_util.tree_leaves_with_path(params)}
      moments = [(sharding.param_name(p), x.sharding)
                 for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
                 if sharding.param_name(p)]
      assert len(moments) == 2 * len(by_name)
      assert all(s == by_name[n] for n, s in moments), layout
      # The same initial values on every layout; loss, gradients and two steps as on 1 device.
      for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
      for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
      for m, ref in zip(metrics, ref_metrics):
        for key in ("loss", "grad_norm"):
          np.testing.assert_allclose(m[key], ref[key], rtol=1e-5, err_msg=f"{layout} {key}")
      assert metrics[1]["learning_rate"] > 0  # the second update moves the parameters
      for a, b, c in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(ref_new.params),
                         jax.tree.leaves(new.params)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-5, atol=1e-6)
      print(layout, "matches one device")

    # A dimension its mesh axes do not divide, or whose axis an earlier one took, stays whole.
    mesh = mesh_of(LAYOUTS["tensor"])
    assert sharding.mesh_spec(mesh, "params/embed/embedding", (42, 32), rules) == P(None, "fsdp")
    reused = (("embed", "tensor"), ("mlp", "tensor"))
    assert sharding.mesh_spec(mesh, "params/block_0/mlp_in/kernel", (32, 64), reused) == P(
        "tensor", None)
    print("OK")
""")


def test_fsdp_tensor_and_mixed_layouts_match_one_device():
  out = run_script(LAYOUT_SCRIPT)
  assert all(f"{layout} matches one device" in out for layout in LAYOUTS)


RESTORE_SCRIPT = textwrap.dedent("""
    import functools, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from asarm_jax import checkpoint, models, optim, sampling, sharding, train
    from tests.helpers import tiny_config
    config = tiny_config(batch_size=16)
    config.model.num_layers = 1  # every kind of parameter; a second block compiles longer
    model = models.build(config.model)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    init = functools.partial(train.create_state, model, tx, seq_len=16)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))

    def shardings_on(sizes):
      mesh = Mesh(np.asarray(jax.devices()[:np.prod(sizes)]).reshape(sizes), sharding.MESH_AXES)
      return sharding.state_shardings(mesh, abstract, config.mesh.rules)

    # Save on mesh A, restore onto an abstract state carrying mesh B's shardings.
    for i, (a, b) in enumerate((((1, 8, 1), (1, 1, 1)), ((1, 8, 1), (2, 1, 4)),
                                ((1, 1, 1), (2, 2, 2)))):
      state = jax.jit(init, out_shardings=shardings_on(a))(jax.random.PRNGKey(i))
      saver = checkpoint.Checkpointer(f"{sys.argv[1]}/{i}", max_to_keep=1)
      saver.save(7, state, {"doc_index": i}, {"config": {}, "tokenizer": ""})
      saver.wait()
      saver.close()
      target = shardings_on(b)
      restored = checkpoint.Checkpointer(f"{sys.argv[1]}/{i}", max_to_keep=1).restore_latest(
          sharding.with_shardings(abstract, target))
      assert restored.step == 7 and restored.data_state == {"doc_index": i}
      for x, y, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored.state),
                         jax.tree.leaves(target)):
        assert y.sharding == s
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      print(np.prod(a), "->", b, "restored")

    # The sampler on parameters sharded over fsdp and tensor draws the same tokens.
    params = init(jax.random.PRNGKey(3)).params
    sharded = jax.device_put(params, shardings_on((2, 2, 2)).params)
    assert sharded["params"]["block_0"]["mlp_in"]["kernel"].addressable_shards[0].data.shape == (
        16, 32)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(4, 40, (2, 16)), jnp.int32)
    visible = jnp.asarray(rng.random((2, 16)) < 0.3)
    for method in ("sequential", "assd_fused"):
      one = sampling.generate(model, params, tokens, visible, jax.random.PRNGKey(5),
                              method=method, k=3)
      eight = sampling.generate(model, sharded, tokens, visible, jax.random.PRNGKey(5),
                                method=method, k=3)
      np.testing.assert_array_equal(np.asarray(one.tokens_BxL), np.asarray(eight.tokens_BxL))
      np.testing.assert_array_equal(np.asarray(one.num_calls_B), np.asarray(eight.num_calls_B))
      assert not np.array_equal(np.asarray(one.tokens_BxL)[~np.asarray(visible)],
                                np.asarray(tokens)[~np.asarray(visible)])
      print(method, "same tokens")
    print("OK")
""")


def test_restore_across_meshes_and_sampling_with_sharded_params(tmp_path):
  out = run_script(RESTORE_SCRIPT, str(tmp_path))
  assert out.count("restored") == 3 and out.count("same tokens") == 2


# Steps of the two-process runs. A row reads 128 tokens a step: by step 12 the two processes'
# data positions differ (each row stream reads its own documents), which resuming must respect.
NUM_STEPS = 40


def two_process_overrides(tmp: str, num_steps: int = NUM_STEPS) -> dict:
  """configs/demo.py overrides: a tiny model on ~30 stdlib files, a 2x2x2 mesh, batch 8, every
  step logged, a checkpoint at the end (or at a stop) only."""
  return {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.d_ff": 64,
          "data.vocab_size": 512, "data.seq_len": 128, "data.source_dirs": (f"{tmp}/src",),
          "data.data_dir": f"{tmp}/data", "train.batch_size": 8, "train.num_steps": num_steps,
          "train.checkpoint_every": 1000, "train.log_every": 1, "train.eval_batches": 0,
          "sample.num_examples": 0, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def launch_two_processes(overrides: dict, workdir: str) -> list[subprocess.Popen]:
  """``main`` as a (faked) SLURM step of 2 tasks with 4 CPU devices each; process 0 takes
  ``--multihost``, process 1 ``ASARM_MULTIHOST=1``. Output goes to ``WORKDIR.{0,1}.log``."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  args = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]
  procs = []
  for i in range(2):
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                         SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost",
                         SLURM_NTASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_PROCID=str(i),
                         SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port))
    env.pop("ASARM_MULTIHOST", None)
    flag = ["--multihost"] if i == 0 else []
    if i == 1:
      env["ASARM_MULTIHOST"] = "1"
    with open(f"{workdir}.{i}.log", "ab") as log:  # a file, not a pipe that could fill up
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "asarm_jax.main", "--config=configs/demo.py",
           f"--workdir={workdir}", *flag, *args], env=env, cwd=ROOT, stdout=log, stderr=log))
  return procs


def wait_all(procs: list[subprocess.Popen], workdir: str) -> list[str]:
  """Waits for ``procs``; returns their logs, asserting that both exited 0."""
  codes = [p.wait(timeout=300) for p in procs]
  logs = []
  for i in range(len(procs)):
    with open(f"{workdir}.{i}.log") as f:
      logs.append(f.read())
  assert codes == [0] * len(procs), logs[0][-3000:] + logs[-1][-3000:]
  return logs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """``(overrides, workdir, logs, trace)`` of one uninterrupted ``NUM_STEPS``-step run of 2
  processes (``main --multihost`` / ``ASARM_MULTIHOST=1`` under a faked SLURM step of 2 tasks
  with 4 CPU devices each). Tests copy the workdir rather than change it."""
  tmp = str(tmp_path_factory.mktemp("two_processes"))
  copy_stdlib_files(f"{tmp}/src")
  overrides = two_process_overrides(tmp)
  data.prepare(demo_config(overrides).data, f"{tmp}/data")  # once, before the processes
  logs = wait_all(launch_two_processes(overrides, f"{tmp}/straight"), f"{tmp}/straight")
  return overrides, f"{tmp}/straight", logs, read_trace(f"{tmp}/straight")


def test_two_processes_read_their_own_shards_then_resume_on_one_device(two_process_run, tmp_path):
  """``main --multihost`` / ``ASARM_MULTIHOST=1`` under a (faked) SLURM step of 2 tasks with 4
  CPU devices each: the global batch is [process 0's rows; process 1's rows], only process 0
  logs, and the checkpoint of the 8-device mesh resumes in this 1-device process."""
  overrides, source, logs, trace = two_process_run
  workdir = str(tmp_path / "work")
  shutil.copytree(source, workdir)
  assert f"[train] step {NUM_STEPS}" in logs[0] and "[train] step" not in logs[1]  # process 0 logs
  assert [r["step"] for r in trace] == list(range(1, NUM_STEPS + 1))  # written once, by process 0

  # Step 1 on one device with the batch made of each process's first local batch, in order.
  config = demo_config(overrides)
  tokenizer = data.prepare(config.data, config.data.data_dir)
  rows = [next(data.train_iterator(config.data, tokenizer, config.data.data_dir, batch_size=4,
                                   seed=config.seed, shard_index=i, shard_count=2))
          for i in range(2)]
  assert not np.array_equal(rows[0], rows[1])
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  state = jax.jit(lambda rng: train.create_state(model, tx, rng, config.data.seq_len))(
      jax.random.PRNGKey(config.seed))
  _, metrics = jax.jit(train.make_train_step(model, tx, config))(
      state, np.concatenate(rows), jax.random.PRNGKey(config.seed + 1))
  np.testing.assert_allclose(float(metrics["loss"]), trace[0]["loss"], rtol=1e-5)

  # Topology change: the checkpoint of 2 processes x 4 devices loads here, on one device, for
  # sampling, and training goes on from it.
  loaded = inference.load(workdir)
  assert loaded.step == NUM_STEPS
  assert len(loaded.params["params"]["embed"]["embedding"].devices()) == 1
  result = train.train_and_evaluate(
      demo_config(dict(overrides, **{"train.num_steps": NUM_STEPS + 2, "mesh.data": -1,
                                     "mesh.fsdp": 1, "mesh.tensor": 1})), workdir)
  assert result["completed"] and result["step"] == NUM_STEPS + 2
  resumed = read_trace(workdir)
  assert [r["step"] for r in resumed] == list(range(1, NUM_STEPS + 3))
  assert resumed[:NUM_STEPS] == trace  # kept: it resumed from the last step (a fresh start
  # rewrites step 1)


def test_two_processes_stop_together_on_one_signal_and_resume_exactly(two_process_run, tmp_path):
  """SIGTERM reaches only process 1 of 2: both stop at the same step (the next multiple of
  run_io.STOP_AGREEMENT_EVERY), save it and exit 0; the same command resumes every process at its
  own data position, so the loss of every step equals an uninterrupted 2-process run's."""
  overrides, _, _, expected = two_process_run
  stopped = str(tmp_path / "stopped")
  procs = launch_two_processes(overrides, stopped)
  deadline = time.time() + 300
  # Step 20: the processes' data positions differ from step 12 on (see NUM_STEPS).
  while len(read_trace(stopped)) < 20 and time.time() < deadline:
    assert procs[1].poll() is None, "process 1 exited before step 20"
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGTERM)
  logs = wait_all(procs, stopped)
  step = read_trace(stopped)[-1]["step"]
  assert 20 <= step < NUM_STEPS and step % run_io.STOP_AGREEMENT_EVERY == 0
  for log in logs:
    assert f"Stopped at step {step} after a signal" in log
  ckpt = checkpoint.Checkpointer(f"{stopped}/checkpoints", 1)
  try:
    assert ckpt.all_steps() == [step]
    saved = ckpt.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
  finally:
    ckpt.close()
  positions = saved["processes"]
  assert len(positions) == 2 and positions[0] != positions[1]  # resuming needs both
  logs = wait_all(launch_two_processes(overrides, stopped), stopped)
  assert f"Resumed from step {step}." in logs[0]
  assert read_trace(stopped) == expected  # bit for bit, past the resume
