"""The published-baselines report: our cells next to the published ones, gaps, partial marks."""

import json

from experiments import published


def _finished(root, name, hr10, ndcg10, **changed):
  run_dir = root / name
  run_dir.mkdir(parents=True)
  full = {"hr@10": 0.06, "ndcg@10": 0.03, "hr@20": 0.09, "ndcg@20": 0.04}
  config = {
    **published.sweep_config("sasrec"),
    "dataset": "/elsewhere/" + name,
    "seed": 7,
    **changed,
  }
  (run_dir / "results.json").write_text(
    json.dumps(
      {
        "test": {"hr@10": hr10, "ndcg@10": ndcg10},
        "test_full": full,
        "selected_epoch": 40,
        "stopped_epoch": 50,
        "stages": {"main": {"history": [1, 2]}},
        "config": config,
      }
    )
  )
  (run_dir / "config.json").write_text(json.dumps(config))


def test_report_and_splice(tmp_path, monkeypatch):
  monkeypatch.setattr(published, "RECORDS", str(tmp_path / "records"))
  root = tmp_path / "runs"
  _finished(root, "sasrec_beauty_seed0", 0.46, 0.31)
  _finished(root, "sasrec_beauty_seed1", 0.48, 0.33)
  # A run of an earlier config does not count, and the sweep moves its workdir aside.
  _finished(root, "sasrec_lastfm_seed0", 0.1, 0.1, stop_rule="any")
  assert published.stale(
    json.loads((root / "sasrec_lastfm_seed0" / "results.json").read_text()), "sasrec"
  ) == ["stop_rule: 'any' -> 'select'"]
  runs = published.plan(["sasrec"], ["beauty", "lastfm"], ["0", "1"])
  assert [r.name for r in runs] == [
    "sasrec_beauty_seed0",
    "sasrec_lastfm_seed0",
    "sasrec_beauty_seed1",
    "sasrec_lastfm_seed1",
  ]
  for run in runs:
    published.record(str(root), run)
  saved = json.loads((tmp_path / "records" / "sasrec_beauty_seed0.json").read_text())
  assert "history" not in saved["stages"]["main"]
  text = published.report(str(root), runs)
  line = next(l for l in text.splitlines() if l.startswith("| beauty"))
  assert "| 2 | ours | 0.4700 ± 0.0141 | 0.3200 ± 0.0141 |" in line
  assert "40/50, 40/50" in line
  assert runs[1].name == "sasrec_lastfm_seed0" and published.load(str(root), runs[1]) is None
  gap = text.splitlines()[text.splitlines().index(line) + 2]
  assert gap.startswith("| | | gap | +0.1% | +1.4% |")
  assert "**Partial:** 2 of 4 runs finished" in text
  # Superseded records (other rules) are summarised apart, never counted in the main table.
  old = tmp_path / "records" / "superseded"
  old.mkdir()
  (old / "sasrec_lastfm_seed0.json").write_text(
    json.dumps(
      {
        "test": {"hr@10": 0.5, "ndcg@10": 0.3},
        "test_full": {"hr@10": 0.07},
        "selected_epoch": 9,
        "stopped_epoch": 20,
        "config": {"stop_rule": "any", "select_metric": "full:ndcg@10"},
      }
    )
  )
  text = published.report(str(root), runs)
  assert (
    "| SASRec | lastfm | stop rule any, selected on full:ndcg@10 | 1 | 0.5000 | 0.3000 | 0.0700 |"
  ) in text
  assert "**Partial:** 2 of 4 runs finished" in text
  doc = tmp_path / "RESULTS.md"
  doc.write_text("# Results\n\nolder tables\n")
  published.splice(str(doc), text)
  published.splice(str(doc), text)  # replaced, not appended twice
  body = doc.read_text()
  assert body.count(published.START) == 1 and body.startswith("# Results\n\nolder tables")


def test_sweep_moves_a_stale_workdir_aside(tmp_path, monkeypatch):
  monkeypatch.setattr(published, "RECORDS", str(tmp_path / "records"))
  root = tmp_path / "runs"
  _finished(root, "sasrec_lastfm_seed0", 0.1, 0.1, patience=3)
  (root / "sasrec_lastfm_seed0" / "results.json").unlink()  # interrupted
  launched = []
  monkeypatch.setattr(published.subprocess, "run", lambda cmd, **kw: launched.append(cmd))
  published.run_one(published.Run("sasrec", "lastfm", 0), str(root), "/data", [])
  assert (root / "sasrec_lastfm_seed0.superseded" / "config.json").exists()
  assert not (root / "sasrec_lastfm_seed0").exists()
  assert any(a.startswith("--workdir=") for a in launched[0])
