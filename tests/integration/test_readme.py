"""The README's "Use the model" blocks, run verbatim where the README says to run them: in a workspace made
the way `make quick` makes `.quick/` (`rotmnist workspace --repro`), here with the tests' tiny settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import tiny_mnist, write_idx_dir
from tests.support.serving import get_json, stop, wait_for
from tests.support.tiny_repo import REPO, TINY_OVERLAY, run, tool_env

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BLOCK = re.compile(r"^```(\w+)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SERVE_PORT = 8000  # the README's curl calls name the default port of `rotmnist serve`


def section_blocks(heading: str) -> list[tuple[str, str]]:
    """The (language, code) of every fenced block under README's `## heading`, up to the next `## `."""
    text = README.read_text()
    start = re.search(rf"^## {re.escape(heading)}\b.*$", text, re.MULTILINE).end()
    end = text.find("\n## ", start + 1)
    return BLOCK.findall(text[start : end if end > 0 else None])


def run_block(language: str, code: str, cwd: Path) -> str:
    """Run one README block as pasted (bash with -e, so every line must succeed); return its stdout."""
    cmd = [sys.executable, "-c", code] if language == "python" else ["bash", "-e", "-c", code]
    return run(cmd, cwd, timeout=600).stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """A workspace built and reproduced by `rotmnist workspace --repro`, the command `make quick` runs."""
    tmp = tmp_path_factory.mktemp("readme")
    idx = write_idx_dir(tmp / "idx", tiny_mnist(n_train=300, n_test=60, seed=0))
    overlay = tmp / "tiny-source.yaml"  # the tiny settings, their MNIST, and a gate the tiny model passes
    overlay.write_text(
        yaml.safe_dump(
            {
                "download": {"source": "idx_dir", "idx_dir": str(idx)},
                "monitor": {"threshold": 1.0, "angle_threshold": 1.0, "tolerance": 1.0},
            }
        )
    )
    dest = tmp / "quick"
    overlays = ["--overlay", str(TINY_OVERLAY), "--overlay", str(overlay)]
    run(["rotmnist", "workspace", str(dest), *overlays, "--repro", "monitor"], REPO)  # as `make quick` runs it
    return dest


def test_the_use_the_model_section_shows_python_curl_and_dvc():
    blocks = section_blocks("Use the model")
    assert [lang for lang, _ in blocks] == ["python", "bash", "bash"]
    assert "@champion" in blocks[0][1]
    assert blocks[1][1].count("curl") == 2 and "/score" in blocks[1][1]
    assert "dvc exp run -S" in blocks[2][1]
    assert "make quick" in section_blocks("Quick start")[0][1]


def test_make_quick_leaves_its_workspace_committed_with_a_champion(quick):
    status = subprocess.run(["git", "status", "--porcelain"], cwd=quick, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    monitor = json.loads((quick / "metrics" / "monitor.json").read_text())
    assert monitor["gate_passed"] is True and monitor["champion_version"] == 1


def test_the_python_block_scores_the_test_split_with_the_champion(quick):
    (_, code), *_ = section_blocks("Use the model")
    lines = run_block("python", code, quick).splitlines()
    per_angle = [line for line in lines if re.fullmatch(r"[+-]\d+°: \d+\.\d\d%", line)]
    assert len(per_angle) == 7, lines
    assert re.fullmatch(r"all: \d+\.\d\d%", lines[-1]), lines


def test_the_curl_calls_score_a_picture_and_a_json_batch(quick):
    _, code = section_blocks("Use the model")[1]
    log = quick / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["rotmnist", "serve"], cwd=quick, env=tool_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is None and get_json(f"http://127.0.0.1:{SERVE_PORT}/health")[0] == 200, 90)
        answers = [json.loads(line) for line in run_block("bash", code, quick).splitlines() if line.strip()]
    finally:
        stop(proc)
    assert len(answers) == 2, log.read_text()
    for answer in answers:
        assert answer["model"]["version"] == "1"
        (prediction,) = answer["predictions"]
        assert 0 <= prediction["digit"] <= 9 and len(prediction["probabilities"]) == 10
    assert answers[0]["predictions"][0]["name"] == "seven.png"


def test_the_dvc_block_retrains_gates_and_compares(quick):
    _, code = section_blocks("Use the model")[2]
    out = run_block("bash", code, quick)
    assert yaml.safe_load((quick / "params.yaml").read_text())["train"]["epochs"] == 5
    assert "metrics/train.json" in out and "test_accuracy" in out  # dvc metrics diff against the quick run
    monitor = json.loads((quick / "metrics" / "monitor.json").read_text())
    assert monitor["version"] == 2  # the experiment's model was registered and gated
