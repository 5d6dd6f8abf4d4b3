"""The loop benchmark (`python -m benchmarks.loop`) on the tiny pipeline: serve, correct, drift, retrain, swap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rotmnist.data import feedback
from tests.support.tiny_repo import REPO, run, set_params

pytestmark = pytest.mark.slow  # on one worker under -n: tests/conftest.py SHARED_WORKER


def test_the_loop_turns_corrections_into_a_new_champion_the_running_server_picks_up(trained_repo, tmp_path):
    repo = trained_repo
    # The gate's thresholds are tested elsewhere; here every candidate passes, so the loop always swaps.
    set_params(repo / "params.yaml", {"monitor": {"threshold": 1.0, "angle_threshold": 1.0, "tolerance": 1.0}})
    run(["dvc", "repro", "monitor"], repo)
    assert [len(feedback.load(repo / "data/feedback" / p)) for p in feedback.FOLDERS] == [0, 0]
    trained_run = json.loads((repo / "models/run.json").read_text())["run_id"]
    model_bytes = (repo / "models/model.pt").read_bytes()
    out = tmp_path / "loop.json"
    cmd = [sys.executable, "-m", "benchmarks.loop", "--repo", str(repo), "--max-corrections", "40"]
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    stream, exported = report["stream"], report["exported"]
    assert 0 < stream["corrected"] <= 40 and stream["corrected"] <= stream["wrong"] <= stream["sent"]
    assert exported["train"] + exported["holdout"] == stream["corrected"]
    # the stream's digits are tilted 60 deg, beyond every trained angle: the input drift check calls that harmful
    assert report["drift"]["verdict"] == "harmful" and "tilt_degrees" in report["drift"]["drifted"]
    assert report["gate"] == "passed" and int(report["versions"]["after"]) == int(report["versions"]["before"]) + 1
    assert set(report["after"]["trained"]) == {str(a) for a in (-30, -20, -10, 0, 10, 20, 30)}
    assert "| 60 deg (unseen) |" in proc.stdout
    # The new champion is train's model fine-tuned on the train share of the corrections; train itself did not run.
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["feedback"] is True
    tuned = json.loads((repo / "reports/finetune.json").read_text())
    assert tuned["finetuned"] is True and tuned["feedback_images"] == exported["train"]
    assert set(tuned["test_change"]["per_angle"]) == set(report["after"]["trained"])
    base, candidate = (json.loads((repo / "models" / f).read_text()) for f in ("run.json", "candidate.json"))
    assert candidate["base_run_id"] == base["run_id"] == trained_run and candidate["run_id"] != base["run_id"]
    assert (repo / "models/model.pt").read_bytes() == model_bytes
    assert (repo / "models/candidate.pt").read_bytes() != model_bytes
    monitor = json.loads((repo / "reports/monitor.json").read_text())
    headline = json.loads((repo / "metrics/monitor.json").read_text())
    if exported["holdout"]:
        assert monitor["feedback"]["n"] == exported["holdout"]
        assert headline["feedback_accuracy"] == monitor["feedback"]["accuracy"]
    else:
        assert "feedback_accuracy" not in headline
    held = feedback.load(repo / "data/feedback/holdout").request_id
    assert not set(held) & set(feedback.load(repo / "data/feedback/train").request_id)
    # The exported images are rotated train digits; none is a test or holdout image.
    images = np.concatenate([feedback.load(repo / "data/feedback" / p).data.x for p in feedback.FOLDERS])
    for split in ("holdout", "test"):
        x = np.load(repo / "data/splits" / split / "x.npy")
        assert not (images[:, None] == x[None]).all(axis=(2, 3)).any()
    # Exporting again changes nothing DVC sees.
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status", "feedback"], cwd=repo, capture_output=True, text=True
    )
    assert "up to date" in status.stdout or status.stdout.strip() == "", status.stdout


def test_with_check_a_loop_whose_candidate_fails_the_gate_exits_1_naming_the_reasons(trained_repo, tmp_path):
    repo = trained_repo
    set_params(repo / "params.yaml", {"monitor": {"threshold": 1.0, "angle_threshold": 1.0, "tolerance": 1.0}})
    run(["dvc", "repro", "monitor"], repo)  # v1 is the champion
    # No model reaches an error of 0 on the holdout: the fine-tuned candidate fails, the champion stays v1.
    set_params(repo / "params.yaml", {"monitor": {"threshold": 0.0}})
    out = tmp_path / "loop.json"
    cmd = [sys.executable, "-m", "benchmarks.loop", "--repo", str(repo), "--max-corrections", "10", "--check"]
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["gate"] == "failed" and report["versions"] == {"before": "1", "after": "-"}
    assert "threshold" in report["gate_reasons"]
    assert f"check failed: the gate kept champion v1: {report['gate_reasons']}" in proc.stderr
    assert f"gate reasons: {report['gate_reasons']}" in proc.stdout
    assert json.loads((repo / "reports/finetune.json").read_text())["finetuned"] is True


def test_the_finetune_levers_benchmark_prints_a_row_per_blend_with_the_goals_verdict(trained_repo):
    cmd = [sys.executable, "-m", "benchmarks.finetune", "--repo", str(trained_repo), "--max-corrections", "20"]
    proc = subprocess.run([*cmd, "--only", "default"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| default |")]
    assert [row[1] for row in rows] == ["0.5", "0.7", "1"]  # the blends, each scored
    assert all(row[-1].rstrip(" |") in ("yes", "no") for row in rows)
    assert "corrections" in proc.stdout.splitlines()[0]
