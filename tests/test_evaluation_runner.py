"""The ``--mode=eval`` runner and its task modules, on a tiny random model and corpus."""
import copy
import gzip
import json
import math
import os
import shutil
import sysconfig

import jax
import numpy as np
import pytest

from asarm_jax import checkpoint, data, density, inference, models, optim, sampling, train
from asarm_jax.config_base import base_config, default_eval_config, from_file
from asarm_jax.data import builders
from asarm_jax.evaluation import (compare_passes, gen_quality,
                                  humaneval_infill, infill_eval, infill_model,
                                  judge_samples, runner, score_middles)

STDLIB = sysconfig.get_paths()["stdlib"]
SEQ_LEN = 96
SENTENCES = ["The old lighthouse keeper climbed the stairs every evening.",
             "He carried a lamp and a small book of poems.",
             "Storms often rolled in from the western sea.",
             "Ships trusted the light to guide them home.",
             "One night the lamp flickered and nearly died.",
             "The keeper sang loudly until the wind calmed down."]


def _config(root: str):
  c = base_config()
  if "eval" not in c:
    c.eval = default_eval_config()
  c.data.update(source_dirs=(root,), heldout_fraction=0.3, vocab_size=400, seq_len=SEQ_LEN,
                tokenizer_max_chars=300_000)
  c.model.update(num_layers=1, d_model=32, num_heads=2, d_ff=64)
  c.eval.update(
      tasks=("humaneval_single_line", "humaneval_multi_line", "humaneval_single_line_prefix",
             "text_infill", "gen_quality", "density", "draft_acceptance"),
      batch_size=4, humaneval_max_tasks=2, num_samples=2, pass_at=(1, 2, 10),
      text_max_stories=2, gen_num_prompts=2, gen_methods=("sequential", "assd", "parallel"),
      gen_parallel_ks=(2,), density_fractions=(0.0, 0.5), density_batches=1,
      draft_fractions=(0.5,), draft_temperatures=(1.0, 0.5), draft_depth=2, draft_cuts=2)
  c.sample.update(method="assd", k=2, temperature=1.0)
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with a prepared corpus (stdlib slices with prose docstrings) and a checkpoint of
  random parameters, written as ``train.py`` writes it."""
  root = str(tmp_path_factory.mktemp("corpus"))
  modules = sorted(n for n in os.listdir(STDLIB) if n.endswith(".py"))[:14]
  for i, name in enumerate(modules):
    with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
      code = "".join(f.readlines()[:80])
    prose = " ".join(SENTENCES[i % 6:] + SENTENCES[:i % 6])
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
      f.write(f'"""{prose}\n\n{prose}\n"""\n{code}')
  assert sum(builders.path_unit_hash(n) < 0.3 for n in modules) >= 2
  work = str(tmp_path_factory.mktemp("work"))
  config = _config(root)
  tokenizer = data.prepare(config.data, os.path.join(work, "data"))
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  state = train.create_state(model, tx, jax.random.PRNGKey(0), SEQ_LEN)
  ckpt = checkpoint.Checkpointer(os.path.join(work, "checkpoints"), max_to_keep=1)
  ckpt.save(7, state, {"doc_index": 0, "token_offset": 0},
            checkpoint.meta_for(config, tokenizer.serialized()), force=True)
  ckpt.wait()
  ckpt.close()
  return work, config, tokenizer, model, state.params


@pytest.fixture(scope="module")
def tasks():
  single = {t.task_id: t for t in humaneval_infill.single_line_tasks()}
  multi = {t.task_id: t for t in humaneval_infill.multi_line_tasks()}
  return [single["SingleLineInfilling/HumanEval/0/L4"],
          single["SingleLineInfilling/HumanEval/2/L0"],
          multi["MultiLineInfilling/HumanEval/12/L3_L6"]]


def test_layout_hides_reference_length_and_keeps_context(workdir, tasks):
  _, _, tokenizer, _, _ = workdir
  for task in tasks:
    prefix, middle, suffix = (tokenizer.encode(x) for x in (task.prefix, task.middle, task.suffix))
    full = infill_model.lay_out(tokenizer, task, 1024)
    n = len(prefix) + len(middle) + len(suffix)
    assert (full.length, full.start, full.num_hidden) == (n, len(prefix), len(middle))
    assert full.tokens[:n].tolist() == prefix + [tokenizer.mask_id] * len(middle) + suffix
    assert full.visible[:n].tolist() == ([True] * len(prefix) + [False] * len(middle)
                                         + [True] * len(suffix))
    assert not full.visible[n:].any() and (full.tokens[n:] == tokenizer.pad_id).all()

    short = infill_model.lay_out(tokenizer, task, len(middle) + 20)
    kept_p, kept_s = short.start, short.length - short.start - len(middle)
    assert short.length == len(middle) + 20 and short.num_hidden == len(middle)
    assert short.tokens[:kept_p].tolist() == prefix[len(prefix) - kept_p:]  # loses its start
    assert short.tokens[kept_p + len(middle):short.length].tolist() == suffix[:kept_s]  # its end
    assert (short.prefix_dropped, short.suffix_dropped) == (len(prefix) - kept_p,
                                                            len(suffix) - kept_s)
    # Each side keeps half of the room, or all it has if that is less.
    assert (kept_p, kept_s) == ((10, 10) if len(suffix) >= 10 else (20 - len(suffix), len(suffix)))
    assert (~short.visible[:short.length]).sum() == len(middle)
    assert infill_model.lay_out(tokenizer, task, len(middle) - 1) is None

    # Prefix only (the "_prefix" kinds): the row ends with the hidden slots.
    alone = infill_model.lay_out(tokenizer, task, len(middle) + 20, show_suffix=False)
    kept = min(len(prefix), 20)
    assert (alone.length, alone.start, alone.suffix_dropped) == (kept + len(middle), kept, 0)
    assert alone.tokens[:alone.length].tolist() == (prefix[len(prefix) - kept:]
                                                    + [tokenizer.mask_id] * len(middle))
    assert alone.visible[:alone.length].tolist() == [True] * kept + [False] * len(middle)


def _oracle(references):
  """A stand-in for ``sampling.generate`` that writes each row's reference middle (looked up by
  the row's tokens) into its hidden positions."""
  def generate(model, params, tokens_BxL, visible_BxL, rng, *, spec, length_B, slots):
    out, visible = np.array(tokens_BxL), np.asarray(visible_BxL)
    for b in range(len(out)):
      if out[b].tobytes() in references:
        out[b][np.flatnonzero(~visible[b][:length_B[b]])] = references[out[b].tobytes()]
    hidden = (~visible).sum(1)
    return sampling.Generation(out, np.maximum(hidden, 1), hidden, np.int32(1),
                               np.zeros((len(out), 0), np.int32))
  return generate


def test_reference_middles_pass_through_layout_and_decoding(workdir, tasks, tmp_path,
                                                            monkeypatch):
  _, _, tokenizer, model, params = workdir
  references = {}
  for task in tasks:
    layout = infill_model.lay_out(tokenizer, task, model.max_len)
    references[layout.tokens.tobytes()] = tokenizer.encode(task.middle)
  monkeypatch.setattr(sampling, "generate", _oracle(references))
  done = infill_model.complete(model, params, tokenizer, tasks, str(tmp_path / "c.jsonl"),
                               spec=sampling.SamplerSpec("assd", k=2), num_samples=2,
                               batch_size=4, seed=0, desc="oracle")
  assert done.by_task == {t.task_id: [t.middle, t.middle] for t in tasks}
  assert done.too_long == [] and done.num_truncated == len(tasks)  # prompts exceed 96 tokens
  scores = humaneval_infill.score(tasks, done.by_task, k_values=(1,), progress_every=0)
  assert scores["pass@1"] == 1.0


def test_middles_scored_elsewhere_match_scoring_here(workdir, tmp_path, monkeypatch, capsys):
  _, _, tokenizer, model, params = workdir
  kind, ecfg = "humaneval_multi_line", default_eval_config()
  ecfg.update(humaneval_max_tasks=6, seed=1, num_samples=2, pass_at=(1, 2, 10), batch_size=4)
  tasks = infill_eval.humaneval_tasks(kind, 6, 1)
  references = {}  # every other task gets its reference middle; the others keep <mask> ids
  for task in tasks[::2]:
    layout = infill_model.lay_out(tokenizer, task, model.max_len)
    if layout is not None:
      references[layout.tokens.tobytes()] = tokenizer.encode(task.middle)
  monkeypatch.setattr(sampling, "generate", _oracle(references))
  here_dir, device_dir, cpu_dir = (tmp_path / name for name in ("here", "device", "cpu"))
  for d in (here_dir, device_dir, cpu_dir):
    d.mkdir()
  spec = sampling.SamplerSpec("assd", k=2)
  here = infill_eval.humaneval(model, params, tokenizer, ecfg, spec, kind, str(here_dir), "tag")
  assert 0 < here["pass@1"] < 1 and here["num_too_long"] > 0  # the case is not trivial

  ecfg.humaneval_execute = False
  written = infill_eval.humaneval(model, params, tokenizer, ecfg, spec, kind, str(device_dir),
                                  "tag")
  assert "pass@1" not in written and not list(device_dir.glob("*_scores.jsonl"))
  moved = cpu_dir / (written["middles"] + ".gz")  # brought back, compressed
  with open(device_dir / written["middles"], "rb") as src, gzip.open(moved, "wb") as dst:
    dst.write(src.read())
  elsewhere = score_middles.score_file(str(moved))
  assert elsewhere == here
  with open(cpu_dir / f"{kind}_tag_report.json") as f:
    assert json.load(f) == elsewhere
  assert (compare_passes.passes(str(cpu_dir / f"{kind}_tag_scores.jsonl"))
          == compare_passes.passes(str(here_dir / f"{kind}_tag_scores.jsonl")))
  score_middles.main([str(moved)])  # resumes from the scores file; prints the table
  assert f"| {100 * here['pass@1']:.2f} |" in capsys.readouterr().out

  with open(device_dir / written["middles"]) as f:
    document = json.load(f)
  document["seed"] = 2  # other tasks than the middles were generated for
  wrong = cpu_dir / "wrong_middles.json"
  wrong.write_text(json.dumps(document))
  with pytest.raises(ValueError, match="do not match"):
    score_middles.score_file(str(wrong))


def test_middles_written_without_a_sample_count_are_scored(tmp_path):
  """A generation report without ``num_samples`` (as ``benchmarks humaneval`` writes one) gets
  the middles per task, so the file scores elsewhere; tasks of unequal counts are refused."""
  kind, ecfg = "humaneval_single_line", default_eval_config()
  ecfg.update(humaneval_max_tasks=3, seed=0)
  tasks = infill_eval.humaneval_tasks(kind, 3, 0)
  path = str(tmp_path / "b_middles.json")
  infill_eval.write_middles(path, kind, ecfg, {t.task_id: [t.middle] for t in tasks},
                            {"num_too_long": 0})
  report = score_middles.score_file(path, workers=1)
  assert report["num_samples"] == 1 and report["pass@1"] == 1.0
  with pytest.raises(ValueError, match="middles; expected one number"):
    infill_eval.write_middles(path, kind, ecfg, {tasks[0].task_id: ["a"],
                                                 tasks[1].task_id: ["a", "b"]}, {})


def test_scoring_a_subsample_of_the_tasks_scores_exactly_those_tasks(tmp_path):
  """``max_tasks`` scores the seeded subsample of a file's tasks: each scored task's outcome is
  the one scoring every task gives it, and pass@1 is their mean."""
  kind, ecfg = "humaneval_single_line", default_eval_config()
  ecfg.update(humaneval_max_tasks=8, seed=5)
  tasks = infill_eval.humaneval_tasks(kind, 8, 5)
  # half the middles are the references, half a line that cannot be right
  by_task = {t.task_id: [t.middle if i % 2 else "    raise AssertionError()\n"]
             for i, t in enumerate(tasks)}
  for name in ("all", "some"):
    infill_eval.write_middles(str(tmp_path / f"{name}_middles.json"), kind, ecfg, by_task,
                              {"num_too_long": 0})
  score_middles.score_file(str(tmp_path / "all_middles.json"), workers=1)
  every = compare_passes.passes(str(tmp_path / "all_scores.jsonl"))
  some = score_middles.score_file(str(tmp_path / "some_middles.json"), workers=1, max_tasks=3)
  chosen = infill_eval.subsample(tasks, 3, 5)
  scored = compare_passes.passes(str(tmp_path / "some_scores.jsonl"))
  assert sorted(scored) == sorted((t.task_id, 0) for t in chosen)
  assert scored == {key: every[key] for key in scored} and len(set(every.values())) == 2
  assert some["pass@1"] == sum(scored.values()) / 3
  assert (some["num_tasks"], some["num_too_long"], some["generated_tasks"]) == (3, 0, 8)
  assert some["scored_tasks"] == [t.task_id for t in chosen]


def test_humaneval_subsample_is_deterministic():
  a = infill_eval.humaneval_tasks("humaneval_multi_line", 5, seed=3)
  b = infill_eval.humaneval_tasks("humaneval_multi_line", 5, seed=3)
  c = infill_eval.humaneval_tasks("humaneval_multi_line", 5, seed=4)
  assert [t.task_id for t in a] == [t.task_id for t in b] != [t.task_id for t in c]
  assert len(a) == 5 and len(infill_eval.humaneval_tasks("humaneval_single_line", 0, 0)) == 1033


def test_prompt_visible_fraction_and_specials():
  tokens = np.full((3, 40), 9, np.int32)
  tokens[1, 7] = 2  # an <eos>
  visible = gen_quality.prompt_visible(tokens, 0.1, seed=5, num_special_tokens=4)
  assert visible.sum(1).tolist() in ([4, 5, 4], [4, 4, 4])
  assert visible[1, 7]
  assert (visible == gen_quality.prompt_visible(tokens, 0.1, 5, 4)).all()
  assert not (visible[0] == visible[2]).all()


def test_validate_rejects_bad_configs():
  ecfg = default_eval_config()
  runner.validate(ecfg)
  for changes, match in [(dict(tasks=("density", "nope")), "unknown"),
                         (dict(tasks=("gen_quality",), gen_samples_only=True,
                               gen_methods=("beam",)), "sampling methods"),
                         (dict(tasks=("gen_quality",)), "judge_workdir")]:
    bad = default_eval_config()
    bad.update(changes)
    with pytest.raises(ValueError, match=match):
      runner.validate(bad)


def test_stories_from_csv(tmp_path):
  path = tmp_path / "roc.csv"
  path.write_text("storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n"
                  + "".join(f"id{i},T,A {i}.,B.,C.,D.,E.\n" for i in range(3)), encoding="utf-8")
  config = _config("/nonexistent")
  config.eval.update(rocstories_csv=str(path), text_max_stories=2)
  got = runner.stories(runner.Context(None, config, None, "", ""))
  assert [s.story_id for s in got] == ["id0", "id1"] and got[1].sentences[0] == "A 1."


def _counting(monkeypatch):
  calls = []
  real = sampling.generate

  def generate(*args, **kwargs):
    calls.append(kwargs["spec"].method)
    return real(*args, **kwargs)

  monkeypatch.setattr(sampling, "generate", generate)
  return calls


def test_runner_end_to_end_and_resume(workdir, monkeypatch, capsys):
  work, config, tokenizer, model, params = workdir
  config.eval.judge_workdir = work
  calls = _counting(monkeypatch)
  results = runner.run(config, work)
  out = capsys.readouterr().out
  assert "## Generation quality" in out and "## Held-out density" in out
  tasks = results["tasks"]
  # One sampler call per batch of 4 rows that fit; at SEQ_LEN = 96 some middles do not.
  infill_batches = sum(math.ceil((2 - tasks[kind]["num_too_long"]) * 2 / 4)
                       for kind in ("humaneval_single_line", "humaneval_multi_line",
                                    "humaneval_single_line_prefix"))
  infill_batches += sum(math.ceil((2 - r["num_too_long"]) / 4)
                        for r in tasks["text_infill"].values())
  assert sorted(calls) == sorted(["assd"] * (infill_batches + 1) + ["sequential", "parallel"])

  eval_dir = os.path.join(work, "eval")
  with open(os.path.join(eval_dir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == results["step"] == 7
  assert list(saved["tasks"]) == list(config.eval.tasks)
  for kind in ("humaneval_single_line", "humaneval_multi_line", "humaneval_single_line_prefix"):
    r = tasks[kind]
    assert r["num_tasks"] == 2 and r["num_samples"] == 2
    assert 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0 and "pass@10" not in r
    assert sum(r["status_counts"].values()) + 2 * r["num_too_long"] == 4
    assert r["num_too_long"] == 2 or r["tokens_per_call"] >= 1.0
  assert set(tasks["text_infill"]) == {"1/5", "3/5"}
  for r in tasks["text_infill"].values():
    assert r["num_tasks"] == 2 and all(0.0 <= r[key] <= 100.0
                                       for key in ("rouge1", "rouge2", "rougeL"))
  assert tasks["text_infill"]["1/5"]["num_too_long"] == 0  # one sentence always fits

  gen = tasks["gen_quality"]
  assert gen["baseline"] == "sequential"
  assert list(gen["methods"]) == ["sequential", "assd(k=2)", "parallel(k=2)", "data"]
  rows = gen["methods"]
  assert rows["sequential"]["tokens_per_call"] == 1.0
  assert 1.0 <= rows["assd(k=2)"]["tokens_per_call"] <= 2.0
  assert rows["parallel(k=2)"]["tokens_per_call"] > 1.9
  for row in rows.values():
    assert row["num_samples"] == 2 and row["judge_ppl"] > 1.0 and row["entropy"] > 0.0
    assert {"t_ppl", "p_ppl", "t_entropy", "p_entropy"} <= set(row)
  assert rows["sequential"]["t_ppl"] == 0.0 and rows["sequential"]["p_ppl"] == 1.0
  assert os.path.getsize(os.path.join(eval_dir, "gen_quality.png")) > 1000
  with open(os.path.join(eval_dir, "results.md")) as f:
    md = f.read()
  for column in ("judge PPL", "t (PPL)", "p (PPL)", "t (entropy)", "p (entropy)", "tokens/call",
                 "pass@1", "pass@2", "ROUGE-L", "left_to_right bits/token",
                 "any_subset bits/token", "Draft acceptance", "depth 2"):
    assert column in md

  # Density at fraction 0, left to right, is the causal LM loss from density.log_prob itself.
  (batch,) = data.heldout_batches(config.data, tokenizer, os.path.join(work, "data"),
                                  batch_size=4, num_batches=1)
  logp = density.log_prob(model, params, batch, batch < 4)
  causal_bits = -float(logp.sum()) / int((batch >= 4).sum()) / math.log(2.0)
  bits = tasks["density"]["bits_per_token"]
  assert bits["left_to_right"]["0"] == pytest.approx(causal_bits, rel=1e-5)
  assert bits["any_subset"]["0"] != pytest.approx(causal_bits, rel=1e-5)
  # Draft acceptance: a rate in (0, 1] per temperature, fraction and depth (its exactness is
  # tested in test_evaluation.py).
  acceptance = tasks["draft_acceptance"]["acceptance"]
  assert set(acceptance) == {"T=1", "T=0.5"}
  for by_fraction in acceptance.values():
    assert list(by_fraction) == ["0.5"] and all(0 < r <= 1 for r in by_fraction["0.5"])
    assert len(by_fraction["0.5"]) == 2

  # A rerun generates nothing and reports the same; a cut-short cache line is regenerated.
  calls.clear()
  again = runner.run(config, work)
  assert calls == [] and again == results
  path = os.path.join(eval_dir, "gen_assd_k2_t1_step7_t1_f0.05_seed0_b4.jsonl")
  with open(path) as f:
    lines = f.readlines()
  with open(path, "w") as f:
    f.writelines(lines[:-1] + [lines[-1][:20]])
  config.eval.tasks = ("gen_quality",)
  third = runner.run(config, work)
  assert calls == ["assd"]
  assert third["tasks"]["gen_quality"]["methods"]["sequential"] == rows["sequential"]
  with open(path) as f:
    assert [json.loads(line)["key"] for line in f] == ["0", "1"]


def test_judge_config_judges_the_named_config():
  """`configs/judge.py:NAME` keeps NAME's data block (so it can share the judged model's
  tokenizer) and trains left to right with nothing visible; every shipped config validates."""
  from absl import flags
  from ml_collections import config_flags
  from asarm_jax import validation
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  values(["prog", f"--config={root}/judge.py:xlnet_base"])
  judge = values.config
  judged = from_file(os.path.join(root, "xlnet_base.py"))
  assert judge.data.to_dict() == judged.data.to_dict()
  assert tuple(judge.objective.fraction_range) == (0.0, 0.0) and not judge.objective.random_order
  for name in sorted(os.listdir(root)):
    if name.endswith(".py"):
      validation.validate_config(from_file(os.path.join(root, name)))


def test_samples_judged_later_match_judging_now(workdir, tmp_path, capsys):
  work, config, _, _, _ = workdir
  config = copy.deepcopy(config)
  config.eval.update(tasks=("gen_quality",), judge_workdir=work, seed=3)  # its own caches
  now = runner.run(config, work)["tasks"]["gen_quality"]
  config.eval.update(judge_workdir="", gen_samples_only=True)
  later = runner.run(config, work)["tasks"]["gen_quality"]
  assert "baseline" not in later and later["samples"] == now["samples"]
  assert later["methods"] == {name: {key: row[key] for key in ("method", "k", "tokens_per_call")}
                              for name, row in now["methods"].items() if name != "data"}
  with open(os.path.join(work, "eval", "results.md")) as f:
    assert "not judged" in f.read()

  path = str(tmp_path / now["samples"])  # brought back to another machine
  shutil.copy(os.path.join(work, "eval", now["samples"]), path)
  judged = judge_samples.judge_file(path, inference.load(work), config.eval.batch_size)
  assert judged["methods"] == now["methods"] and judged["baseline"] == now["baseline"]
  with open(path[:-len(".npz")] + "_judged.json") as f:
    assert json.load(f)["methods"] == json.loads(json.dumps(now["methods"]))
  judge_samples.main(["--judge", work, "--batch_size", "4", path])
  assert "judge PPL" in capsys.readouterr().out

  samples, proto = gen_quality.read_samples(path)
  gen_quality.write_samples(path, samples, proto + b"x")  # another tokenizer
  with pytest.raises(ValueError, match="another tokenizer"):
    judge_samples.judge_file(path, inference.load(work))
