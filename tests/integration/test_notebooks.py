"""The notebooks: committed without outputs, and each one runs top to bottom on a tiny workspace."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from rotmnist.data.dataset import save_dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.paths import Paths
from tests.support.datasets import stack_angles
from tests.support.helpers import tiny_mnist

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "python3"  # jupyter_client runs it with this interpreter (ipykernel's built-in spec): no install needed


def execute_notebook(path: str | Path, cwd: str | Path, timeout: int = 300) -> nbformat.NotebookNode:
    """Run every cell of the notebook at `path` in a fresh python3 kernel started in `cwd`; return it with outputs.

    Raises nbclient's CellExecutionError (with the cell's traceback) if any cell fails.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def outputs_of(nb: nbformat.NotebookNode, mime: str) -> list:
    """Every output of the notebook's code cells that carries `mime` (e.g. "image/png")."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def workspace(root: Path, angles: tuple[int, ...] = (-30, -20, -10, 10, 20, 30)) -> Paths:
    """A tiny workspace: dvc.yaml (so Paths.here() finds it), data/raw and an augmented-like data/augmented."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    paths = Paths(root=root, store_root=root)
    raw = to_dataset(MnistArrays(*tiny_mnist(n_train=60, n_test=20, seed=0)))
    save_dataset(raw, paths.raw)
    save_dataset(stack_angles(raw, angles), paths.augmented)
    return paths


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    assert [c.outputs for c in code] == [[] for _ in code], f"{name} holds outputs: clear them before committing"
    assert [c.execution_count for c in code] == [None for _ in code], f"{name} holds execution counts"


@pytest.mark.slow  # starts a kernel
def test_eda_notebook_runs_on_a_tiny_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    workspace(tmp_path)
    nb = execute_notebook(NOTEBOOKS / "01_eda.ipynb", cwd=tmp_path)
    assert outputs_of(nb, "image/png"), "the notebook drew nothing"
    # one figure per section: samples, label distribution, every angle, pixel histogram
    assert len(outputs_of(nb, "image/png")) == 4
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"workspace: {tmp_path.resolve()}" in text  # it read the tiny workspace, not the repository's data
    assert "raw: 80 images (60 MNIST train, 20 MNIST test)" in text
    assert "augmented: 560 images at angles [-30, -20, -10, 0, 10, 20, 30]" in text


def tiny_mlflow_store(root: Path) -> None:
    """A workspace whose store holds a sweep (4 trials, 2 families, as `tune` logs them), a training run, 2 versions."""
    import mlflow
    from mlflow import MlflowClient

    from rotmnist.config import Config, MlflowConfig
    from rotmnist.tracking import store

    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("mlflow:\n  experiment: nb-test\nmonitor:\n  model_name: digits\n")
    paths = Paths(root=root, store_root=root)
    store.configure_mlflow(Config(mlflow=MlflowConfig(experiment="nb-test")), paths)
    trials = [
        ("cnn", 0.01, 64, 0.97, 0.05),
        ("cnn", 0.003, 32, 0.95, 0.03),
        ("mlp", 0.01, 256, 0.91, 0.01),
        ("mlp", 0.001, 128, 0.88, 0.01),
    ]
    with mlflow.start_run(run_name="sweep"):
        for family, lr, width, acc, latency in trials:
            with mlflow.start_run(run_name=f"{family}-lr{lr}", nested=True, tags={"state": "complete"}):
                mlflow.log_params({"family": family, "lr": lr, "width": width, "folds": 1})
                mlflow.log_metrics({"objective_val_accuracy": acc, "latency_ms_p50": latency})
    with mlflow.start_run(run_name="train") as train:
        mlflow.log_metric("val_accuracy", 0.98)
    client = MlflowClient()
    client.create_registered_model("digits")
    for gate, acc in (("passed", 0.99), ("failed", 0.80)):
        angles = {f"holdout_accuracy_angle_{a}": str(acc - abs(a) / 1000) for a in (-30, 0, 30)}
        tags = {
            "gate": gate,
            "gate_reasons": "none" if gate == "passed" else "error at 30 deg",
            "holdout_accuracy": str(acc),
        }
        client.create_model_version("digits", f"runs:/{train.info.run_id}/model", train.info.run_id, tags=tags | angles)
    client.set_registered_model_alias("digits", "champion", "1")
    client.set_registered_model_alias("digits", "candidate", "2")


@pytest.mark.slow
def test_compare_runs_notebook_runs_on_a_tiny_store(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # the kernel inherits it
    tiny_mlflow_store(tmp_path)
    nb = execute_notebook(NOTEBOOKS / "02_compare_runs.ipynb", cwd=tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "6 runs: 1 sweep(s), 4 trial(s), 1 other run(s)" in text
    assert "accuracy: metrics.objective_val_accuracy, latency: metrics.latency_ms_p50" in text
    assert "digits: 2 version(s); champion: version 1" in text
    tables = [o["data"]["text/plain"] for o in outputs_of(nb, "text/plain") if "gate" in o["data"]["text/plain"]]
    assert tables and "passed" in tables[-1] and "failed" in tables[-1]
    assert len(outputs_of(nb, "image/png")) == 3  # families/latency, hyperparameters, per-angle accuracy per version
