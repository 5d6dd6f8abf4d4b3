"""The architecture is checked, not hoped for: import-linter's contracts, and dvc.yaml's deps per stage."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the project's contracts on the `rotmnist` package found in `package_parent`."""
    env = os.environ | {"PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    proc = lint_imports(REPO / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "injected", "broken"),
    [
        ("tune", "from rotmnist import train", "No stage or command imports another"),
        ("training", "from rotmnist import sweep", "Layers"),  # the training loop must know nothing of Optuna
        ("tracking", "from rotmnist import registry", "No import cycles"),  # registry -> tracking -> registry
    ],
)
def test_a_new_cycle_or_upward_import_breaks_a_contract(tmp_path, module, injected, broken):
    shutil.copytree(REPO / "src" / "rotmnist", tmp_path / "rotmnist", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "rotmnist" / f"{module}.py"
    target.write_text(target.read_text() + f"\n{injected}  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout


def imported_modules(stage: str) -> set[str]:
    """Every module of the package that `rotmnist.<stage>` imports, directly or not, and the stage itself."""
    graph = grimp.build_graph("rotmnist")
    found = graph.find_upstream_modules(f"rotmnist.{stage}") | {f"rotmnist.{stage}"}
    return {m.removeprefix("rotmnist.") for m in found if m != "rotmnist"}


@pytest.mark.parametrize("stage", ["download", "augment", "split", "tune", "train", "monitor", "compare", "curriculum"])
def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports(stage):
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]
    listed = {Path(d).stem for d in deps if d.startswith("src/rotmnist/")}
    assert listed == imported_modules(stage)


def test_the_sweep_does_not_depend_on_the_final_training_or_learn_model():
    assert not {"train", "training_run", "learn", "monitor"} & imported_modules("tune")
