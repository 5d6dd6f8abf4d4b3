"""Paths: the workspace is found from any subfolder; stores resolve to the real repository."""

import pytest

from rotmnist.paths import Paths, find_store_root, find_workspace


def test_workspace_found_from_a_subfolder(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "notebooks" / "deep"
    sub.mkdir(parents=True)
    assert find_workspace(sub) == tmp_path.resolve()


def test_dvc_temp_experiment_stores_resolve_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    paths = Paths.here(copy)
    assert paths.root == copy.resolve()
    assert paths.store_root == tmp_path.resolve()
    assert paths.mlflow_db == tmp_path.resolve() / "mlflow.db"
    assert paths.raw == copy.resolve() / "data" / "raw"


def test_store_root_override(tmp_path, monkeypatch):
    monkeypatch.setenv("ROTMNIST_STORE_ROOT", str(tmp_path / "elsewhere"))
    assert find_store_root(tmp_path) == (tmp_path / "elsewhere").resolve()


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        Paths(tmp_path, tmp_path).split("dev")


def test_cache_dir_relative_to_store_root(tmp_path):
    paths = Paths(tmp_path / "work", tmp_path / "repo")
    assert paths.cache_dir(".cache/x") == tmp_path / "repo" / ".cache" / "x"
    assert paths.cache_dir(str(tmp_path / "abs")) == tmp_path / "abs"


def test_each_report_and_headline_has_one_path_and_an_unknown_name_is_refused(tmp_path):
    paths = Paths(tmp_path, tmp_path)
    assert paths.report("split_manifest") == tmp_path / "reports" / "split_manifest.json"
    assert paths.headline("train") == tmp_path / "metrics" / "train.json"
    with pytest.raises(ValueError, match="unknown report 'drift'"):
        paths.report("drift")
    with pytest.raises(ValueError, match="unknown headline 'split_manifest'"):
        paths.headline("split_manifest")  # the split's manifest is a report only
