"""The `rotmnist` command line: stages listed, config errors and stage errors reported cleanly."""

import subprocess
import sys
import types

import pytest

from rotmnist import cli
from rotmnist.errors import PipelineError


def test_help_lists_every_stage():
    out = subprocess.run(
        [sys.executable, "-m", "rotmnist.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in ("download", "augment", "split", "tune", "train", "monitor", "predict"):
        assert stage in out


def test_invalid_params_exit_2_naming_the_key(tmp_path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: many\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["augment"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_stage_error_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)

    def failing_main(config, paths):
        raise PipelineError("checksum mismatch for mnist.npz")

    monkeypatch.setitem(sys.modules, "fake_stage", types.SimpleNamespace(main=failing_main))
    monkeypatch.setitem(cli.STAGES, "download", ("fake_stage", "x"))
    assert cli.main(["download"]) == 1
    assert capsys.readouterr().err.strip() == "rotmnist download: checksum mismatch for mnist.npz"
    with pytest.raises(PipelineError):
        cli.main(["-v", "download"])
