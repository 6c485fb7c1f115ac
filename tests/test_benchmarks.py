"""The benchmarks package: every experiment's dry run, the record schema, the docs' tables."""
import json
import os
import types
from typing import Any

import jax
import numpy as np
import pytest

from asarm_jax import models, sampling
from asarm_jax.sampling import core, cost_model, methods
from benchmarks import (cli, common, decode_profile, experiment, fused_dense, greedy_agreement,
                        invariance_probe, kernel_scopes, records, report, speed_ratios,
                        while_loop_graphs)
from benchmarks import cost_model as cost_model_benchmark
from benchmarks.experiments import EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_builds_and_checks(name, tmp_path, capsys):
  knobs = experiment.knobs_of(name, [])
  built = experiment.build(name, knobs, str(tmp_path))
  experiment.check_all(built)  # configs load, overrides and flags exist, nothing runs
  printed = capsys.readouterr().out
  assert all(f"# stage {stage.name}" in printed for stage in built)


def test_knobs_are_overridden_with_their_types():
  knobs = experiment.knobs_of("headline", ["limit_s=20", "model=demo", "execute=True"])
  assert (knobs["limit_s"], knobs["model"], knobs["execute"]) == (20, "demo", True)
  with pytest.raises(ValueError, match="no knob"):
    experiment.knobs_of("headline", ["nothing=1"])


def test_the_judge_judges_every_samples_file_it_is_given(tmp_path):
  files = ("/s/asarm/gen_samples_a.npz", "/s/mdlm/gen_samples_b.npz")
  knobs = experiment.knobs_of("causal_lm", [f"samples={','.join(files)}"])
  judged = next(s for s in experiment.build("causal_lm", knobs, str(tmp_path))
                if s.name == "judged")
  assert judged.commands[0].argv[-2:] == files
  assert set(judged.outputs) == {f"{f[:-4]}_judged.{ext}" for f in files for ext in ("json", "png")}


def test_mdlm_baseline_trains_both_models_the_same_steps(tmp_path):
  knobs = experiment.knobs_of("mdlm_baseline", ["steps=100", "draft_steps=30"])
  built = {s.name: s for s in experiment.build("mdlm_baseline", knobs, str(tmp_path))}
  flags = lambda command: {a.split("=")[0]: a.split("=", 1)[1] for a in command.argv
                           if a.startswith("--config.")}
  first, late = map(flags, built["asarm"].commands)
  (mdlm,) = map(flags, built["mdlm"].commands)
  assert first["--config.train.stop_step"] == "70" and "--config.train.stop_step" not in late
  assert late["--config.objective.draft_weight"] == "0.25"
  assert mdlm["--config.objective.kind"] == "mdlm"
  for run in (first, late, mdlm):  # one schedule, stopped by steps, never by time
    assert (run["--config.train.num_steps"], run["--config.train.time_limit_s"]) == ("100", "0")


def _put(folder, name: str, content: Any) -> None:
  """``content`` as ``folder/name``: JSON, or JSON lines where the name ends in ``l``."""
  folder.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in content) if name.endswith("l") else json.dumps(
      content)
  (folder / name).write_text(text)


def _packed_mdlm_baseline(unpacked) -> None:
  """What ``experiment mdlm_baseline`` returns, in small: stages, density and scored middles
  (the AS-ARM's sequential passes 5 of 6 tasks, the MDLM's k=2 the 6th only)."""
  knobs = {"model": "demo", "steps": 10, "batch": 4}
  records.write(str(unpacked / "stages.jsonl"), [records.make(
      "experiment_stage", {"stage": stage, "knobs": knobs}, {"seconds": seconds},
      accelerator="gpu", commit="abc") for stage, seconds in (("asarm", 90.0), ("mdlm", 80.0))])
  put = lambda stage, name, content: _put(unpacked / "out" / stage, name, content)
  bits = lambda **orders: {"tasks": {"density": {"bits_per_token": {
      order: {"0.05": value} for order, value in orders.items()}}}}
  put("asarm_density", "asarm__eval__results.json",
      bits(left_to_right=2.0, any_subset=2.1, mdlm_elbo=2.6))
  put("mdlm_density", "mdlm__eval__results.json", bits(mdlm_elbo=2.4))
  outcomes = {"asarm": {"sequential": [1, 1, 1, 1, 1, 0]}, "mdlm": {"mdlm_k2": [0, 0, 0, 0, 0, 1]}}
  for model, decoders in outcomes.items():
    for decoder, passed in decoders.items():
      stem = f"{model}__eval__humaneval_single_line_step10_{decoder}_t0.2_seed0_b64_continuous"
      # the MDLM's scores hold a 7th task beyond the 6 its report scored (--max_tasks)
      subsample = {"scored_tasks": [f"t{i}" for i in range(6)]} if model == "mdlm" else {}
      put(f"{model}_single_line", f"{stem}_report.json",
          {"pass@1": sum(passed) / 6, "num_tasks": 6, "tokens_per_call": 2.0 if "k2" in decoder
           else 1.0, **subsample})
      put(f"{model}_single_line", f"{stem}_scores.jsonl",
          [{"task_id": f"t{i}", "sample": 0, "passed": bool(p)}
           for i, p in enumerate(passed + ([1] if subsample else []))])


def test_mdlm_comparison_reads_the_packed_run(tmp_path):
  """Density side by side, and per (task, model, decoder) pass@1, calls per token and the paired
  McNemar test against the AS-ARM's sequential decoding, from the files a run returns."""
  from benchmarks import mdlm_comparison  # pylint: disable=g-import-not-at-top
  _packed_mdlm_baseline(tmp_path)
  made = {}
  for record in mdlm_comparison.run(str(tmp_path)):
    made.setdefault(record["name"], []).append(record)
  assert [r["metrics"]["tokens_M"] for r in made["mdlm_training"]] == [10 * 4 * 128 / 1e6] * 2
  (density,) = made["mdlm_density"]
  assert density["settings"] == {"visible": 0.05}
  assert list(density["metrics"].values()) == [2.0, 2.1, 2.6, 2.4]
  first, second = made["mdlm_humaneval"]
  assert (first["settings"]["decoder"], second["settings"]["decoder"]) == ("sequential", "mdlm_k2")
  assert second["metrics"]["calls/token"] == 0.5 and second["metrics"]["passed"] == 1
  # 5 tasks only the AS-ARM passes, 1 only the MDLM: 2 P(X <= 1), X ~ Binomial(6, 1/2)
  assert second["metrics"]["McNemar p against the AS-ARM's sequential"] == pytest.approx(14 / 64)
  assert second["commit"] == "abc" and second["accelerator"] == "gpu"
  assert "mdlm_generation_quality" not in made  # no judge given


def test_mdlm_comparison_sets_both_models_samples_against_the_asarm_sequential(tmp_path):
  """With the judge's results, one record per sampler of each model and one for the data, each
  perplexity tested against the AS-ARM's sequential (Welch, from the judged means and sds);
  the records name the judge's run, not the training run."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  from benchmarks import mdlm_comparison  # pylint: disable=g-import-not-at-top
  _packed_mdlm_baseline(tmp_path / "run")
  judged = tmp_path / "judge"
  records.write(str(judged / "stages.jsonl"), [records.make(
      "experiment_stage", {"stage": "judged", "knobs": {}}, {"seconds": 1.0}, commit="judge")])
  row = lambda method, ppl, sd, p: {"method": method, "tokens_per_call": None if method == "data"
                                    else 1.0, "num_samples": 8, "judge_ppl": ppl,
                                    "judge_ppl_std": sd, "entropy": 4.0, "p_ppl": p}
  data = row("data", 7.0, 4.0, 0.01)
  for model, methods_ in (("mdlm", {"mdlm(k=1)": row("mdlm", 500.0, 300.0, 1.0),
                                    "mdlm(k=2)": row("mdlm", 600.0, 400.0, 0.6), "data": data}),
                          ("asarm", {"sequential": row("sequential", 90.0, 60.0, 1.0),
                                     "assd(k=5)": row("assd", 95.0, 50.0, 0.9), "data": data})):
    _put(judged / "out" / "judged", f"{model}__eval__gen_samples_judged.json",
         {"baseline": next(iter(methods_)), "methods": methods_})
  made = [r for r in mdlm_comparison.run(str(tmp_path / "run"), str(judged))
          if r["name"] == "mdlm_generation_quality"]
  assert [(r["settings"]["model"], r["settings"]["sampler"]) for r in made] == [
      ("asarm", "sequential"), ("asarm", "assd(k=5)"), ("mdlm", "mdlm(k=1)"),
      ("mdlm", "mdlm(k=2)"), ("data", "held-out data")]
  mdlm_k2 = made[3]["metrics"]
  reference = scipy.stats.ttest_ind_from_stats(600.0, 400.0, 8, 90.0, 60.0, 8, equal_var=False)
  assert mdlm_k2["t (PPL) against the AS-ARM's sequential"] == pytest.approx(reference.statistic)
  assert mdlm_k2["p (PPL) against the AS-ARM's sequential"] == pytest.approx(reference.pvalue)
  assert mdlm_k2["p (PPL) against the model's first sampler"] == 0.6
  assert made[0]["metrics"]["t (PPL) against the AS-ARM's sequential"] == 0.0
  assert all(r["commit"] == "judge" for r in made)


def test_a_bad_override_fails_the_dry_run(tmp_path):
  knobs = experiment.knobs_of("recipe", [])
  built = experiment.build("recipe", knobs, str(tmp_path))
  command = next(c for s in built for c in s.commands if "asarm_jax.main" in c.argv)
  bad = type(command)(command.argv + ("--config.train.no_such_key=1",))
  with pytest.raises(ValueError, match="no_such_key"):
    experiment.stage_lib.check(bad)


def test_record_round_trip(tmp_path):
  made = [records.make("demo", {"batch": b}, {"ms": 0.5 * b}, {"file": "configs/demo.py"},
                       accelerator="cpu") for b in (1, 64)]
  path = records.path_for(str(tmp_path), made[0])
  records.write(path, made)
  assert records.read(path) == made
  assert path.endswith(os.path.join(made[0]["date"], "demo.jsonl"))
  assert made[0]["commit"] and "x" in made[0]["machine"]
  with pytest.raises(ValueError):
    records.validate({**made[0], "metrics": 1})
  with pytest.raises(ValueError):
    records.make("demo", {}, {}, hostname="x")


def test_report_rewrites_between_markers(tmp_path):
  made = [records.make("t", {"method": m}, {"tokens_per_call": v, "note": "x"},
                       date="2026-01-02", machine="m", accelerator="a", commit="c")
          for m, v in (("sequential", 1.0), ("tree", 1.91234))]
  records.write(str(tmp_path / "2026-01-02" / "t.jsonl"), made)
  text = "intro\n  <!-- table:2026-01-02/t -->\n  stale\n  <!-- /table:2026-01-02/t -->\nend"
  assert report.rewrite(text, str(tmp_path)).split("\n") == [
      "intro", "  <!-- table:2026-01-02/t -->", "  | method | tokens_per_call | note |",
      "  |---|---|---|", "  | sequential | 1 | x |", "  | tree | 1.912 | x |",
      "  <!-- /table:2026-01-02/t -->", "end"]
  with pytest.raises(ValueError, match="no closing"):
    report.rewrite("<!-- table:2026-01-02/t -->\n", str(tmp_path))


def test_committed_docs_are_what_the_records_make():
  for folder, _, files in os.walk(report.DOCS):
    for name in files:
      if name.endswith(".md"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          text = f.read()
        assert report.rewrite(text, records.RECORDS_DIR) == text, name


@pytest.mark.parametrize("text,fields", [
    ("sequential", dict(method="sequential")), ("assd_fused:5", dict(method="assd_fused", k=5)),
    ("tree:8", dict(method="tree", num_nodes=8, depth=6)),
    ("tree:4:2", dict(method="tree", num_nodes=4, depth=2)),
    ("auto:8", dict(method="auto", k=8, size_choice="row")),
    ("auto:8:batch", dict(method="auto", k=8, size_choice="batch"))])
def test_sampler_flags(text, fields):
  spec = cli.parse_spec(text)
  assert all(getattr(spec, k) == v for k, v in fields.items())
  for bad in ("tree:8:2:1", "assd:5:batch", "auto:batch:8"):
    with pytest.raises(ValueError):
      cli.parse_spec(bad)


XLNET_BASE = decode_profile.Sizes(num_layers=12, d_model=768, d_ff=3072, vocab_size=32000,
                                  weight_bytes=220e6)  # 110M parameters in bf16


def test_roofline_of_xlnet_base_calls():
  """The figures of ../shared/README.md: a batch-1 call reads 220 MB of weights (46 us at
  4.8 TB/s); a batch-64 call reads a 1.2 GB cache at 512 visible slots (0.25 ms), and 64 x 15
  query rows are about 0.2 TFLOP (0.27 ms at 790 TFLOP/s)."""
  ms = lambda cost: decode_profile.roofline_ms(*cost, 4.8e12, 790e12)
  one = decode_profile.call_cost(XLNET_BASE, decode_profile.Shape(1, 1, 268), batch=1)
  weights_ms = decode_profile.roofline_ms(XLNET_BASE.weight_bytes, 0, 4.8e12, 790e12)
  assert weights_ms == pytest.approx(0.046, rel=0.01)
  assert one[0] == pytest.approx(220e6 + 269 * 12 * 2 * 768 * 2)  # + 10 MB of cache
  assert ms(one) == pytest.approx(0.048, rel=0.01)
  full = decode_profile.call_cost(XLNET_BASE, decode_profile.Shape(1, 1, 512), batch=64)
  cache = 64 * 512 * 12 * 2 * 768 * 2
  assert full[0] == pytest.approx(220e6 + cache * 513 / 512) and cache == pytest.approx(1.208e9,
                                                                                       rel=1e-3)
  assert cache / 4.8e12 * 1e3 == pytest.approx(0.25, rel=0.01)
  wide = decode_profile.call_cost(XLNET_BASE, decode_profile.Shape(1, 15, 512), batch=64)
  assert 0.18e12 < wide[1] < 0.24e12 and 0.23 < wide[1] / 790e12 * 1e3 < 0.3
  assert ms(wide) == pytest.approx(1e3 * wide[0] / 4.8e12)  # still memory-bound


@pytest.mark.parametrize("text", ["sequential", "assd:5", "assd_fused:5", "tree:4:2"])
def test_roofline_per_call_averages_the_prefill_and_the_rounds(text):
  spec = cli.parse_spec(text)
  prefill, rounds = decode_profile.call_shapes(spec, prompt=25, length=512)
  assert len(rounds) == methods.STRATEGIES[spec.method].CALLS_PER_ROUND
  assert prefill.content == 25 and prefill.slots == 25
  args = (XLNET_BASE, spec, 64, 25, 512)
  just_prefill = decode_profile.roofline(*args, 1, 4.8e12, 790e12)
  assert just_prefill["flops_per_call"] == decode_profile.call_cost(XLNET_BASE, prefill, 64)[1]
  calls = 1 + 1000 * len(rounds)
  long = decode_profile.roofline(*args, calls, 4.8e12, 790e12)
  each = [decode_profile.call_cost(XLNET_BASE, shape, 64) for shape in rounds]
  assert long["bytes_per_call"] == pytest.approx(sum(b for b, _ in each) / len(rounds), rel=1e-3)


def test_decode_profile_runs_on_the_cpu():
  """A tree on the default network, and sequential decoding on the batch-invariant one of
  deterministic decoding (test_deterministic.py runs its tree calls)."""
  made = [r for specs, deterministic in ((["tree:4:2"], False), (["sequential"], True))
          for r in decode_profile.run(config="demo", specs=specs, batches=[2], length=16,
                                      repeats=1, deterministic=deterministic)]
  profiles = [r for r in made if r["name"] == "decode_profile"]
  assert [(r["settings"]["spec"], r["settings"]["batch"], r["settings"]["deterministic"])
          for r in profiles] == [("tree:4:2", 2, False), ("sequential", 2, True)]
  assert {r["name"] for r in made} == {"decode_profile", "trace_summary"}
  for r in profiles:
    records.validate(r)
    m = r["metrics"]
    assert r["settings"] | {"spec": 0, "batch": 0, "deterministic": 0} == {
        "spec": 0, "batch": 0, "deterministic": 0, "visible": 0.05, "temperature": 0.2,
        "length": 16, "command_buffers": False, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    assert m["num_network_calls"] >= 2 and 0 < m["tokens_per_call"] <= 3
    assert m["wall_ms_per_call"] > 0 and m["roofline_ms"] > 0 and m["flops_per_call"] > 0
    assert m["wall_ratio"] == pytest.approx(m["wall_ms_per_call"] / m["roofline_ms"])
    if jax.default_backend() == "cpu":  # no GPU streams: the device's fields are null
      assert all(m[k] is None for k in ("gpu_ms_per_call", "gpu_busy_ms_per_call",
                                        "kernels_per_call", "top_kernels", "ratio"))


def test_gpu_kernels_are_the_streams_within_the_call():
  meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind,
                                       "args": {"name": name}}
  event = lambda tid, name, ts, dur, pid=2: {"ph": "X", "pid": pid, "tid": tid, "name": name,
                                             "ts": ts, "dur": dur}
  events = [meta(1, None, "process_name", "/host:CPU"), meta(1, 1, "thread_name", "python"),
            meta(2, None, "process_name", "/device:GPU:0"),
            meta(2, 7, "thread_name", "Stream #7(Compute)"),
            meta(2, 9, "thread_name", "XLA Ops"),
            event(1, decode_profile.WITHIN, 100, 100, pid=1),
            event(7, "gemm", 50, 10),  # before the call
            event(7, "gemm", 110, 30), event(7, "attention", 130, 20), event(7, "gemm", 160, 10),
            event(9, "fusion.1", 110, 60)]  # a derived line, not a kernel
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M"}
  kernels = decode_profile.device_kernels(events, names)
  assert [e["name"] for e in kernels] == ["gemm", "attention", "gemm"]
  m = decode_profile.kernel_metrics(kernels, calls=2, top=8)
  assert m["gpu_ms_per_call"] == pytest.approx(0.030)  # 60 us over 2 calls
  assert m["gpu_busy_ms_per_call"] == pytest.approx(0.025)  # [110, 150) and [160, 170)
  assert m["kernels_per_call"] == 1.5
  assert m["top_kernels"] == [{"kernel": "gemm", "ms": 0.02, "share": 2 / 3, "launches": 1.0},
                              {"kernel": "attention", "ms": 0.01, "share": 1 / 3,
                               "launches": 0.5}]


def test_two_detached_runs_of_one_runs_folder_run_from_their_own_code(tmp_path, monkeypatch):
  started = []
  monkeypatch.setattr(experiment.subprocess, "Popen", lambda argv, cwd, **_: started.append(cwd))
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for stages in ("prepare,asarm,mdlm", "asarm_density"):
    experiment.start_detached(["mdlm_baseline", f"--stages={stages}"], str(tmp_path))
  first, second = started
  assert first != second  # the second copy leaves the first run's code alone
  assert all(os.path.isfile(os.path.join(code, "asarm_jax", "train.py")) for code in started)


def test_a_finished_stage_is_skipped_on_rerun_and_packed(tmp_path, monkeypatch):
  """Stages run in order, each marks itself done; a rerun runs only what is not done, and
  every run packs RUNS/out, the records and the done-markers into OUT/NAME.tgz."""
  import sys  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  from benchmarks.experiments import stages as stage_lib  # pylint: disable=g-import-not-at-top
  counts = tmp_path / "counts.txt"
  touch = lambda name: stage_lib.Command(
      (sys.executable, "-c", f"open({str(counts)!r}, 'a').write({name!r})"))
  beside = tmp_path / "samples" / "gen_judged.json"  # an output outside RUNS, e.g. the judge's
  beside.parent.mkdir()
  beside.write_text("{}")
  built = [stage_lib.Stage("first", (touch("1"),)),
           stage_lib.Stage("second", (touch("2"),), (str(beside),))]
  monkeypatch.setattr(experiment, "build", lambda *args: built)
  monkeypatch.setattr(experiment, "knobs_of", lambda *args: {})
  runs, out = tmp_path / "runs", tmp_path / "out"
  main = lambda stages: experiment.main("recipe", str(runs), str(out), stages, [], dry_run=False,
                                        detach=False, wait="", wait_s=0)
  main(["first"])
  assert counts.read_text() == "1" and experiment.done_stages(str(runs)) == {"first"}
  main([])
  main([])
  assert counts.read_text() == "12" and experiment.done_stages(str(runs)) == {"first", "second"}
  with tarfile.open(out / "recipe.tgz") as tar:
    names = tar.getnames()
  assert "stages.jsonl" in names and "out/second/0.log" in names
  assert "out/second/gen_judged.json" in names
  assert os.listdir(out) == ["recipe.tgz"]  # written under another name, then renamed


def test_cost_model_measures_auto_and_generate_reads_it(tmp_path, monkeypatch):
  monkeypatch.setenv("ASARM_JAX_CACHE_DIR", str(tmp_path))
  made = cost_model_benchmark.run(config="demo", k=3, batch_sizes=[1, 2], hidden=16, repeats=2)
  assert [(r["settings"]["batch"], r["settings"]["size"]) for r in made] == [
      (b, k) for b in (1, 2) for k in (0, 1, 2, 3)]
  for r in made:  # a difference of two timings: on a busy CPU it may come out below 0
    records.validate(r)
    assert np.isfinite(r["metrics"]["round_ms"])
  model = models.build(common.config_of("demo").model)
  read = cost_model.round_ms(sampling.ModelNetwork(model), (0, 1, 2, 3), 2)
  np.testing.assert_allclose(read, [r["metrics"]["round_ms"] for r in made[4:]], rtol=1e-6)


@pytest.mark.parametrize("size", [0, 3])
def test_the_cost_of_a_round_leaves_out_what_a_run_pays_once(size, monkeypatch):
  """Under a clock where a run takes 50 ms once (prefill, dispatch) plus 2 ms a round, a round
  costs 2 ms: the runs at ``hidden`` and ``hidden // 2`` differ by their rounds only."""
  now = [0.0]

  def generate(net, params, tokens, visible, key, spec):
    del net, params, tokens, key
    hidden = int((~visible).sum(1).max())
    rounds = hidden if spec.method == "sequential" else -(-hidden // (spec.k + 1))
    now[0] += (50 + 2 * rounds) / 1e3
    return types.SimpleNamespace(num_network_calls=1 + rounds)

  monkeypatch.setattr(cost_model_benchmark.sampling, "generate", generate)
  monkeypatch.setattr(cost_model_benchmark.time, "perf_counter", lambda: now[0])
  net = types.SimpleNamespace(num_special_tokens=4, vocab_size=64)
  ms = cost_model_benchmark.ms_per_round(net, None, size, batch=2, length=256, hidden=128,
                                         repeats=2)
  assert ms == pytest.approx(2.0)


def test_invariance_probe_names_the_first_module_that_differs():
  """Row 0's module outputs before and after a change of block 1's ``mlp_out`` weights: the
  probe lists that module first, then every later one, none before."""
  model, params, _ = common.random_model("demo")
  inputs = invariance_probe.inputs(model, 2, 16, 3, 2)
  before = invariance_probe.row_outputs(model, params, inputs)
  changed = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1e-3 if "block_1/mlp_out/kernel" in jax.tree_util.keystr(
          path, simple=True, separator="/") else x, params)
  differing = invariance_probe.differing_modules(
      before, invariance_probe.row_outputs(model, changed, inputs))
  paths = list(before)
  assert differing == paths[paths.index("block_1/mlp_out/__call__[0]"):]
  assert paths[0] == "embed/__call__[0]" and paths[-1] == "__call__[0]"


def test_invariance_probe_finds_no_module_differing_with_the_setting():
  """The batch-invariant model's row 0 is the same bits in every module alone and among 3 (the
  default model's need not be, even on the CPU)."""
  made = list(invariance_probe.run(config="demo", batch=3, length=16, targets=[2],
                                   deterministic=[True]))
  assert len(made) == 1
  records.validate(made[0])
  assert made[0]["metrics"]["modules"] > 30
  assert made[0]["metrics"]["differing"] == 0 and made[0]["metrics"]["logits_max_abs_diff"] == 0


def test_greedy_agreement_counts_no_difference_in_float32():
  """On the CPU in float32 sequential decoding through one slot returns its tokens through 4,
  by default and deterministically, at T = 0 and 1: every count is 0; the second
  temperature's runs are timed (test_deterministic.py covers every decoder with the setting,
  test_sampling.py every decoder's greedy tokens)."""
  made = list(greedy_agreement.run(config="demo", specs=[], rows=4, visible=0.25, length=24,
                                   alone_rows=2, compile_workers=2))
  assert [(r["settings"]["deterministic"], r["settings"]["temperature"],
           r["settings"]["method"], r["settings"]["slots"]) for r in made] == [
      (det, t, "sequential", slots) for det in (False, True) for t in (0.0, 1.0)
      for slots in (4, 1)]
  for r in made:
    records.validate(r)
    reference = r["settings"]["reference"] == "itself"
    assert r["settings"]["rows"] == (4 if r["settings"]["slots"] == 4 else 2)
    assert r["metrics"]["rows_differing"] == (None if reference else 0)
    assert r["metrics"]["median_first_difference"] is None
    timed = r["settings"]["temperature"] == 1.0
    assert r["metrics"]["ms_per_call"] is None if not timed else r["metrics"]["ms_per_call"] > 0
  assert greedy_agreement.differing(np.asarray([[1, 2, 3], [1, 5, 6]]),
                                    np.asarray([[1, 2, 3], [1, 2, 3]])) == {
      "rows_differing": 1, "median_first_difference": 1.0}


def test_the_deterministic_cost_model_is_the_batch_invariant_networks_own(tmp_path, monkeypatch):
  """``--deterministic=true`` writes the table of the network that deterministic decoding uses,
  beside (not over) the default one's."""
  monkeypatch.setenv("ASARM_JAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(cost_model_benchmark, "ms_per_round",
                      lambda net, *args: 3.0 if net.model.batch_invariant else 2.0)
  for deterministic in (False, True):
    cost_model_benchmark.run(config="demo", k=3, batch_sizes=[1], deterministic=deterministic)
  net = sampling.ModelNetwork(models.build(common.config_of("demo").model))
  # Neither is the prior's one call a round.
  np.testing.assert_array_equal(cost_model.round_ms(net, (0, 1, 2, 3), 1), [2.0] * 4)
  np.testing.assert_array_equal(cost_model.round_ms(net.batch_invariant(), (0, 1, 2, 3), 1),
                                [3.0] * 4)


def test_speed_ratios_divide_the_runs_of_one_cell():
  known = dict(date="2026-01-02", machine="m", accelerator="a", commit="c")
  speed = lambda method, tokens_per_s, **more: records.make(
      "sampling_speed", {"batch": 64, "method": method, **more, "temperature": 1.0,
                         "visible": 0.05, "prompts": 4},
      {"tokens_per_call": 2.0, "tokens_per_s": tokens_per_s, "ms_per_call": 1.0, **(
          {"round_share_by_size": {"0": 0.25, "3": 0.75, "5": 0.0}} if method == "auto" else {})},
      **known)
  made = list(speed_ratios.run_on([speed("sequential", 100.0), speed("auto", 150.0, k=8),
                                   speed("tree", 300.0, num_nodes=8, depth=6, ngram=2)]))
  rows = {r["settings"]["decoder"]: r["metrics"] for r in made}
  assert rows["auto, k=8"]["against sequential"] == "1.50x"
  assert rows["auto, k=8"]["against the fastest other"] == "0.50x"
  assert rows["auto, k=8"]["auto's rounds by draft size"] == "0: 25%, 3: 75%"
  assert rows["tree, N=8, depth 6"]["against the fastest other"] == "2.00x"
  assert made[0]["commit"] == "c" and made[0]["name"] == "decoders_speed"

  humaneval = lambda method, batching, size, seconds: records.make(
      "humaneval", {"method": method, "batch_size": size, "batching": batching},
      {"tokens_per_call": 1.0, "generation_s": seconds}, **known)
  made = list(speed_ratios.run_on([
      humaneval("sequential", "continuous", 1, 2.0), humaneval("sequential", "batches", 1, 6.0),
      humaneval("assd", "continuous", 1, 1.0)]))
  assert [(r["settings"]["batching"], r["metrics"]["against sequential, same batching"],
           r["metrics"]["against the other batching"]) for r in made] == [
      ("1 slot", "1.00x", "3.00x"), ("dispatches of 1", "1.00x", "0.33x"), ("1 slot", "2.00x", "")]
  with pytest.raises(ValueError, match="expected"):
    list(speed_ratios.run_on(made))


def test_while_loop_graphs_sets_the_switch_in_each_variants_process():
  """Each variant's child decodes with ``$ASARM_JAX_COMMAND_BUFFERS`` set to it: ``on`` times
  the decoder (the CPU ignores the options), and a setting the rule does not know is an error
  record, not a crash of the benchmark."""
  config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.py")
  on, unknown = while_loop_graphs.run(config=config, hidden=[0, 2], rows=1,
                                      variants=["on", "yes"])
  records.validate(on)
  assert on["settings"]["variant"] == "on" and on["metrics"]["same_tokens_as_first"]
  assert on["settings"]["xla_flags"] == os.environ.get("XLA_FLAGS", "")  # the children's
  assert on["metrics"]["calls"] == {"0": 1.0, "2": 3.0}
  assert "expected measured, on or off" in unknown["metrics"]["error"]


def test_decode_profile_profiles_without_graphs_and_restores_the_setting(monkeypatch):
  monkeypatch.setenv(core.COMMAND_BUFFERS_ENV, "on")
  spec = cli.parse_spec("sequential")
  with decode_profile.without_graphs():
    assert not core.command_buffers(spec, 1, deterministic=False)
  assert core.command_buffers(spec, 1, deterministic=False)
  monkeypatch.delenv(core.COMMAND_BUFFERS_ENV)
  with decode_profile.without_graphs():
    assert not core.command_buffers(spec, 1, deterministic=False)
  assert core.COMMAND_BUFFERS_ENV not in os.environ


def test_kernel_scopes_name_each_profiled_kernel_by_its_instruction_and_merge_layers(tmp_path):
  hlo = "\n".join([
      "ENTRY %main (p: f32[2]) -> f32[2] {",
      '  %gemm_fusion_dot.267 = bf16[2,768]{1,0} fusion(%a), kind=kCustom, metadata={op_name='
      '"jit(f)/while/body/TwoStreamTransformer/block_0/attention/query/dot_general"}',
      '  %gemm_fusion_dot.268 = bf16[2,768]{1,0} fusion(%a), kind=kCustom, metadata={op_name='
      '"jit(f)/while/body/TwoStreamTransformer/block_1/attention/query/dot_general"}',
      '  %loop_pad-fusion.1 = bf16[16,768]{1,0} fusion(%a), kind=kLoop, metadata={op_name='
      '"jit(f)/while/body/TwoStreamTransformer/block_0/attention/attend/pad"}',
      "}"])
  kernel = lambda name, ms, launches: {"kernel": name, "ms": ms, "share": ms, "launches": launches}
  top = [kernel("gemm_fusion_dot_267", 0.3, 1), kernel("_forward_kernel", 0.25, 2),
         kernel("gemm_fusion_dot_268", 0.2, 1), kernel("loop_pad_fusion_1", 0.05, 2),
         kernel("memcpy32_post", 0.005, 1)]
  profile = records.make("decode_profile", {"spec": "sequential", "batch": 1},
                         {"gpu_ms_per_call": 1.0, "kernels_per_call": 7.0, "top_kernels": top},
                         commit="abc1234")
  path = tmp_path / "decode_profile.jsonl"
  records.write(str(path), [profile])
  (tmp_path / "hlo.txt").write_text(hlo)
  made = list(kernel_scopes.run(str(path), str(tmp_path / "hlo.txt")))
  rows = [(r["metrics"]["scope"], round(r["metrics"]["ms_per_call"], 6),
           r["metrics"]["launches_per_call"]) for r in made]
  assert rows == [("block_i/attention/query/dot_general", 0.5, 2), ("_forward_kernel", 0.25, 2),
                  ("block_i/attention/attend/pad", 0.05, 2)]  # memcpy: below 1% of the call
  assert made[0]["metrics"]["us_per_launch"] == pytest.approx(250.0)
  assert {r["commit"] for r in made} == {"abc1234"}


def test_fused_dense_compares_every_part_on_cycled_weights():
  """``fused_dense`` runs each layer part fused and as XLA's ops on the same inputs (their
  errors against float32 at float32's level on the demo model), on as many weight copies as
  ``--cold_bytes`` asks, GPU fields null on the CPU."""
  made = list(fused_dense.run("demo", rows=[2], tilings=["16x64x8"], calls=2,
                              cold_bytes=1e6))
  assert [(r["settings"]["part"], r["settings"]["variant"]) for r in made] == [
      (part, variant) for part in fused_dense.PARTS for variant in ("xla", "fused")]
  for record in made:
    assert record["metrics"]["max_abs_error"] < 1e-4, record
    assert record["metrics"]["gpu_us_per_call"] is None
    copies = record["settings"]["weight_copies"]
    assert copies > 1 and (copies - 1) * record["metrics"]["bytes_per_call"] < 1e6 * 1.5
  assert made[1]["settings"]["tiling"] == "16x64x8"
