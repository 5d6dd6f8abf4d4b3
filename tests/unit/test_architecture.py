"""The architecture is checked, not hoped for: import-linter's contracts, and dvc.yaml's deps per stage."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path, config: Path = REPO / "pyproject.toml") -> subprocess.CompletedProcess:
    """Run import-linter with the contracts of `config` on the `rotmnist` package found in `package_parent`."""
    env = os.environ | {"PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_contract(folder: Path, name_start: str) -> Path:
    """A config holding the project's import-linter settings and only the contract whose name starts so."""
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in settings["contracts"] if c["name"].startswith(name_start)]
    lines = ["[tool.importlinter]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k != "contracts"]
    lines += ["[[tool.importlinter.contracts]]"] + [f"{k} = {json.dumps(v)}" for k, v in contract.items()]
    (folder / "contract.toml").write_text("\n".join(lines) + "\n")
    return folder / "contract.toml"


def test_the_import_contracts_hold():
    proc = lint_imports(REPO / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "injected", "broken"),
    [
        ("stages/tune", "from rotmnist.stages import train", "No stage or command imports another"),
        ("learning/training", "from rotmnist.tracking import tune", "Layers"),  # the loop knows nothing of Optuna
        ("learning/training", "import mlflow", "The training loop and the non-MLflow storage know nothing"),
        ("storage/request_store", "import optuna", "The training loop and the non-MLflow storage know nothing"),
        ("storage/locks", "from rotmnist.tracking import store", "Layers"),  # storage lies below tracking
        ("serving/app", "from rotmnist.learning import training", "The server and its request log import no"),
        ("commands/drift", "from rotmnist.commands import predict", "No stage or command imports another"),
        ("tracking/store", "from rotmnist.tracking import train", "No import cycles"),  # train -> store -> train
    ],
)
def test_a_new_cycle_or_upward_import_breaks_a_contract(tmp_path, module, injected, broken):
    shutil.copytree(REPO / "src" / "rotmnist", tmp_path / "rotmnist", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "rotmnist" / f"{module}.py"
    target.write_text(target.read_text() + f"\n{injected}  # noqa\n")
    contract = one_contract(tmp_path, broken)
    kept = lint_imports(REPO / "src", contract)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the contract alone holds on the project
    proc = lint_imports(tmp_path, contract)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # and fails on the changed copy


def imported_files(stage: str) -> set[str]:
    """The source file of every module that `rotmnist.stages.<stage>` imports, directly or not, and its own."""
    graph = grimp.build_graph("rotmnist")
    found = graph.find_upstream_modules(f"rotmnist.stages.{stage}") | {f"rotmnist.stages.{stage}"}
    files = {"src/" + m.replace(".", "/") for m in found}
    return {f"{f}/__init__.py" if (REPO / f).is_dir() else f"{f}.py" for f in files}


@pytest.mark.parametrize(
    "stage", ["download", "augment", "split", "feedback", "tune", "train", "monitor", "compare", "curriculum"]
)
def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports(stage):
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]
    listed = {d for d in deps if d.startswith("src/")}
    assert listed == imported_files(stage)


def test_the_sweep_does_not_depend_on_the_final_training_or_learn_model():
    forbidden = {"src/rotmnist/tracking/train.py", "src/rotmnist/learn.py", "src/rotmnist/stages/monitor.py"}
    assert not forbidden & imported_files("tune")


def test_no_stage_depends_on_a_serving_module():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    serving = {d for s in stages.values() for d in s["deps"] if d.startswith("src/rotmnist/serving/")}
    assert serving == set()
