"""The metrics files of the stages: what DVC cannot show is refused, by key."""

import json

import pytest

from rotmnist.reports import write_metrics


def test_write_metrics_refuses_what_dvc_cannot_show_and_names_the_keys(tmp_path):
    path = tmp_path / "m.json"
    good = {"a": 1, "b": {"c": 0.5, "d": True, "e": "passed"}}
    write_metrics(path, good)
    assert json.loads(path.read_text()) == good
    bad = {"a": None, "b": {"c": [1, 2], "d": float("nan"), "ok": 1}, "e": float("inf")}
    with pytest.raises(ValueError, match=r"a: None; b\.c: \[1, 2\]; b\.d: nan; e: inf"):
        write_metrics(path, bad)
    with pytest.raises(ValueError, match=r"b\.error: DVC reads a key named 'error' as a failed load"):
        write_metrics(path, {"b": {"error": 0.1}})
    with pytest.raises(ValueError, match=r"<top>: \[1\]"):
        write_metrics(path, [1])
    assert json.loads(path.read_text()) == good  # the previous file stays
