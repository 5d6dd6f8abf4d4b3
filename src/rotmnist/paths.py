"""Every path the pipeline reads or writes, derived from one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# `dvc exp run --queue` / `--temp` runs the pipeline in a copy under this folder
# of the real repository; shared stores (MLflow, Optuna) must still live at the root.
_DVC_TEMP_EXPS = (".dvc", "tmp", "exps")

SPLITS = ("train", "val", "holdout", "test")
# Each stage's full detail, `reports/<name>.json`; the stages of HEADLINES also write their headline figures,
# `metrics/<name>.json`, the few values `dvc metrics show` / `dvc exp show` put in one row.
REPORTS = ("data_profile", "split_manifest", "tune", "train", "finetune", "monitor", "compare", "curriculum")
HEADLINES = ("tune", "train", "finetune", "monitor", "compare", "curriculum")


def find_workspace(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding `dvc.yaml`, else `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


def find_store_root(workspace: Path) -> Path:
    """The real repository for `workspace`: itself, or the repo a DVC temp experiment copied."""
    override = os.environ.get("ROTMNIST_STORE_ROOT")
    if override:
        return Path(override).resolve()
    parts = workspace.parts
    for i in range(len(parts) - len(_DVC_TEMP_EXPS)):
        if parts[i : i + len(_DVC_TEMP_EXPS)] == _DVC_TEMP_EXPS:
            return Path(*parts[:i])
    return workspace


@dataclass(frozen=True)
class Paths:
    """Paths of one workspace; stores (MLflow, Optuna) resolve to `store_root`."""

    root: Path
    store_root: Path

    @classmethod
    def here(cls, start: Path | None = None) -> Paths:
        root = find_workspace(start)
        return cls(root=root, store_root=find_store_root(root))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # data stages
    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def augmented(self) -> Path:
        return self.root / "data" / "augmented"

    @property
    def splits(self) -> Path:
        return self.root / "data" / "splits"

    @property
    def feedback(self) -> Path:
        """People's corrections: `train` (fine-tuned on with finetune.feedback) and `holdout` (the monitor's slice)."""
        return self.root / "data" / "feedback"

    def lineage_data(self, corrections: bool = False) -> tuple[Path, ...]:
        """The data outputs a model's `data_hash` covers: the splits, and (those there are of) the corrections if
        it trained on them."""
        folders = (self.feedback / "train", self.feedback / "holdout") if corrections else ()
        return (self.splits, *(p for p in folders if p.exists()))

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return self.splits / name

    # models, metrics, reports, plots
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def best_params(self) -> Path:
        """The sweep's choice, written by `tune`, read by `train`."""
        return self.models / "best_params.json"

    @property
    def model_file(self) -> Path:
        """The trained model's state dict (the DVC-versioned copy of what MLflow holds)."""
        return self.models / "model.pt"

    @property
    def run_reference(self) -> Path:
        """The training run id and logged model URI, written by `train`, read by `finetune` and `compare`."""
        return self.models / "run.json"

    @property
    def candidate_file(self) -> Path:
        """The candidate's state dict, written by `finetune`: train's model, or it fine-tuned on corrections."""
        return self.models / "candidate.pt"

    @property
    def candidate_reference(self) -> Path:
        """The candidate's run id and logged model URI, written by `finetune`, read by `monitor`."""
        return self.models / "candidate.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, name: str) -> Path:
        """`reports/<name>.json`: a stage's full detail (a plain output of dvc.yaml, not a metrics file)."""
        if name not in REPORTS:
            raise ValueError(f"unknown report {name!r}; expected one of {list(REPORTS)}")
        return self.reports / f"{name}.json"

    def headline(self, name: str) -> Path:
        """`metrics/<name>.json`: the headline figures of stage `name`'s report (a metrics file of dvc.yaml)."""
        if name not in HEADLINES:
            raise ValueError(f"unknown headline {name!r}; expected one of {list(HEADLINES)}")
        return self.metrics / f"{name}.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    # shared stores, at the real repository's root
    @property
    def mlflow_db(self) -> Path:
        return self.store_root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.store_root / "mlartifacts"

    @property
    def optuna_journal(self) -> Path:
        return self.store_root / "optuna" / "journal.log"

    @property
    def request_log(self) -> Path:
        """The server's default request log (SQLite), outside git and DVC."""
        return self.store_root / "serving" / "requests.db"

    def cache_dir(self, configured: str) -> Path:
        """Download cache: relative paths are taken from the real repository root."""
        p = Path(configured).expanduser()
        return p if p.is_absolute() else self.store_root / p
