"""Faults the pipeline must survive, done for real: a stage SIGKILLed while it writes, and `dvc gc` then `dvc pull`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rotmnist.tracking.store import folder_md5
from tests.support.tiny_repo import BIN, run

pytestmark = pytest.mark.slow  # dvc repro of the tiny pipeline

# The stage's real code in a real process; only numpy's writer is slowed (it pauses after each array it
# writes), so the SIGKILL lands while the stage's output is half written.
SLOW_WRITER = """
import sys, time
import numpy as np
save = np.save
def slow_save(*args, **kwargs):
    save(*args, **kwargs)
    time.sleep(60)
np.save = slow_save
from rotmnist import cli
sys.exit(cli.main([sys.argv[1]]))
"""


def lock_md5(repo: Path, out: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == out)


def dvc_status(repo: Path, stage: str) -> dict:
    """What DVC sees changed for `stage`, as `dvc status --json` reports it ({} when up to date)."""
    return json.loads(run(["dvc", "status", "--json", stage], repo).stdout)


def temporary_siblings(folder: Path) -> list[Path]:
    return sorted(p for p in folder.parent.glob(f".{folder.name}.*"))


def kill_while_writing(repo: Path, stage: str, out: Path) -> None:
    """Run `rotmnist <stage>`, SIGKILL it once its first output array is on disk, in a temporary folder."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, stage], cwd=repo, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(sibling.is_dir() and any(sibling.rglob("*.npy")) for sibling in temporary_siblings(out)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_stage_killed_while_writing_leaves_nothing_half_written_and_the_rerun_gives_the_same_hashes(trained_repo):
    run(["dvc", "repro", "split"], trained_repo)
    augmented, splits = trained_repo / "data" / "augmented", trained_repo / "data" / "splits"
    hashes = {
        "data/augmented": lock_md5(trained_repo, "data/augmented"),
        "data/splits": lock_md5(trained_repo, "data/splits"),
    }

    # 1. A forced rerun of augment killed mid-write: the previous output stays whole, DVC sees no change.
    kill_while_writing(trained_repo, "augment", augmented)
    assert folder_md5(augmented) == hashes["data/augmented"]
    assert temporary_siblings(augmented), "the kill did not land while the stage was writing"
    assert dvc_status(trained_repo, "split") == {}

    # 2. split killed mid-write with no previous output: nothing appears where DVC or `train` would read it.
    shutil.rmtree(splits)
    kill_while_writing(trained_repo, "split", splits)
    assert not splits.exists()
    assert dvc_status(trained_repo, "split") == {"split": [{"changed outs": {"data/splits": "deleted"}}]}

    # The reruns (forced: DVC would otherwise restore the outputs from its run cache without running the
    # stages) remove what the killed processes left and write the same bytes.
    run(["dvc", "repro", "-f", "-s", "augment"], trained_repo)
    run(["dvc", "repro", "-f", "-s", "split"], trained_repo)
    assert {out: lock_md5(trained_repo, out) for out in hashes} == hashes
    assert folder_md5(augmented) == hashes["data/augmented"] and folder_md5(splits) == hashes["data/splits"]
    assert temporary_siblings(augmented) == temporary_siblings(splits) == []


def file_digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*.npy")}


def test_gc_then_pull_restores_the_splits_the_champion_was_trained_on(trained_repo):
    from mlflow import MlflowClient

    from tests.support.tiny_repo import set_params

    set_params(trained_repo / "params.yaml", {"monitor": {"threshold": 1.0, "angle_threshold": 1.0}})
    run(["git", "commit", "-qam", "a gate the tiny model passes"], trained_repo)
    run(["dvc", "repro"], trained_repo)
    run(["git", "add", "dvc.lock", "metrics", "reports", "plots"], trained_repo)
    run(["git", "commit", "-qm", "the champion's run"], trained_repo)
    run(["dvc", "push"], trained_repo)
    trained_on = file_digests(trained_repo / "data" / "splits")
    splits_hash = lock_md5(trained_repo, "data/splits")
    cached = trained_repo / ".dvc" / "cache" / "files" / "md5" / splits_hash[:2] / splits_hash[2:]
    assert cached.is_file()  # DVC's record of the folder's files

    # The team moves on: other splits, committed; then the cache keeps only what the workspace uses.
    set_params(trained_repo / "params.yaml", {"split": {"seed": 1}})
    run(["dvc", "repro", "split"], trained_repo)
    run(["git", "commit", "-qam", "new splits"], trained_repo)
    assert file_digests(trained_repo / "data" / "splits") != trained_on
    run(["dvc", "gc", "--workspace", "--force"], trained_repo)

    # The recipe of docs/pipeline.md: the champion's data_hash tag finds the commit whose dvc.lock recorded it.
    champion = MlflowClient(f"sqlite:///{trained_repo / 'mlflow.db'}").get_model_version_by_alias(
        "rotmnist-cnn", "champion"
    )
    data_hash = champion.tags["data_hash"]
    assert data_hash == splits_hash
    assert not cached.exists()  # gc removed the champion's splits from the cache: only the remote has them
    log = ["git", "log", "-S", data_hash, "--format=%H", "--reverse", "--", "dvc.lock"]
    commit = run(log, trained_repo).stdout.split()[0]
    run(["git", "checkout", commit, "--", "dvc.lock"], trained_repo)
    run(["dvc", "pull", "split"], trained_repo)
    assert file_digests(trained_repo / "data" / "splits") == trained_on
    assert folder_md5(trained_repo / "data" / "splits") == data_hash
