"""Evaluation: the sandbox, HumanEval infilling tasks and scoring, text infilling, statistics."""
import gzip
import json
import math
import socket
import subprocess
import sys
import time

import pytest
import scipy.stats

from asarm_jax.evaluation import compare_passes, humaneval_infill, metrics, sandbox, text_infill
from tests.helpers import model_config

MECHANISMS = sorted({"guard", sandbox.network_isolation()})


# --- sandbox -------------------------------------------------------------------------------

def test_sandbox_passing_raising_and_early_exit():
  results = sandbox.run_many(
      ["x = sum(range(10))\nassert x == 45\nprint(x)", "raise ValueError('boom')",
       "import sys\nsys.exit(0)\nassert False", "def f(:\n  pass", "import os\nos._exit(0)"],
      workers=2, timeout_s=10)
  assert [r.status for r in results] == ["passed", "failed", "failed", "failed", "failed"]
  assert [r.passed for r in results] == [True, False, False, False, False]
  assert "ValueError: boom" in results[1].detail
  assert "SyntaxError" in results[3].detail


def test_sandbox_kills_infinite_loop():
  start = time.monotonic()
  result = sandbox.run_program("while True:\n  pass", timeout_s=1.5)
  assert time.monotonic() - start < 10
  assert (result.passed, result.status) == (False, "timeout")


@pytest.mark.parametrize("bomb", ["x = bytearray(10**11)", "x = bytearray(4 * 2**30)",
                                  "x = []\nwhile True:\n  x.append(' ' * 10**6)"])
def test_sandbox_stops_memory_bomb(bomb):
  start = time.monotonic()
  result = sandbox.run_program(bomb, timeout_s=20, memory_mb=512)
  assert time.monotonic() - start < 15
  assert (result.passed, result.status) == (False, "memory")


def test_sandbox_guard_disables_destructive_calls(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  result = sandbox.run_program(f"import os\nos.remove({str(victim)!r})")
  assert not result.passed
  assert victim.read_text() == "keep me"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sandbox_blocks_network(mechanism):
  with socket.create_server(("127.0.0.1", 0)) as server:
    port = server.getsockname()[1]
    program = (f"import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), "
               f"timeout=2).close()\nexcept OSError:\n  pass\nelse:\n"
               f"  raise AssertionError('network reachable')\n")
    unsandboxed = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True)
    assert unsandboxed.returncode != 0 and b"network reachable" in unsandboxed.stderr
    result = sandbox.run_program(program, timeout_s=10, isolation=mechanism)
    assert result.status == "passed", result.detail


# --- HumanEval infilling ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def problems():
  return humaneval_infill.load_problems()


@pytest.fixture(scope="module")
def single(problems):
  return humaneval_infill.single_line_tasks(problems)


@pytest.fixture(scope="module")
def multi(problems):
  return humaneval_infill.multi_line_tasks(problems)


def test_task_counts_and_layout(problems, single, multi):
  assert len(problems) == 164
  assert (len(single), len(multi)) == (1033, 5815)
  assert len({t.task_id for t in single}) == 1033 and len({t.task_id for t in multi}) == 5815
  by_id = {p["task_id"]: p for p in problems}
  for task in single + multi:
    problem = by_id[task.task_id.split("/", 1)[1].rsplit("/", 1)[0]]
    whole = problem["prompt"] + problem["canonical_solution"]
    assert task.prefix + task.middle + task.suffix == whole
    assert task.middle.strip() and task.middle.endswith("\n")
  assert all(t.middle.count("\n") == 1 for t in single)
  assert single[0].task_id == "SingleLineInfilling/HumanEval/0/L0"
  assert single[0].middle == "    for idx, elem in enumerate(numbers):\n"
  assert multi[1].task_id == "MultiLineInfilling/HumanEval/0/L0_L1"


def test_canonical_middle_passes_and_empty_middle_fails(single, multi):
  chosen = ["SingleLineInfilling/HumanEval/0/L4", "SingleLineInfilling/HumanEval/2/L0",
            "MultiLineInfilling/HumanEval/12/L3_L6"]
  tasks = {t.task_id: t for t in single + multi}
  programs = [humaneval_infill.program_for(tasks[i], middle)
              for i in chosen for middle in (tasks[i].middle, "")]
  results = sandbox.run_many(programs, workers=2)
  assert [r.passed for r in results] == [True, False] * len(chosen)


def test_score_is_resumable(single, tmp_path, monkeypatch, capsys):
  tasks = [t for t in single if t.task_id in ("SingleLineInfilling/HumanEval/2/L0",
                                               "SingleLineInfilling/HumanEval/0/L4",
                                               "SingleLineInfilling/HumanEval/0/L5")]
  completions = {t.task_id: [t.middle, ""] for t in tasks}
  calls = []
  run_many = sandbox.run_many

  def counting_run_many(programs, **kwargs):
    calls.append(len(programs))
    return run_many(programs, **kwargs)

  monkeypatch.setattr(sandbox, "run_many", counting_run_many)
  path = str(tmp_path / "results.jsonl")

  first = humaneval_infill.score(tasks[:2], {t.task_id: completions[t.task_id] for t in tasks[:2]},
                                 k_values=(1, 2, 10), results_path=path, progress_every=1)
  assert "4/4 new samples scored" in capsys.readouterr().out
  with open(path, "a") as f:  # an interrupted write
    f.write('{"task_id": "SingleLineInfilling/HumanEval/0/L5", "sam')
  full = humaneval_infill.score(tasks, completions, k_values=(1, 2, 10), results_path=path)
  again = humaneval_infill.score(tasks, completions, k_values=(1, 2, 10), results_path=path)
  assert calls == [4, 2, 0]
  assert first["pass@1"] == 0.5 and first["pass@2"] == 1.0 and "pass@10" not in first
  assert full == again and full["pass@1"] == 0.5 and full["num_samples"] == 6
  assert all(v["n"] == 2 and v["c"] == 1 for v in full["per_task"].values())
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip().endswith("}")]
  assert len(records) == 6
  with pytest.raises(ValueError, match="different completion"):
    humaneval_infill.score(tasks, {t.task_id: ["pass\n", ""] for t in tasks}, results_path=path)


# --- metrics --------------------------------------------------------------------------------

def test_pass_at_k_known_values():
  assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
  assert metrics.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
  assert metrics.pass_at_k(5, 0, 2) == 0.0
  assert metrics.pass_at_k(10, 9, 2) == 1.0
  n, c, k = 200, 13, 10  # Chen et al.'s numerically stable product form
  assert metrics.pass_at_k(n, c, k) == pytest.approx(
      1 - math.prod(1 - k / i for i in range(n - c + 1, n + 1)), rel=1e-12)
  with pytest.raises(ValueError):
    metrics.pass_at_k(3, 4, 1)


def test_unigram_entropy():
  assert metrics.unigram_entropy([7, 7, 7]) == 0.0
  assert metrics.unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
  assert metrics.unigram_entropy([1, 1, 2, 5]) == pytest.approx(
      -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


@pytest.mark.parametrize("a, b", [
    ([0.1, 0.4, 0.35, 0.2, 0.5], [0.3, 0.6, 0.55, 0.7]),
    ([1.0, 2.0, 3.0], [10.0, 11.5, 9.0, 12.0, 30.0, 8.0]),
    ([5.0, 5.1], [4.0, 7.0, 1.0, 9.0, 3.0, 3.0, 2.0]),
    ([0.0, 1e-3, 2e-3, 1.5e-3], [1.0, 1.001, 1.002]),
    ([2.0, 2.5, 3.0, 3.5, 4.0, 4.5], [2.1, 2.4, 3.2, 3.3, 4.1, 4.4]),
])
def test_welch_t_test_matches_scipy(a, b):
  reference = scipy.stats.ttest_ind(a, b, equal_var=False)
  t, p = metrics.welch_t_test(a, b)
  assert t == pytest.approx(reference.statistic, rel=1e-9)
  assert p == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("stats_a, stats_b", [
    ((90.55, 67.31, 64), (580.6, 338.3, 64)), ((1.0, 0.5, 3), (1.2, 4.0, 40)),
    ((2.0, 0.0, 5), (2.0, 1e-3, 2))])
def test_welch_t_test_from_stats_matches_scipy(stats_a, stats_b):
  reference = scipy.stats.ttest_ind_from_stats(*stats_a, *stats_b, equal_var=False)
  t, p = metrics.welch_t_test_from_stats(*stats_a, *stats_b)
  assert t == pytest.approx(reference.statistic, rel=1e-9)
  assert p == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)


def test_welch_t_test_degenerate_samples():
  assert metrics.welch_t_test([1.0, 1.0], [2.0, 2.0, 2.0]) == (-math.inf, 0.0)
  assert all(math.isnan(v) for v in metrics.welch_t_test([3.0, 3.0], [3.0, 3.0]))
  with pytest.raises(ValueError):
    metrics.welch_t_test([1.0], [1.0, 2.0])


@pytest.mark.parametrize("only_a, only_b", [
    (0, 6), (6, 0), (29, 29), (28, 37), (52, 32), (3, 40), (200, 170), (1, 0)])
def test_mcnemar_exact_matches_scipy_binomial_test(only_a, only_b):
  reference = scipy.stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
  assert metrics.mcnemar_exact(only_a, only_b) == pytest.approx(reference, rel=1e-12)
  assert metrics.mcnemar_exact(only_a, only_b) == metrics.mcnemar_exact(only_b, only_a)


def test_mcnemar_exact_edge_cases():
  assert metrics.mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence of a difference
  assert metrics.mcnemar_exact(0, 6) == 2 / 64
  with pytest.raises(ValueError):
    metrics.mcnemar_exact(-1, 3)


def _write_results(path, outcomes, cut_short=False):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    for (task_id, sample), passed in outcomes.items():
      f.write(json.dumps({"task_id": task_id, "sample": sample, "completion": "x",
                          "passed": passed, "status": "passed" if passed else "failed"}) + "\n")
    if cut_short:
      f.write('{"task_id": "T/9", "sam')  # an interrupted run's last line


def test_compare_passes_pairs_samples_across_plain_and_gzip_files(tmp_path):
  # Two samples per task; the outcomes are laid out so that both=2, only base=3, only other=1.
  base = {("T/0", 0): True, ("T/0", 1): True, ("T/1", 0): True, ("T/1", 1): True,
          ("T/2", 0): True, ("T/2", 1): False, ("T/3", 0): False, ("T/3", 1): False}
  other = {("T/0", 0): True, ("T/0", 1): False, ("T/1", 0): True, ("T/1", 1): False,
           ("T/2", 0): False, ("T/2", 1): True, ("T/3", 0): False, ("T/3", 1): False}
  _write_results(tmp_path / "base.jsonl", base, cut_short=True)
  _write_results(tmp_path / "other.jsonl.gz", other)
  row = compare_passes.compare(compare_passes.passes(str(tmp_path / "base.jsonl")),
                               compare_passes.passes(str(tmp_path / "other.jsonl.gz")))
  assert row == {"samples": 8, "passed": 3, "both": 2, "only_base": 3, "only_other": 1,
                 "p": metrics.mcnemar_exact(3, 1)}
  text = compare_passes.table([str(tmp_path / "base.jsonl"), str(tmp_path / "other.jsonl.gz")])
  assert "| base.jsonl | 5/8 | 62.50 | — |" in text
  assert f"| other.jsonl.gz | 3/8 | 37.50 | 2 | 3 | 1 | {metrics.mcnemar_exact(3, 1):.3g} |" in text


def test_compare_passes_refuses_files_of_different_samples(tmp_path):
  _write_results(tmp_path / "a.jsonl", {("T/0", 0): True, ("T/1", 0): False})
  _write_results(tmp_path / "b.jsonl", {("T/0", 0): True, ("T/2", 0): False})
  with pytest.raises(ValueError, match="different samples"):
    compare_passes.table([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])


# --- text infilling -------------------------------------------------------------------------

def test_rouge_known_pairs():
  assert text_infill.rouge(["He went home."], ["He went home."]) == {
      "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  assert text_infill.rouge(["alpha beta"], ["gamma delta"]) == {
      "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  partial = text_infill.rouge(["the cat sat"], ["the cat ran"])  # 2/3 unigrams, 1/2 bigrams
  assert partial == pytest.approx({"rouge1": 200 / 3, "rouge2": 50.0, "rougeL": 200 / 3})
  stemmed = text_infill.rouge(["The cats were running."], ["the cat was running"])
  assert stemmed["rouge1"] == pytest.approx(75.0)  # cats -> cat only with stemming
  mean = text_infill.rouge(["a b c", "x"], ["a b c", "y"])
  assert mean["rouge1"] == pytest.approx(50.0)


def test_windows_and_tasks():
  text = ("Mr. Smith went to Washington on Monday. He met Dr. J. K. Rowling there!\n\n"
          "A heading\n\nTom bought a new car yesterday. He drove it to work the next day. "
          "His boss was very impressed. She asked him where he got it. Tom told her about "
          "the dealership. Then he went home happy.")
  assert text_infill.split_sentences(text)[:3] == [
      "Mr. Smith went to Washington on Monday.", "He met Dr. J. K. Rowling there!", "A heading"]
  stories = text_infill.windows_from_documents([text, text], max_stories=2)
  assert [s.story_id for s in stories] == ["doc0/s3", "doc1/s3"]
  assert stories[0].sentences[0] == "Tom bought a new car yesterday."
  assert text_infill.windows_from_documents([text], max_stories=0) == []
  story = stories[0]
  one, three = (text_infill.make_tasks([story], s)[0] for s in ("1/5", "3/5"))
  assert one.middle == "His boss was very impressed."
  assert one.prefix == "Tom bought a new car yesterday. He drove it to work the next day. "
  assert three.middle == " ".join(story.sentences[1:4])
  assert three.suffix == " Tom told her about the dealership."
  for task in (one, three):
    assert task.prefix + task.middle + task.suffix == " ".join(story.sentences)


def test_read_rocstories_csv(tmp_path):
  path = tmp_path / "roc.csv"
  path.write_text("storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n"
                  'id1,Title,One.,"Two, too.",Three.,Four.,Five.\n', encoding="utf-8")
  (story,) = text_infill.read_rocstories_csv(str(path))
  assert story == text_infill.Story(
      "id1", "Title", ("One.", "Two, too.", "Three.", "Four.", "Five."))
  bad = tmp_path / "bad.csv"
  bad.write_text("storyid,sentence1\nx,y\n", encoding="utf-8")
  with pytest.raises(ValueError, match="lacks ROCStories columns"):
    text_infill.read_rocstories_csv(str(bad))


def test_draft_acceptance_is_one_exactly_when_drafts_are_the_conditionals():
  """sum_x min(p, q) per depth: 1 when the query stream ignores the context (attention outputs
  zeroed, so a draft row and the exact row of a rank coincide), below 1 with real attention;
  greedy (T=0) rates are 0 or 1 per row, so their means lie in [0, 1]."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from asarm_jax import models  # pylint: disable=g-import-not-at-top
  from asarm_jax.evaluation import draft_eval  # pylint: disable=g-import-not-at-top
  model = models.build(model_config(
      vocab_size=24, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_len=16))
  params = model.init(jax.random.key(0), *models.example_inputs(1, 16, 4))
  params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, params)  # sharper rows
  batches = [np.asarray(jax.random.randint(jax.random.key(1), (4, 16), 4, 24))]
  run = lambda p, temperatures=(1.0,): draft_eval.evaluate(
      model, p, batches, fractions=(0.1, 0.5), temperatures=temperatures, depth=3, cuts=4,
      seed=0)["acceptance"]
  blind = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 0 if "attention" in jax.tree_util.keystr(path)
      and "out" in jax.tree_util.keystr(path) else x, params)
  for rates in run(blind)["T=1"].values():
    np.testing.assert_allclose(rates, 1.0, atol=1e-5)
  real = run(params, (1.0, 0.0))
  assert all(0.0 <= r < 0.999 for rates in real["T=1"].values() for r in rates)
  assert all(0.0 <= r <= 1.0 for rates in real["T=0"].values() for r in rates)


def test_sampler_tag_separates_every_setting_that_changes_completions():
  """Generation caches are keyed by this tag: a changed checkpoint or sampler setting (for trees
  also depth and prompt lookup) must never reuse another setting's completions."""
  import types  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from asarm_jax import sampling  # pylint: disable=g-import-not-at-top
  from asarm_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  from asarm_jax.config_base import default_eval_config  # pylint: disable=g-import-not-at-top

  def tag(step=1, seed=0, batch_size=16, deterministic=False, **changes):
    ecfg = default_eval_config()
    ecfg.update(seed=seed, batch_size=batch_size)
    config = ml_collections.ConfigDict({"eval": ecfg,
                                        "sample": {"deterministic": deterministic}})
    spec = sampling.SamplerSpec(**{"method": "tree", **changes})
    ctx = runner.Context(types.SimpleNamespace(step=step), config, spec, "", "")
    return runner._sampler_tag(ctx)  # pylint: disable=protected-access
  settings = [{}, {"step": 2}, {"method": "assd"}, {"method": "assd", "k": 3},
              {"temperature": 0.5}, {"seed": 1}, {"batch_size": 4}, {"num_nodes": 3},
              {"depth": 3}, {"ngram": 0}, {"deterministic": True}]
  tags = [tag(**s) for s in settings]
  assert len(set(tags)) == len(tags), tags
  # Settings the method does not read leave the tag (and the cache) as it is.
  assert tag(k=3) == tag() and tag(method="assd", depth=2, num_nodes=3) == tag(method="assd")
