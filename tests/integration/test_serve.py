"""`rotmnist serve` against a real uvicorn server on loopback and a real SQLite MLflow store.

The champion is a template-matching model (tests/support/serving.py) that reads the digits the tests draw.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.serving.requests import INLINE_BYTES
from tests.support.serving import (
    call,
    champion_store,
    drawing,
    free_socket,
    get_json,
    multipart,
    png_bytes,
    post_json,
    prepared,
    serving,
    wait_for,
)

pytestmark = pytest.mark.slow  # a real MLflow store, torch.export and a server: seconds per module

NAME = "digits"
LIMITS = ServeConfig(poll_seconds=0, max_body_bytes=256 * 1024, max_images=16, max_image_pixels=1_000_000)
JSON = {"Content-Type": "application/json"}
SECRET = "SECRET-PAYLOAD-7f3a"  # put in bad requests: no answer may echo it


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store):
    """A SQLite store in a temp folder whose `digits@champion` is the template model (version 1)."""
    with champion_store(tmp_path_factory.mktemp("serve-store"), empty_store, NAME) as folder:
        yield folder


@pytest.fixture(scope="module")
def url(store):
    source = ModelSource(NAME)
    keeper = Keeper(source, source.load_initial())
    with serving(create_app(keeper, LIMITS)) as base:
        yield base


def images(*digits: int) -> list:
    return [prepared(d).tolist() for d in digits]


# ---- answers --------------------------------------------------------------------------------------


def test_a_json_batch_is_scored_with_the_models_name_and_version(url):
    status, answer = post_json(f"{url}/score", {"images": images(3, 0, 7, 1)})
    assert status == 200
    assert answer["model"] == {"name": NAME, "version": "1"}
    assert [p["digit"] for p in answer["predictions"]] == [3, 0, 7, 1]
    for p in answer["predictions"]:
        assert len(p["probabilities"]) == 10 and sum(p["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert p["probability"] == max(p["probabilities"])


def test_large_json_bodies_are_parsed_off_the_event_loop_with_the_same_answers(url):
    batch = images(*range(10), 3, 1, 4)
    small = json.dumps({"images": batch}, separators=(",", ":")).encode()
    large = json.dumps({"images": batch}, indent=4).encode()
    assert len(small) <= INLINE_BYTES < len(large)
    answers = {}
    for name, body in (("small", small), ("large", large)):
        status, raw = call(f"{url}/score", "POST", body, JSON)
        assert status == 200, raw
        answers[name] = json.loads(raw)["predictions"]
    assert answers["small"] == answers["large"] and [p["digit"] for p in answers["large"]] == [*range(10), 3, 1, 4]
    wrong = json.dumps({"inputs": [[[300] * 28] * 28]}, indent=4).encode() + b" " * INLINE_BYTES
    status, raw = call(f"{url}/invocations", "POST", wrong, JSON)
    assert status == 422 and "pixels must be in 0..255" in json.loads(raw)["error"]


def test_uploaded_files_of_any_size_are_prepared_like_mnist(url):
    photo = drawing(4).resize((600, 450))  # dark ink on light paper, not square
    small = Image.fromarray(255 - np.asarray(drawing(9).resize((28, 28))))  # white on black, 28x28
    body, kind = multipart([("file", "four.png", png_bytes(photo)), ("file", "nine.png", png_bytes(small))])
    status, raw = call(f"{url}/score", "POST", body, {"Content-Type": kind})
    answer = json.loads(raw)
    assert status == 200, answer
    assert [(p["name"], p["digit"]) for p in answer["predictions"]] == [("four.png", 4), ("nine.png", 9)]
    status, raw = call(f"{url}/score", "POST", png_bytes(drawing(2)), {"Content-Type": "image/png"})
    assert status == 200 and json.loads(raw)["predictions"][0]["digit"] == 2


def test_invocations_speaks_mlflows_protocol(url):
    status, answer = post_json(f"{url}/invocations", {"inputs": images(5, 8)})
    assert status == 200 and set(answer) == {"predictions"}
    probs = np.array(answer["predictions"])
    assert probs.shape == (2, 10) and probs.argmax(1).tolist() == [5, 8]
    _, by_score = post_json(f"{url}/score", {"images": images(5, 8)})
    assert np.allclose(probs, [p["probabilities"] for p in by_score["predictions"]], atol=1e-5)
    status, answer = post_json(f"{url}/invocations", {"instances": images(6)})
    assert status == 200 and np.argmax(answer["predictions"][0]) == 6


def test_health_version_and_the_page(url):
    assert get_json(f"{url}/health") == (200, {"status": "ok", "model": f"{NAME} version 1", "version": "1"})
    status, info = get_json(f"{url}/version")
    assert status == 200
    assert info["name"] == NAME and info["version"] == "1" and info["alias"] == "champion"
    assert info["holdout_accuracy"] == 0.99 and len(info["training_run_id"]) == 32
    status, page = call(f"{url}/")
    assert status == 200 and b"<canvas" in page and b'id="predict"' in page and b"http" not in page.lower()


def test_many_concurrent_requests_each_get_their_own_answer(url):
    results: dict[int, int] = {}

    def client(i: int) -> None:
        status, answer = post_json(f"{url}/score", {"images": images(i % 10)})
        results[i] = answer["predictions"][0]["digit"] if status == 200 else -status

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i % 10 for i in range(40)}


# ---- bad input: a clear answer, never a 500 ------------------------------------------------------


def one(**over) -> list:
    x = np.zeros((28, 28)).tolist()
    for (r, c), v in over.get("pixels", {}).items():
        x[r][c] = v
    return [x]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json " + SECRET.encode(), 400, "not valid JSON"),
        (b'{"images": [[[0, 0', 400, "not valid JSON"),
        (b"\xff\xfe" + SECRET.encode(), 400, "not valid JSON"),
        (json.dumps({"pictures": SECRET}).encode(), 422, '{"images": [...]}'),
        (json.dumps([SECRET]).encode(), 422, '{"images": [...]}'),
        (json.dumps({"images": SECRET}).encode(), 422, "must be a list of 28x28 images"),
        (json.dumps({"images": []}).encode(), 422, "empty"),
        (json.dumps({"images": [[[0] * 28] * 27]}).encode(), 422, "shape (N, 28, 28), got (1, 27, 28)"),
        (json.dumps({"images": np.zeros((28, 28)).tolist()}).encode(), 422, "got (28, 28)"),
        (json.dumps({"images": [[SECRET] * 28] * 1}).encode(), 422, "numbers only"),
        (json.dumps({"images": [[[0] * 28] * 28, [[0] * 27]]}).encode(), 422, "ragged"),
        (json.dumps({"images": one(pixels={(3, 3): 256})}).encode(), 422, "0..255"),
        (json.dumps({"images": one(pixels={(3, 3): -1})}).encode(), 422, "0..255"),
        (json.dumps({"images": one(pixels={(3, 3): 0.5})}).encode(), 422, "scaled to [0, 1]"),
        (json.dumps({"images": one(pixels={(3, 3): float("nan")})}).encode(), 422, "NaN"),
        (json.dumps({"images": [[[True] * 28] * 28]}).encode(), 422, "numbers only"),
        (json.dumps({"images": one(pixels={(3, 3): 10**400})}).encode(), 422, "numbers only"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (json.dumps({"images": one() * 17}).encode(), 413, "over serve.max_images (16)"),
    ],
)
def test_bad_json_gets_a_clear_status_that_never_echoes_the_payload(url, body, status, message):
    got, raw = call(f"{url}/score", "POST", body, JSON)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert message in error and SECRET not in error and len(error) < 400


def test_limits_and_content_types(url):
    too_big = b'{"images": "' + b"x" * (LIMITS.max_body_bytes + 1) + b'"}'
    assert call(f"{url}/score", "POST", too_big, JSON)[0] == 413
    # a body without Content-Length (chunked) is counted while it streams
    chunks = (too_big[i : i + 65536] for i in range(0, len(too_big), 65536))
    status, raw = call(f"{url}/score", "POST", chunks, JSON | {"Transfer-Encoding": "chunked"})
    assert status == 413 and b"serve.max_body_bytes (262144 bytes)" in raw
    for kind in ("text/plain", "application/x-www-form-urlencoded", "text/csv", ""):
        status, raw = call(f"{url}/score", "POST", SECRET.encode(), {"Content-Type": kind} if kind else {})
        assert status == 415 and SECRET.encode() not in raw, kind
    assert call(f"{url}/invocations", "POST", b"1,2,3", {"Content-Type": "text/csv"})[0] == 415
    status, raw = call(f"{url}/invocations", "POST", json.dumps({"dataframe_split": SECRET}).encode(), JSON)
    assert status == 422 and SECRET.encode() not in raw


def test_bad_uploads(url):
    body, kind = multipart([("file", "x.png", SECRET.encode() + b"\x89PNG not really")])
    status, raw = call(f"{url}/score", "POST", body, {"Content-Type": kind})
    assert status == 400 and json.loads(raw) == {"error": "file 1 is not an image that can be decoded (PNG, JPEG, ...)"}
    huge = png_bytes(Image.new("L", (1001, 1000), 255))  # compresses to a few KiB, decodes to 1 M pixels
    body, kind = multipart([("file", "huge.png", huge)])
    status, raw = call(f"{url}/score", "POST", body, {"Content-Type": kind})
    assert status == 413 and b"1001x1000 pixels is over the limit of 1000000" in raw
    body, kind = multipart([("file", f"{i}.png", png_bytes(drawing(1).resize((28, 28)))) for i in range(17)])
    assert call(f"{url}/score", "POST", body, {"Content-Type": kind})[0] == 413
    status, raw = call(f"{url}/score", "POST", b"--nope\r\n\r\n", {"Content-Type": "multipart/form-data"})
    assert status in (400, 422) and b"error" in raw
    body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    status, raw = call(f"{url}/score", "POST", body, {"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 422 and b"no image file" in raw


def test_random_garbage_never_gets_a_500(url):
    rng = random.Random(0)
    kinds = ["application/json", "multipart/form-data; boundary=xyz", "multipart/form-data", "image/png", "image/jpeg"]
    seeds = [b"{", b'{"images": [[[', b"--xyz\r\n", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b'{"inputs": ']
    statuses = set()
    for i in range(300):
        body = rng.choice(seeds) + rng.randbytes(rng.choice([0, 1, 10, 100, 5000]))
        if i % 5 == 0:  # mutate a valid request instead
            valid = bytearray(json.dumps({"images": one()}).encode())
            for _ in range(rng.randint(1, 5)):
                valid[rng.randrange(len(valid))] = rng.randrange(256)
            body = bytes(valid)
        path = rng.choice(["/score", "/invocations"])
        status, raw = call(f"{url}{path}", "POST", body, {"Content-Type": rng.choice(kinds)})
        statuses.add(status)
        assert status < 500, (status, raw[:200])
    assert statuses <= {200, 400, 413, 415, 422}
    assert get_json(f"{url}/health")[0] == 200  # and it still serves


# ---- a new champion ---------------------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store):
    """A workspace with the oracle holdout of the monitor tests and its own MLflow store."""
    from rotmnist.data.dataset import save_dataset
    from rotmnist.paths import Paths
    from tests.support.oracle import oracle_holdout

    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    paths = Paths(root=tmp_path, store_root=tmp_path)
    for split in ("holdout", "test"):  # monitor scores the holdout, and turns both across the circle
        save_dataset(oracle_holdout(), paths.split(split))
    return paths


def test_rotmnist_serve_picks_up_a_promotion_by_monitor_without_dropping_requests(ws, tmp_path):
    """The real command in a subprocess; `monitor` promotes version 2 while a client keeps scoring."""
    import yaml

    from tests.support.oracle import NAME as ORACLE_NAME
    from tests.support.oracle import Oracle, oracle_holdout, run_monitor

    assert run_monitor(ws, Oracle())["registry"]["champion_after"] == 1
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"monitor": {"model_name": ORACLE_NAME}, "serve": {"poll_seconds": 0.2}, "mlflow": {}})
    )
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotmnist.cli", "--params", str(params), "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    holdout = oracle_holdout()
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, raw = call(f"{url}/score", "POST", json.dumps({"images": holdout.x[:4].tolist()}).encode(), JSON)
            answer = json.loads(raw)
            ok = status == 200 and [p["digit"] for p in answer["predictions"]] == holdout.y[:4].tolist()
            seen.append((status if ok else -status, answer.get("model", {}).get("version")))

    try:
        wait_for(lambda: get_json(f"{url}/health")[0] == 200, timeout=90)
        assert get_json(f"{url}/version")[1]["version"] == "1"
        worker = threading.Thread(target=client)
        worker.start()
        report = run_monitor(ws, Oracle())  # as good as the champion: promoted
        assert report["registry"]["champion_after"] == 2
        wait_for(lambda: get_json(f"{url}/version")[1]["version"] == "2", timeout=30)
        wait_for(lambda: any(v == "2" for _, v in seen), timeout=10)
        stop.set()
        worker.join(30)
        versions = [v for _, v in seen]
        assert {s for s, _ in seen} == {200}  # every request answered, and right
        assert versions == sorted(versions) and set(versions) == {"1", "2"}  # switched once, never back
        assert get_json(f"{url}/health")[1] == {"status": "ok", "model": f"{ORACLE_NAME} version 2", "version": "2"}
    finally:
        stop.set()
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "serving digits version 1" in out and "now serving digits version 2 (was digits version 1)" in out


def test_a_champion_that_does_not_load_leaves_the_old_one_serving(ws):
    from tests.support.oracle import NAME as ORACLE_NAME
    from tests.support.oracle import Oracle, artifact_dir, oracle_holdout, run_monitor

    run_monitor(ws, Oracle())
    source = ModelSource(ORACLE_NAME)
    keeper = Keeper(source, source.load_initial())
    x = oracle_holdout().x[:3].tolist()
    with serving(create_app(keeper, LIMITS)) as url:
        run_monitor(ws, Oracle())  # version 2 becomes champion, but its weights are gone
        weights = artifact_dir("2") / "data" / "model.pt2"
        good = weights.read_bytes()
        weights.unlink()
        status, answer = call(f"{url}/reload", "POST")
        answer = json.loads(answer)
        assert status == 503 and answer["reloaded"] is False and answer["version"] == "1"
        assert "cannot load model models:/digits/2" in answer["error"]
        status, health = get_json(f"{url}/health")
        assert status == 200 and health["status"] == "stale" and health["version"] == "1"
        assert health["failed_version"] == "2" and "cannot load model" in health["reload_error"]
        status, scored = post_json(f"{url}/score", {"images": x})
        assert status == 200 and scored["model"]["version"] == "1"

        weights.write_bytes(good)  # repaired: the next reload takes it
        status, answer = get_json(f"{url}/version")
        assert answer["version"] == "1"
        status, raw = call(f"{url}/reload", "POST")
        assert status == 200 and json.loads(raw) == {"reloaded": True, "version": "2", "error": None}
        assert get_json(f"{url}/health")[1]["status"] == "ok"
        status, raw = call(f"{url}/reload", "POST")  # nothing new: nothing to do
        assert status == 200 and json.loads(raw)["reloaded"] is False
    MlflowClient().delete_registered_model_alias(ORACLE_NAME, "champion")
