"""What the split stage writes: data/splits/{train,val,holdout,test} and reports/split_manifest.json."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rotmnist.config import Config, SplitConfig
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, Dataset, load_dataset, save_dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import SPLITS, Paths
from rotmnist.stages import split
from tests.support.datasets import stack_angles
from tests.support.helpers import tiny_mnist

N_TRAIN, N_TEST = 120, 40
ANGLES = (-30, -20, -10, 10, 20, 30)


def tiny_augmented(n_train: int = N_TRAIN, n_test: int = N_TEST, angles: Sequence[int] = ANGLES) -> Dataset:
    return stack_angles(to_dataset(MnistArrays(*tiny_mnist(n_train=n_train, n_test=n_test, seed=1))), angles)


@pytest.fixture
def paths(tmp_path):
    return Paths(root=tmp_path / "repo", store_root=tmp_path / "repo")


@pytest.fixture
def augmented(paths) -> Dataset:
    ds = tiny_augmented()
    save_dataset(ds, paths.augmented)
    return ds


def config(val: float = 0.2, holdout: float = 0.1, seed: int = 0) -> Config:
    return Config(split=SplitConfig(val_fraction=val, holdout_fraction=holdout, seed=seed))


def load_splits(paths: Paths) -> dict[str, Dataset]:
    return {name: load_dataset(paths.split(name)) for name in SPLITS}


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(ds: Dataset) -> set[tuple[int, int]]:
    return set(zip(ds.source_id.tolist(), ds.angle.tolist(), strict=True))


def test_the_stage_writes_four_disjoint_splits_that_add_up(paths, augmented):
    split.main(config(), paths)
    assert sorted(p.name for p in paths.splits.iterdir()) == sorted(SPLITS)
    parts = load_splits(paths)
    assert sum(len(p) for p in parts.values()) == len(augmented) == 7 * (N_TRAIN + N_TEST)
    sources = {name: set(p.source_id.tolist()) for name, p in parts.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not sources[a] & sources[b], f"{a} and {b} share source images"
    input_angles = set(np.unique(augmented.angle).tolist())
    for name, part in parts.items():
        assert set(np.unique(part.angle).tolist()) == input_angles, name
        assert len(part) == 7 * len(sources[name]), f"{name}: a source lacks some of its rotations"
    # the rows are the input's rows, pixels included
    everything = Dataset.concat(list(parts.values()))
    order = np.lexsort((everything.angle, everything.source_id))
    expected = np.lexsort((augmented.angle, augmented.source_id))
    for field in ("x", "y", "source_id", "angle", "mnist_split"):
        np.testing.assert_array_equal(getattr(everything, field)[order], getattr(augmented, field)[expected])
    # nothing but the outputs: no temporary files left next to them
    assert [p.name for p in paths.root.rglob(".*")] == []


def test_test_split_is_exactly_mnist_test(paths, augmented):
    split.main(config(), paths)
    test = load_dataset(paths.split("test"))
    assert (test.mnist_split == MNIST_TEST).all()
    assert rows(test) == rows(augmented.take(augmented.mnist_split == MNIST_TEST))
    for name in ("train", "val", "holdout"):
        assert (load_dataset(paths.split(name)).mnist_split == MNIST_TRAIN).all(), name


@pytest.mark.parametrize(("val", "holdout"), [(0.2, 0.1), (0.15, 0.05), (0.3, 0.3)])
def test_fractions_of_training_sources_are_respected(paths, augmented, val, holdout):
    split.main(config(val=val, holdout=holdout), paths)
    n_sources = {name: len(np.unique(p.source_id)) for name, p in load_splits(paths).items()}
    assert abs(n_sources["val"] - val * N_TRAIN) <= 0.5
    assert abs(n_sources["holdout"] - holdout * N_TRAIN) <= 0.5
    assert n_sources["train"] == N_TRAIN - n_sources["val"] - n_sources["holdout"]
    assert n_sources["test"] == N_TEST


def test_manifest_matches_the_written_splits(paths, augmented):
    split.main(config(), paths)
    manifest = json.loads(paths.report("split_manifest").read_text())
    assert manifest["total"] == {"images": len(augmented), "sources": N_TRAIN + N_TEST}
    angles = sorted({0, *ANGLES})
    for name, part in load_splits(paths).items():
        entry = manifest[name]
        assert entry["images"] == len(part)
        assert entry["sources"] == len(np.unique(part.source_id))
        assert entry["classes"] == {f"class_{c}": int((part.y == c).sum()) for c in range(10)}
        assert list(entry["angles"]) == [f"angle_{a}" for a in angles]
        for a in angles:
            counts = np.bincount(part.y[part.angle == a], minlength=10)
            assert entry["angles"][f"angle_{a}"] == {f"class_{c}": int(k) for c, k in enumerate(counts)}
        assert all(v > 0 for v in entry["classes"].values()), f"{name} lacks a class"


def test_same_seed_gives_byte_identical_outputs_other_seed_differs(tmp_path, augmented, paths):
    split.main(config(seed=5), paths)
    first = snapshot(paths.splits) | {"manifest": paths.report("split_manifest").read_bytes()}
    split.main(config(seed=5), paths)
    again = snapshot(paths.splits) | {"manifest": paths.report("split_manifest").read_bytes()}
    assert first == again
    holdout = set(load_dataset(paths.split("holdout")).source_id.tolist())
    split.main(config(seed=6), paths)
    assert set(load_dataset(paths.split("holdout")).source_id.tolist()) != holdout
    assert snapshot(paths.split("test")) == {k.removeprefix("test/"): v for k, v in first.items() if k[:5] == "test/"}


def test_a_split_lacking_an_angle_is_written_with_a_warning(paths, caplog):
    # as the `random` augmentation strategy can produce: only source 0 was rotated by +30
    ds = tiny_augmented()
    save_dataset(ds.take((ds.angle != 30) | (ds.source_id == 0)), paths.augmented)
    with caplog.at_level("WARNING", logger="rotmnist.stages.split"):
        split.main(config(), paths)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    owner = next(name for name in SPLITS if 0 in load_dataset(paths.split(name)).source_id)
    assert sorted(warned) == sorted(f"split {name!r} has no images at angle_30" for name in SPLITS if name != owner)


def test_an_empty_split_fails_and_leaves_earlier_outputs_untouched(paths, augmented):
    split.main(config(), paths)
    before = snapshot(paths.root)
    with pytest.raises(PipelineError, match=re.escape("split 'val' would be empty: split.val_fraction=0.001")):
        split.main(config(val=0.001), paths)
    assert snapshot(paths.root) == before


def test_a_crash_while_writing_leaves_no_partial_splits(paths, augmented, monkeypatch):
    calls = []

    def failing_save(ds, folder):
        calls.append(folder)
        if len(calls) == 3:
            raise OSError("disk full")
        save_dataset(ds, folder)

    monkeypatch.setattr(split, "save_dataset", failing_save)
    with pytest.raises(OSError, match="disk full"):
        split.main(config(), paths)
    assert len(calls) == 3
    assert not paths.splits.exists()
    assert not paths.reports.exists()
    assert sorted(p.name for p in paths.root.joinpath("data").iterdir()) == ["augmented"]


@pytest.mark.parametrize(
    ("keep", "message"),
    [(MNIST_TRAIN, r"no MNIST test rows \(mnist_split == 1\)"), (MNIST_TEST, r"no MNIST training rows")],
)
def test_input_lacking_a_mnist_split_is_an_error(paths, keep, message):
    ds = tiny_augmented()
    save_dataset(ds.take(ds.mnist_split == keep), paths.augmented)
    with pytest.raises(PipelineError, match=message):
        split.main(config(), paths)
    assert not paths.splits.exists()


def test_missing_input_names_the_folder(paths):
    with pytest.raises(PipelineError, match="augmented does not exist"):
        split.main(config(), paths)


def test_the_cli_reports_an_empty_split_without_a_traceback(tmp_path, capsys, monkeypatch):
    from rotmnist import cli

    root = tmp_path / "repo"
    save_dataset(tiny_augmented(), Paths(root=root, store_root=root).augmented)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("split:\n  val_fraction: 0.1\n  holdout_fraction: 0.001\n  seed: 0\n")
    monkeypatch.chdir(root)
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    assert cli.main(["split"]) == 1
    err = capsys.readouterr().err
    assert "rotmnist split: split 'holdout' would be empty: split.holdout_fraction=0.001" in err
    assert "Traceback" not in err
    assert not (root / "data" / "splits").exists()


def test_the_repository_splits_if_present():
    """After `dvc repro`: the real data/splits hold the augmented set, disjoint by source, as the manifest says."""
    paths = Paths.here(Path(__file__).parent)
    if not (paths.splits.is_dir() and paths.augmented.is_dir() and paths.report("split_manifest").is_file()):
        pytest.skip("no data/splits in this workspace; run `dvc repro split`")
    augmented = load_dataset(paths.augmented, mmap=True)
    parts = {name: load_dataset(paths.split(name), mmap=True) for name in SPLITS}
    assert sum(len(p) for p in parts.values()) == len(augmented)
    owner = np.full(int(augmented.source_id.max()) + 1, -1, np.int8)
    for code, part in enumerate(parts.values()):
        ids = np.unique(part.source_id)
        assert (owner[ids] == -1).all(), f"{SPLITS[code]} shares sources with an earlier split"
        owner[ids] = code
    test_ids = np.unique(augmented.source_id[augmented.mnist_split == MNIST_TEST])
    np.testing.assert_array_equal(np.unique(parts["test"].source_id), test_ids)
    manifest = json.loads(paths.report("split_manifest").read_text())
    assert {name: manifest[name]["images"] for name in SPLITS} == {name: len(p) for name, p in parts.items()}
