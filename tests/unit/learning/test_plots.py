"""The figures: sample grids and the per-angle accuracy bars."""

from __future__ import annotations

import pytest

from rotmnist.data import mnist
from rotmnist.learning import plots
from rotmnist.stages import monitor
from tests.support.fakes import metrics_with
from tests.support.helpers import (
    tiny_mnist,
)


@pytest.fixture(scope="module")
def arrays():
    return tiny_mnist(n_train=50, n_test=20, seed=1)


def test_samples_plot_is_a_png_whose_width_follows_the_samples_per_class(tmp_path, arrays):
    from PIL import Image

    ds = mnist.to_dataset(mnist.MnistArrays(*arrays))
    plots.plot_samples(ds, tmp_path / "wide.png", per_class=10)
    plots.plot_samples(ds, tmp_path / "narrow.png", per_class=2)
    for name in ("wide.png", "narrow.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "wide.png") as wide, Image.open(tmp_path / "narrow.png") as narrow:
        assert wide.width > narrow.width
    assert sorted(p.name for p in tmp_path.iterdir()) == ["narrow.png", "wide.png"]  # no temp files
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        plots.plot_samples(ds, tmp_path / "none.png", per_class=0)


def bar_centres(fig) -> dict[str, list[float]]:
    ax = fig.axes[0]
    return {c.get_label(): [round(b.get_x() + b.get_width() / 2, 6) for b in c] for c in ax.containers}


def test_angle_bars_are_centred_without_a_champion_and_side_by_side_with_one():
    cand = metrics_with(0.99, {"-10": 0.99, "0": 1.0, "10": 0.98})
    alone = plots.angle_accuracy_figure(monitor.angle_rows(cand, None), 0.985, ("candidate v1", "champion vNone"))
    assert bar_centres(alone) == {"candidate v1": [0.0, 1.0, 2.0]}
    assert "champion" not in " ".join(t.get_text() for t in alone.axes[0].get_legend().get_texts())
    champion = metrics_with(0.99, {"-10": 0.97, "0": 1.0})  # no 10 deg slice
    pair = plots.angle_accuracy_figure(monitor.angle_rows(cand, champion), 0.985, ("candidate v2", "champion v1"))
    assert bar_centres(pair) == {"candidate v2": [-0.2, 0.8, 1.8], "champion v1": [0.2, 1.2]}
    ax = pair.axes[0]
    assert ax.get_ylim()[0] < 0.97 and ax.get_ylim()[1] >= 1.0  # zoomed, but every bar and the gate line fit
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["99.00%", "100.00%", "98.00%", "97.00%", "100.00%"]  # every bar carries its value
    assert "axis from" in ax.get_ylabel()  # the zoom is said, not hidden
