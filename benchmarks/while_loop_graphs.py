"""Sequential decoding's batch-1 cost with and without XLA command buffers for loops (not a test).

  python benchmarks/while_loop_graphs.py --config=configs/xlnet_base.py --out=DIR

On a GPU, XLA runs a ``lax.while_loop`` from the host: every iteration copies the loop
predicate to the host and launches the body's kernels one by one, so a batch-1 sampler is
bound by the host (``task_overhead.py --trace`` on the H200: the GPU busy 25% of the traced
tasks; ``docs/results.md``). With
``--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL`` the loop is recorded as one CUDA graph
with conditional nodes and runs on the device. This decodes ``--rows`` batch-1 rows of random
tokens, ``h`` hidden from the middle for h in ``--hidden``, with a randomly initialised model of
``--config`` (sequential decoding makes h network calls whatever the weights), once per
``--variants`` entry in a fresh process (XLA reads its flags once), and writes
DIR/while_loop_graphs.json: per variant and h, the median milliseconds per task, the fitted
fixed cost and cost per hidden token, and whether its tokens equal the first variant's.
"""
import json
import os
import subprocess
import sys
import time

import jax  # XLA reads XLA_FLAGS when a process's first backend starts, not on import
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from asarm_jax import models, sampling, train

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", "configs/xlnet_base.py",
                                          "Config file whose model is timed.")
flags.DEFINE_string("out", "runs/out", "Output directory.")
flags.DEFINE_list("hidden", ["0", "16", "64"], "Hidden tokens per row.")
flags.DEFINE_integer("rows", 16, "Timed rows per h.")
flags.DEFINE_list("variants", ["plain", "graphs"], "plain: XLA's defaults; graphs: WHILE and "
                  "CONDITIONAL command buffers.")
flags.DEFINE_string("child", "", "Internal: run one variant in this process and print JSON.")

XLA_FLAGS = {"plain": "",
             "graphs": "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL "
                       "--xla_gpu_graph_min_graph_size=1"}


def time_variant() -> dict:
  """Per h: median ms per batch-1 task and the generated tokens (this process's XLA flags)."""
  config = _CONFIG.value
  model = models.build(config.model)
  seq_len = config.data.seq_len
  params = train.init_params(model, jax.random.key(0), seq_len)
  rs = np.random.default_rng(0)
  results = {}
  for h in [int(h) for h in FLAGS.hidden]:
    tokens = rs.integers(4, config.data.vocab_size, (FLAGS.rows + 1, 1, seq_len), dtype=np.int32)
    visible = np.ones((1, seq_len), bool)
    visible[0, seq_len // 2:seq_len // 2 + h] = False
    times, generated = [], []
    for i in range(FLAGS.rows + 1):  # the first compiles, untimed
      start = time.perf_counter()
      out = sampling.generate(model, params, tokens[i], visible, jax.random.key(i),
                              method="sequential", k=1, temperature=1.0)
      generated.append(np.asarray(jax.device_get(out.tokens_BxL))[0, ~visible[0]].tolist())
      times.append(time.perf_counter() - start)
    results[h] = {"ms": 1e3 * float(np.median(times[1:])), "tokens": generated[1:]}
  return {"device": jax.devices()[0].device_kind, "results": results}


def main(_):
  if FLAGS.child:
    print(json.dumps(time_variant()))
    return
  report = {"config": config_flags.get_config_filename(FLAGS["config"]), "rows": FLAGS.rows,
            "variants": {}}
  for variant in FLAGS.variants:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                      + XLA_FLAGS[variant]).strip())
    args = [sys.executable, __file__, f"--child={variant}"] + [
        a for a in sys.argv[1:] if not a.startswith("--child")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      report["variants"][variant] = {"error": proc.stderr[-3000:]}
      print(f"{variant}: failed\n{proc.stderr[-3000:]}", flush=True)
      continue
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    report["device"] = child["device"]
    points = [(int(h), r["ms"]) for h, r in child["results"].items()]
    slope, fixed = np.polyfit(*zip(*points), 1)
    report["variants"][variant] = {
        "xla_flags": XLA_FLAGS[variant], "fixed_ms": float(fixed),
        "per_hidden_token_ms": float(slope),
        "ms": {h: r["ms"] for h, r in child["results"].items()},
        "tokens": {h: r["tokens"] for h, r in child["results"].items()}}
    print(f"{variant}: fixed {fixed:.2f} ms + {slope:.3f} ms per hidden token; "
          + ", ".join(f"h={h}: {ms:.2f} ms" for h, ms in points), flush=True)
  first = next((v["tokens"] for v in report["variants"].values() if "tokens" in v), None)
  for v in report["variants"].values():
    if "tokens" in v:
      v["same_tokens_as_first"] = v.pop("tokens") == first
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "while_loop_graphs.json"), "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  app.run(main)
