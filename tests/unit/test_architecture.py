"""The architecture is checked, not hoped for: import-linter's contracts, and dvc.yaml's deps per stage."""

import ast
import functools
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


def lint_imports(
    package_parent: Path, config: Path = REPO / "pyproject.toml", cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run import-linter in `cwd` with the contracts of `config` on the `rotmnist` package found in `package_parent`."""
    env = os.environ | {"PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        cwd=cwd,
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


@functools.cache
def package_graph() -> grimp.ImportGraph:
    """The import graph of `rotmnist`, built once for every stage's check."""
    return grimp.build_graph("rotmnist")


def imported_files(stage: str) -> set[str]:
    """The source file of every module that `rotmnist.stages.<stage>` imports, directly or not, and its own."""
    found = package_graph().find_upstream_modules(f"rotmnist.stages.{stage}") | {f"rotmnist.stages.{stage}"}
    files = {"src/" + m.replace(".", "/") for m in found}
    return {f"{f}/__init__.py" if (REPO / f).is_dir() else f"{f}.py" for f in files}


@pytest.mark.parametrize(
    "stage",
    ["download", "augment", "split", "feedback", "tune", "train", "finetune", "monitor", "compare", "curriculum"],
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


def test_benchmarks_and_test_folders_import_each_other_only_through_tests_support(tmp_path):
    for folder in ("tests", "benchmarks"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    contract = one_contract(tmp_path, "Benchmarks and test folders share only tests/support")
    for module, injected in [
        ("tests/integration/test_serve_soak.py", "from benchmarks import serve_soak"),
        ("benchmarks/loop.py", "from tests.integration import test_loop"),
        ("tests/support/serving.py", "from tests.unit.serving import test_batcher"),
    ]:
        target = tmp_path / module
        original = target.read_text()
        target.write_text(original + f"\n{injected}  # noqa\n")
        proc = lint_imports(REPO / "src", contract, cwd=tmp_path)
        assert proc.returncode == 1, (module, proc.stdout + proc.stderr)
        target.write_text(original)


def is_test_module(name: str) -> bool:
    """A module pytest collects or loads by itself: test_*.py or conftest.py."""
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def test_no_module_imports_a_test_module():
    # What two tests share lives in tests/support; a test module imported elsewhere runs its tests twice
    # and ties one test's fixtures to another's.
    graph = grimp.build_graph("tests", "benchmarks")
    found = {
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if is_test_module(imported)
    }
    assert found == set()
    assert is_test_module("tests.unit.test_cli") and not is_test_module("tests.support.tiny_repo")


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def sizes(folder: str) -> tuple[dict[str, int], dict[str, int]]:
    """Lines of every module under `folder` over the limit, and of every function over it (its `def` to its end)."""
    modules, functions = {}, {}
    for path in sorted((REPO / folder).rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(REPO).as_posix()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            modules[name] = n
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    functions[f"{name}:{node.name}"] = lines
    return modules, functions


@pytest.mark.parametrize("folder", ["src", "tests", "benchmarks"])
def test_no_module_over_400_lines_and_no_function_over_60(folder):
    modules, functions = sizes(folder)
    assert modules == {}, f"split these modules (at most {MAX_MODULE_LINES} lines)"
    assert functions == {}, f"split these functions (at most {MAX_FUNCTION_LINES} lines)"
