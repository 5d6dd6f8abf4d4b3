"""`rotmnist workspace`: the pipeline copied into a folder of its own with params overlays (make quick, tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from rotmnist import workspace
from rotmnist.cli import main as cli_main
from rotmnist.config import config_from_dict
from rotmnist.errors import ConfigError, PipelineError

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "config" / "quick.yaml"
TINY = REPO / "tests" / "support" / "tiny.yaml"


def params_of(folder: Path) -> dict:
    return yaml.safe_load((folder / "params.yaml").read_text())


def git_log(folder: Path) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%s"], cwd=folder, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_merged_replaces_values_section_by_section_and_leaves_the_base_alone():
    base = {"train": {"epochs": 50, "seed": 0}, "augment": {"angles": [-30, 30]}, "mlflow": {"experiment": "x"}}
    out = workspace.merged(base, {"train": {"epochs": 3}, "augment": {"angles": [10]}})
    assert out == {"train": {"epochs": 3, "seed": 0}, "augment": {"angles": [10]}, "mlflow": {"experiment": "x"}}
    assert base["train"]["epochs"] == 50 and base["augment"]["angles"] == [-30, 30]


@pytest.mark.parametrize("overlay", [QUICK, TINY], ids=["quick", "tiny"])
def test_the_shipped_overlays_change_only_keys_params_yaml_has(overlay):
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    changes = workspace.read_overlay(overlay)

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k not in ("specs", "model") else {prefix + k}
        return out

    assert keys(changes) <= keys(base)
    config_from_dict(workspace.merged(base, changes))


def test_quick_keeps_the_data_and_the_model_family_of_the_full_run():
    quick = workspace.merged(yaml.safe_load((REPO / "params.yaml").read_text()), workspace.read_overlay(QUICK))
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in ("download", "augment", "split", "feedback", "mlflow"):
        assert quick[section] == full[section]
    assert quick["tune"]["space"]["cnn"]["blocks"] == full["tune"]["space"]["cnn"]["blocks"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("train: [1\n", "is not valid YAML"), ("- 1\n", "must be a mapping"), (None, "cannot read")],
)
def test_read_overlay_names_the_file_it_cannot_use(tmp_path, text, message):
    path = tmp_path / "overlay.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        workspace.read_overlay(path)
    assert str(path) in str(err.value)


def test_build_copies_the_pipeline_with_the_overlay_and_commits_it(tmp_path):
    dest = workspace.build(REPO, tmp_path / "ws", [{"train": {"epochs": 2}}], names=["x.yaml"])
    assert workspace.commit(dest, "first")
    for name in ("dvc.yaml", ".dvc/config", "README.md", "config/quick.yaml", "src/rotmnist/workspace.py"):
        assert (dest / name).read_bytes() == (REPO / name).read_bytes(), name
    assert not list((dest / "src").rglob("__pycache__")) and not list((dest / "src").glob("*.egg-info"))
    for result in workspace.RESULTS:  # the workspace's own run makes these
        assert not (dest / result).exists(), result
    params = params_of(dest)
    assert params["train"]["epochs"] == 2
    assert params["train"]["seed"] == yaml.safe_load((REPO / "params.yaml").read_text())["train"]["seed"]
    assert "x.yaml merged in" in (dest / "params.yaml").read_text().splitlines()[0]
    assert git_log(dest) == ["first"]
    assert not workspace.commit(dest, "nothing changed")


def test_building_again_refreshes_the_copy_in_place(tmp_path):
    dest = workspace.build(REPO, tmp_path / "ws", [{"train": {"epochs": 2}}])
    workspace.commit(dest, "first")
    stale = dest / "src" / "rotmnist" / "stale_module.py"  # a module the repository has since removed
    stale.write_text("")
    (dest / "metrics").mkdir()
    (dest / "metrics" / "train.json").write_text("{}")  # a result of the workspace's own run
    workspace.commit(dest, "a run")
    (dest / "mlflow.db").write_text("the workspace's own store")
    workspace.build(REPO, dest, [{"train": {"epochs": 4}}])
    assert not stale.exists()
    assert params_of(dest)["train"]["epochs"] == 4
    assert (dest / "mlflow.db").read_text() == "the workspace's own store"
    assert (dest / "metrics" / "train.json").read_text() == "{}"
    assert workspace.commit(dest, "second") and git_log(dest) == ["second", "a run", "first"]


def test_a_bad_overlay_key_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        workspace.build(REPO, tmp_path / "ws", [{"train": {"epochz": 2}}], names=["bad.yaml"])
    assert not (tmp_path / "ws").exists()


def test_the_repository_itself_is_refused_as_a_workspace():
    with pytest.raises(PipelineError, match="folder of its own"):
        workspace.build(REPO, REPO, [])
    with pytest.raises(PipelineError, match="folder of its own"):
        workspace.build(REPO, REPO.parent, [])


def test_the_cli_exits_2_naming_the_bad_key_of_an_overlay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("monitor:\n  threshold: lots\n")
    assert cli_main(["workspace", str(tmp_path / "ws"), "--overlay", str(overlay)]) == 2
    assert "monitor.threshold" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("target", ["quick", "serve", "ui"])
def test_make_runs_the_workspace_commands_from_the_venv_wherever_it_cds(target):
    """A recipe line `cd <workspace> && <program>` must name a program found from there: on PATH or absolute."""
    proc = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target, "QUICK=1"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    moved = [line.split("&&", 1)[1].split()[0] for line in proc.stdout.splitlines() if line.startswith("cd ")]
    assert moved, f"make {target} QUICK=1 runs nothing in the workspace"
    for program in moved:
        assert "/" not in program or program.startswith("/"), f"{program} is relative to the folder make left"
    if target != "quick":
        assert f"cd {REPO / '.quick'} " in proc.stdout
