"""`rotmnist workspace`: the pipeline in a folder of its own, with some params changed (`make quick`, the tests).

It copies the project as git sees it (tracked and new files, not ignored ones: dvc.yaml, the source its
stages list as deps, the docs and examples), without the results of a run (dvc.lock, metrics, plots,
reports), writes params.yaml with the overlays merged in, and makes the folder a git repository, so
`dvc repro`, `dvc exp run`, `rotmnist serve` and the README's commands work there as they do in the
repository. Every store follows the workspace (`paths.Paths`): its DVC outputs and cache, MLflow
store, Optuna journal and registry live inside it, and the repository's own are never touched. Built
again over the same folder, it refreshes the copy, so `dvc repro` there re-runs only what changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rotmnist.config import config_from_dict
from rotmnist.errors import ConfigError, PipelineError
from rotmnist.io import atomic_path

# What the workspace's own run makes, never copied from the repository; params.yaml is written, not copied.
RESULTS = ("dvc.lock", "metrics", "plots", "reports")
IDENTITY = ("-c", "user.name=rotmnist workspace", "-c", "user.email=workspace@rotmnist.invalid")


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay`'s values in place of its own, section by section (a copy; lists are replaced)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_overlay(path: str | Path) -> dict[str, Any]:
    """A params overlay file: a mapping of sections holding only the keys it changes."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {path}: the top level must be a mapping of sections")
    return data


def workspace_params(params_file: Path, overlays: Sequence[dict[str, Any]], source: str) -> dict[str, Any]:
    """The repository's params with every overlay merged in, in order; validated, so a bad key fails first."""
    params = yaml.safe_load(params_file.read_text()) or {}
    for overlay in overlays:
        params = merged(params, overlay)
    config_from_dict(params, source=source)
    return params


def project_files(repo: Path) -> list[str]:
    """The files git sees in `repo`'s working tree (tracked or new, not ignored), less the run's results."""
    out = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    names = sorted({n for n in out.split("\0") if n})
    return [n for n in names if n != "params.yaml" and n.split("/")[0] not in RESULTS and (repo / n).is_file()]


def build(repo: Path, dest: Path, overlays: Sequence[dict[str, Any]], *, names: Sequence[str] = ()) -> Path:
    """Copy the project in `repo` into `dest` with `overlays` merged into its params; return `dest`.

    `names` says in params.yaml's header where the overlays came from. Files the copy holds from an
    earlier build that `repo` no longer has are removed.
    """
    repo, dest = repo.resolve(), dest.resolve()
    if dest == repo or repo.is_relative_to(dest):
        raise PipelineError(f"a workspace needs a folder of its own, not {dest}")
    source = " + ".join(names) or "overlays"
    params = workspace_params(repo / "params.yaml", overlays, f"params.yaml + {source}")
    files = project_files(repo)
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / ".git").exists():
        kept = {*files, "params.yaml"}
        for name in _git(dest, "ls-files", "-z").split("\0"):
            if name and name not in kept and name.split("/")[0] not in RESULTS:
                (dest / name).unlink(missing_ok=True)
    else:
        _git(dest, "init", "-q", "-b", "main")
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)
    header = f"# {repo / 'params.yaml'} with {source} merged in (rotmnist workspace): edit it here freely.\n"
    with atomic_path(dest / "params.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(params, sort_keys=False))
    return dest


def commit(dest: Path, message: str) -> bool:
    """Commit everything git does not ignore in the workspace `dest`; False when nothing changed."""
    _git(dest, "add", "-A")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=dest).returncode == 0:
        return False
    _git(dest, *IDENTITY, "commit", "-q", "-m", message)
    return True


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"git {' '.join(args[:2])} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout


def repro(dest: Path, targets: Sequence[str] = ()) -> None:
    """`dvc repro [targets]` in the workspace `dest` (DVC of this environment), its output shown as it runs."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", *targets], cwd=dest)
    if proc.returncode != 0:
        raise PipelineError(f"dvc repro failed in {dest} (exit {proc.returncode}): its output is above")


def main(repo: Path, dest: str, overlay_files: Sequence[str], targets: Sequence[str] | None = None) -> None:
    """Build (or refresh) the workspace `dest` from `repo` with the overlay files and commit it; with `targets`
    (empty: the whole pipeline), reproduce them there and commit the results, the baseline of `dvc exp` there."""
    overlays = [read_overlay(f) for f in overlay_files]
    folder = build(repo, Path(dest), overlays, names=overlay_files)
    commit(folder, "the pipeline, with " + (" + ".join(overlay_files) or "the repository's params"))
    if targets is None:
        print(f"workspace ready: {folder} (run `dvc repro` there)")
        return
    repro(folder, targets)
    commit(folder, " ".join(["dvc repro", *targets]))
