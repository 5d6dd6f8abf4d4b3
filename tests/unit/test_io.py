"""Atomic writes: files, folders, JSON and CSV."""

import csv
import json
import os
import subprocess
import sys

import pytest

from rotmnist.io import atomic_path, write_csv, write_json


def test_failed_file_write_leaves_nothing(tmp_path):
    target = tmp_path / "m.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_write_csv_writes_a_header_and_one_line_per_row(tmp_path):
    path = tmp_path / "plots" / "t.csv"
    write_csv(path, [{"angle": -10, "accuracy": 0.5}, {"angle": 0, "accuracy": 1.0}])
    assert path.read_text() == "angle,accuracy\n-10,0.5\n0,1.0\n"
    assert not list(path.parent.glob(".*"))  # no temporary file left behind
    write_csv(path, [])
    assert path.read_text() == "\n"


def test_write_csv_quotes_a_value_holding_a_comma_a_quote_or_a_line_break(tmp_path):
    path = tmp_path / "t.csv"
    rows = [{"name": "a,b", "note": 'say "hi"', "n": 1}, {"name": "two\nlines", "note": "", "n": True}]
    write_csv(path, rows)
    with path.open(newline="") as f:
        back = list(csv.DictReader(f))
    assert back == [{k: str(v) for k, v in row.items()} for row in rows]
    with pytest.raises(KeyError, match="note"):
        write_csv(path, [{"name": "a", "note": "b"}, {"name": "c"}])  # a row that lacks a column


def test_temporary_siblings_of_dead_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getppid()
    target = tmp_path / "splits"
    stale = [tmp_path / f".splits.tmp-{dead}-abc", tmp_path / f".splits.old-{dead}"]
    kept = [tmp_path / f".splits.tmp-{alive}-def", tmp_path / f".other.tmp-{dead}-ghi", tmp_path / ".splits.tmp-x"]
    for folder in stale + kept:
        (folder / "train").mkdir(parents=True)
    with atomic_path(target, is_dir=True) as tmp:
        assert tmp.name.startswith(f".splits.tmp-{os.getpid()}-")
        assert not any(p.exists() for p in stale)
        (tmp / "x.npy").write_bytes(b"")
    assert all(p.exists() for p in kept) and (target / "x.npy").exists()
