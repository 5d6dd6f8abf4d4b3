"""The `rotmnist` command line: one subcommand per stage, and one error path for every expected failure.

Each failure runs through the real CLI in a throwaway workspace: the message is one line that says what
to do, the exit status is 1 (2 for invalid params), and `-v` shows the traceback.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from rotmnist import cli
from rotmnist.config import load_config
from rotmnist.data.dataset import save_dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from tests.support.helpers import tiny_mnist

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "augment", "split", "feedback", "tune", "train", "finetune", "monitor", "compare", "curriculum")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace (dvc.yaml, params.yaml with a store of its own) as the current directory."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path, {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    return tmp_path


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def one_line_error(capsys, command: str) -> str:
    """The CLI's error: the last line on stderr (log lines may come before it), with no traceback anywhere."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"rotmnist {command}: "), err
    return last


def test_every_dvc_stage_is_one_hop_from_dvc_yaml(workspace, monkeypatch):
    """`rotmnist <stage>` for each stage of dvc.yaml runs `rotmnist.stages.<stage>.main` with the workspace's params."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGES
    write_params(workspace, {"train": {"epochs": 7}})
    for name, stage in stages.items():
        assert stage["cmd"] == f"rotmnist {name}"
        calls = []
        monkeypatch.setattr(
            f"rotmnist.stages.{name}.main", lambda config, paths, calls=calls: calls.append((config, paths))
        )
        assert cli.main([name]) == 0
        [(config, paths)] = calls
        assert config.train.epochs == 7 and paths.root == workspace


def test_predict_serve_and_drift_get_their_arguments(workspace, monkeypatch):
    got = {}
    monkeypatch.setattr(
        "rotmnist.commands.predict.main", lambda config, paths, images, model: got.update(p=(images, model))
    )
    monkeypatch.setattr(
        "rotmnist.serving.serve.main",
        lambda config, paths, model, host, port, insecure: got.update(s=(model, host, port, insecure)),
    )
    monkeypatch.setattr("rotmnist.commands.drift.main", lambda config, paths, model: got.update(d=model))
    assert cli.main(["predict", "a.png", "b.npy", "--model", "models:/m/1"]) == 0
    assert got["p"] == (["a.png", "b.npy"], "models:/m/1")
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "8001"]) == 0
    assert got["s"] == (None, "0.0.0.0", 8001, False)  # the port is a number
    assert cli.main(["serve", "--host", "0.0.0.0", "--insecure"]) == 0
    assert got["s"] == (None, "0.0.0.0", None, True)
    assert cli.main(["drift", "--model", "models:/m/2"]) == 0
    assert got["d"] == "models:/m/2"


# command -> its argument list, and what its module's main gets, from the params and paths of the workspace
DISPATCH = {
    **{stage: ([stage], lambda config, paths: (config, paths)) for stage in STAGES},
    "predict": (
        ["predict", "a.png", "b.npy", "--model", "models:/m/1"],
        lambda config, paths: (config, paths, ["a.png", "b.npy"], "models:/m/1"),
    ),
    "serve": (
        ["serve", "--model", "m", "--host", "::1", "--port", "9", "--insecure"],
        lambda config, paths: (config, paths, "m", "::1", 9, True),
    ),
    "drift": (["drift", "--model", "models:/m/2"], lambda config, paths: (config, paths, "models:/m/2")),
    "workspace": (  # outside the pipeline: the repository and the overlays, not the params
        ["workspace", "ws", "--overlay", "a.yaml", "--overlay", "b.yaml", "--repro", "train"],
        lambda config, paths: (paths.root, "ws", ["a.yaml", "b.yaml"], ["train"]),
    ),
}


@pytest.mark.parametrize("command", [*cli.STAGES, *cli.COMMANDS])
def test_every_command_runs_its_modules_main_with_its_arguments(workspace, monkeypatch, command):
    """Each command imports its own module, only when it runs, and calls its `main` with the parsed arguments."""
    imported, calls = [], []

    def import_module(name):
        imported.append(name)
        return SimpleNamespace(main=lambda *args: calls.append(args))

    monkeypatch.setattr(cli, "importlib", SimpleNamespace(import_module=import_module))
    write_params(workspace, {"train": {"epochs": 7}})
    argv, expected = DISPATCH[command]
    assert cli.main(argv) == 0
    assert imported == [{**cli.STAGES, **cli.COMMANDS}[command][0]]
    config = load_config()
    assert config.train.epochs == 7
    assert calls == [expected(config, Paths.here())]


@pytest.mark.parametrize("argv", [[], ["no-such-stage"], ["serve", "--port", "eighty"], ["predict"]])
def test_unknown_commands_and_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2


@pytest.mark.parametrize("command", [*STAGES, "predict", "serve", "drift"])
def test_help_of_each_command_exits_0(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    if command in ("predict", "serve"):
        assert "--model" in out
    if command == "serve":
        assert "--host" in out and "--port" in out


def test_the_console_script_dvc_calls_runs():
    """dvc.yaml runs `rotmnist`, the console script of the venv: it starts and lists every command."""
    script = Path(sys.executable).parent / "rotmnist"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(command in proc.stdout for command in (*STAGES, "predict", "serve"))


def test_invalid_params_exit_2_naming_the_key(workspace, capsys):
    write_params(workspace, {"train": {"epochs": "many", "device": "tpu"}})
    assert cli.main(["augment"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "train.device" in err and "'auto', 'cpu' or 'cuda'" in err


def test_missing_stage_output_names_the_stage_to_run(workspace, capsys):
    assert cli.main(["augment"]) == 1
    err = one_line_error(capsys, "augment")
    assert "data/raw does not exist" in err and "dvc repro" in err
    assert cli.main(["train"]) == 1
    assert "best_params.json does not exist; run `rotmnist tune` first" in one_line_error(capsys, "train")


def test_corrupt_data_file_is_one_line_and_v_shows_the_traceback(workspace, capsys):
    save_dataset(to_dataset(MnistArrays(*tiny_mnist(n_train=10, n_test=5))), workspace / "data" / "raw")
    (workspace / "data" / "raw" / "x.npy").write_bytes(b"\x93NUMPY garbage")
    assert cli.main(["augment"]) == 1
    assert "x.npy is not a valid .npy array" in one_line_error(capsys, "augment")
    with pytest.raises(PipelineError, match=r"not a valid \.npy"):
        cli.main(["-v", "augment"])


def test_unreachable_tracking_server(workspace, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    write_params(workspace, {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})
    np.save(workspace / "x.npy", np.zeros((1, 28, 28), np.uint8))
    assert cli.main(["predict", "x.npy"]) == 1
    err = one_line_error(capsys, "predict")
    assert "cannot use the MLflow store http://127.0.0.1:9" in err and "server or database is running" in err


def test_deleted_experiment_says_how_to_restore_it(workspace, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")  # the workspace's default store
    client.delete_experiment(client.create_experiment("rotmnist"))
    capsys.readouterr()
    np.save(workspace / "x.npy", np.zeros((1, 28, 28), np.uint8))
    assert cli.main(["predict", "x.npy"]) == 1
    err = one_line_error(capsys, "predict")
    assert "experiment 'rotmnist' is deleted" in err and "mlflow experiments restore" in err


def tiny_splits(root: Path) -> None:
    """Upright train/val/test splits of the tiny synthetic digits, and a sweep result for `train`."""
    ds = to_dataset(MnistArrays(*tiny_mnist(n_train=40, n_test=10)))
    for name, mask in (("train", ds.mnist_split == 0), ("val", ds.mnist_split == 0), ("test", ds.mnist_split == 1)):
        save_dataset(ds.take(mask), root / "data" / "splits" / name)
    best = {"spec": {"family": "logreg"}, "hyper": {"lr": 1e36, "weight_decay": 0.0, "batch_size": 8}}
    (root / "models").mkdir()
    (root / "models" / "best_params.json").write_text(json.dumps(best))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(workspace, capsys):
    tiny_splits(workspace)
    write_params(workspace, {"train": {"device": "cuda"}})
    assert cli.main(["train"]) == 1
    assert "train.device is 'cuda' but no CUDA device is available" in one_line_error(capsys, "train")


@pytest.mark.slow  # trains (and diverges) for an epoch, logged to MLflow
def test_diverging_loss_stops_training_with_advice(workspace, capsys):
    tiny_splits(workspace)  # a learning rate of 1e36 overflows the weights at once
    write_params(workspace, {"train": {"epochs": 1, "precision": "fp32", "device": "cpu"}})
    assert cli.main(["train"]) == 1
    err = one_line_error(capsys, "train")
    assert "training diverged" in err and "lower the learning rate" in err
    assert not (workspace / "models" / "model.pt").exists()


def test_dataset_folder_with_mismatched_arrays(workspace, capsys):
    ds = to_dataset(MnistArrays(*tiny_mnist(n_train=10, n_test=5)))
    save_dataset(ds, workspace / "data" / "raw")
    np.save(workspace / "data" / "raw" / "y.npy", ds.y[:3])
    assert cli.main(["augment"]) == 1
    assert "inconsistent" in one_line_error(capsys, "augment")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nan.npy", np.full((2, 28, 28), np.nan, np.float32), "nan.npy: pixels hold NaN or infinite values"),
        ("empty.npy", np.zeros((0, 28, 28), np.uint8), "empty.npy holds no images (shape (0, 28, 28))"),
        ("bool.npy", np.ones((2, 28, 28), bool), "bool.npy: expected a numeric array of shape (N, 28, 28), got bool"),
        (
            "narrow.npy",
            np.zeros((3, 28, 27), np.uint8),
            "expected a numeric array of shape (N, 28, 28), got uint8 (3, 28, 27)",
        ),
        ("scalar.npy", np.float32(3), "expected a numeric array of shape (N, 28, 28), got float32 ()"),
        ("text.png", b"this is not an image\n", "cannot read text.png as an image"),
        ("huge.npy", np.zeros((1400, 28, 28), np.uint8), "huge.npy is 1.0 MiB, over the limit of 0.5 MiB"),
    ],
)
def test_predict_refuses_bad_input_in_one_line(workspace, capsys, name, content, message):
    write_params(workspace, {"predict": {"max_file_mb": 0.5}})
    path = workspace / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    assert cli.main(["predict", name]) == 1  # a path relative to the workspace, as people type it
    line = one_line_error(capsys, "predict")
    assert message in line, line
    assert not (workspace / "mlflow.db").exists()  # refused before any model or store is touched


@pytest.mark.parametrize("key", ["mlflow", "tune"])
def test_an_unreachable_database_is_one_line_naming_it(workspace, capsys, key):
    tiny_splits(workspace)
    url = "postgresql://someone:secret@127.0.0.1:9/rotmnist"
    write_params(workspace, {"mlflow": {"tracking_uri": url}} if key == "mlflow" else {"tune": {"storage": url}})
    assert cli.main(["tune"]) == 1
    err = one_line_error(capsys, "tune")
    assert "cannot reach the database postgresql://someone:***@127.0.0.1:9/rotmnist (OperationalError" in err
    assert "secret" not in err and "check that it is running" in err
