"""Faults the pipeline must survive, done for real: a stage SIGKILLed while it writes, and `dvc gc` then `dvc pull`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rotmnist.tracking import folder_md5
from tests.integration.conftest import BIN, run

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


def test_a_stage_killed_while_writing_leaves_nothing_half_written_and_the_rerun_gives_the_same_hashes(tiny_repo):
    run(["dvc", "repro", "split"], tiny_repo)
    augmented, splits = tiny_repo / "data" / "augmented", tiny_repo / "data" / "splits"
    hashes = {
        "data/augmented": lock_md5(tiny_repo, "data/augmented"),
        "data/splits": lock_md5(tiny_repo, "data/splits"),
    }

    # 1. A forced rerun of augment killed mid-write: the previous output stays whole, DVC sees no change.
    kill_while_writing(tiny_repo, "augment", augmented)
    assert folder_md5(augmented) == hashes["data/augmented"]
    assert temporary_siblings(augmented), "the kill did not land while the stage was writing"
    assert "up to date" in run(["dvc", "status", "split"], tiny_repo).stdout.lower()

    # 2. split killed mid-write with no previous output: nothing appears where DVC or `train` would read it.
    shutil.rmtree(splits)
    kill_while_writing(tiny_repo, "split", splits)
    assert not splits.exists()
    assert "deleted:            data/splits" in run(["dvc", "status", "split"], tiny_repo).stdout

    # The reruns (forced: DVC would otherwise restore the outputs from its run cache without running the
    # stages) remove what the killed processes left and write the same bytes.
    run(["dvc", "repro", "-f", "-s", "augment"], tiny_repo)
    run(["dvc", "repro", "-f", "-s", "split"], tiny_repo)
    assert {out: lock_md5(tiny_repo, out) for out in hashes} == hashes
    assert folder_md5(augmented) == hashes["data/augmented"] and folder_md5(splits) == hashes["data/splits"]
    assert temporary_siblings(augmented) == temporary_siblings(splits) == []
