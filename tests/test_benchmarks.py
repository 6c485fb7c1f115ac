"""The benchmarks package: every experiment's dry run, the record schema, the docs' tables."""
import os

import pytest

from benchmarks import cli, experiment, records, report
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
    ("tree:4:2", dict(method="tree", num_nodes=4, depth=2))])
def test_sampler_flags(text, fields):
  spec = cli.parse_spec(text)
  assert all(getattr(spec, k) == v for k, v in fields.items())
  with pytest.raises(ValueError):
    cli.parse_spec("tree:8:2:1")
