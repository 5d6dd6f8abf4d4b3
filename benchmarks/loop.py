"""The production loop end to end, on a repository whose pipeline has run: serve, correct, detect, retrain, swap.

Usage: python -m benchmarks.loop [--repo .] [--angle 60] [--max-corrections 3000] [--json loop.json] [--check]

It changes `params.yaml` (`finetune.feedback: true`) and retrains, so run it in a clone that holds the
pipeline's outputs (e.g. `git clone`, `make repro`), not in the working copy you commit from. Steps:

1. `rotmnist serve` serves the champion (the request log on, polling the registry every second).
2. Before: accuracy through the server on every test digit rotated by `--angle` (bilinear, PIL) and
   on the test split at each trained angle.
3. A stream of train-split digits (their upright rows, in a seeded order, rotated by `--angle`), so no
   source digit of holdout or test is ever trained on, goes to `POST /invocations`; each wrong answer
   is corrected through `POST /feedback` with the known label, until `--max-corrections`.
4. `rotmnist drift` on the logged stream: its verdict.
5. `rotmnist feedback` exports the corrections; `dvc repro <target>` with `finetune.feedback: true`
   (default target `monitor`: train's model fine-tuned on them, then the gate; `tune` and `train` stay cached).
6. The running server picks up the new champion by itself (no restart, no /reload).
7. After: the same accuracies through the server.

Prints markdown tables (the counts; test digits through the server and the gate's holdout digits, before and
after; each step's time) and writes them as JSON. With `--check` it exits 1, naming the gate's reasons, when
the champion did not change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tests.support.serving import free_socket, get_json, post_json, stop
from tests.support.tiny_repo import BIN, tool_env

BATCH = 256  # images per /invocations request when measuring
STREAM_BATCH = 16  # images per request of the stream: small, as people's requests are


def rotated(x: np.ndarray, angle: float) -> np.ndarray:
    """Every image of `x` (uint8) turned `angle` degrees counter-clockwise about its centre, bilinear."""
    return np.stack([np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BILINEAR)) for img in x])


def run(cmd: list[str], repo: Path) -> tuple[float, str]:
    """Run a command in `repo`; its seconds and output (exit on failure, with the output's end)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.perf_counter() - t0, proc.stdout + proc.stderr


class Server:
    """`rotmnist serve` in `repo` on a free port, polling the registry every second; its log in a temp file."""

    def __init__(self, repo: Path, tmp: Path):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["serve"] |= {"poll_seconds": 1.0, "log_requests": True}
        (tmp / "serve-params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with free_socket() as sock:
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [str(BIN / "rotmnist"), "--params", str(tmp / "serve-params.yaml"), "serve", "--port", str(port)]
        self.log = open(tmp / "serve.log", "w")  # noqa: SIM115 (open while the server runs)
        self.proc = subprocess.Popen(cmd, cwd=repo, env=tool_env(), stdout=self.log, stderr=subprocess.STDOUT)
        self.version = self.wait(lambda health: True, 300)

    def wait(self, ready, timeout: float) -> str:
        """Poll /health until `ready(health)`; the served version."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"rotmnist serve exited ({self.proc.returncode}); see {self.log.name}")
            try:
                status, health = get_json(f"{self.url}/health")
                if status == 200 and ready(health):
                    return str(health["version"])
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"the server was not ready within {timeout:.0f} s; see {self.log.name}")

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Predicted digits and request-log ids of images `x`, through `POST /invocations`."""
        digits, ids = [], []
        for i in range(0, len(x), BATCH):
            status, answer = post_json(f"{self.url}/invocations", {"inputs": x[i : i + BATCH].tolist()})
            if status != 200:
                sys.exit(f"/invocations answered {status}: {answer}")
            digits.append(np.asarray(answer["predictions"]).argmax(axis=1))
            ids += answer.get("ids", [None] * len(digits[-1]))
        return np.concatenate(digits), ids

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def accuracies(server: Server, test_x: np.ndarray, test_y: np.ndarray, angles: np.ndarray, angle: float) -> dict:
    """Accuracy at `angle` on every test digit, and on the test split at each trained angle."""
    upright = angles == 0
    unseen = server.predict(rotated(test_x[upright], angle))[0] == test_y[upright]
    right = server.predict(test_x)[0] == test_y
    trained = {int(a): float(right[angles == a].mean()) for a in np.unique(angles)}
    return {"unseen": float(unseen.mean()), "trained": trained}


def stream(server: Server, x: np.ndarray, y: np.ndarray, angle: float, max_corrections: int) -> dict:
    """Send `x` rotated by `angle` in small requests; correct each wrong answer with its label until
    `max_corrections` (only the digits sent are rotated)."""
    sent = wrong = corrected = 0
    for i in range(0, len(x), STREAM_BATCH):
        digits, ids = server.predict(rotated(np.asarray(x[i : i + STREAM_BATCH]), angle))
        sent += len(digits)
        for request_id, digit, label in zip(ids, digits, y[i : i + STREAM_BATCH], strict=True):
            if digit == label:
                continue
            wrong += 1
            if corrected < max_corrections and request_id is not None:
                status, answer = post_json(f"{server.url}/feedback", {"id": request_id, "label": int(label)})
                if status != 200:
                    sys.exit(f"/feedback answered {status}: {answer}")
                corrected += 1
        if corrected >= max_corrections:
            break
    return {"sent": sent, "wrong": wrong, "corrected": corrected}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="a clone whose pipeline has run")
    parser.add_argument("--angle", type=float, default=60.0, help="the unseen tilt of the stream (degrees)")
    parser.add_argument("--max-corrections", type=int, default=3000, help="most corrections people send")
    parser.add_argument("--seed", type=int, default=0, help="the order of the stream's digits")
    parser.add_argument("--target", default="monitor", help="what `dvc repro` reproduces (default: through the gate)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 (with the gate's reasons) if no new champion")
    return parser.parse_args()


def retrain(repo: Path, target: str, steps: dict[str, float]) -> tuple[dict, dict]:
    """`rotmnist drift`, `rotmnist feedback`, `dvc repro target` with `finetune.feedback`: drift and gate reports."""
    steps["rotmnist drift"], _ = run([str(BIN / "rotmnist"), "drift"], repo)
    drift = json.loads((repo / "metrics/drift.json").read_text())
    steps["rotmnist feedback"], _ = run([str(BIN / "rotmnist"), "feedback"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["feedback"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    steps[f"dvc repro {target}"], _ = run([str(BIN / "dvc"), "repro", target], repo)
    return drift, json.loads((repo / "reports/monitor.json").read_text())


def loop(repo: Path, args: argparse.Namespace) -> dict:
    """Run the loop's steps on `repo` with a served champion; the report's figures."""
    steps: dict[str, float] = {}
    test = {k: np.load(repo / "data/splits/test" / f"{k}.npy") for k in ("x", "y", "angle")}
    train = {k: np.load(repo / "data/splits/train" / f"{k}.npy", mmap_mode="r") for k in ("x", "y", "angle")}
    upright = np.flatnonzero(np.asarray(train["angle"]) == 0)
    order = np.random.default_rng(args.seed).permutation(upright)
    with tempfile.TemporaryDirectory(prefix="rotmnist-loop-") as tmp:
        t0 = time.perf_counter()
        server = Server(repo, Path(tmp))
        steps["serve the champion"] = time.perf_counter() - t0
        before_version = server.version
        try:
            t0 = time.perf_counter()
            before = accuracies(server, test["x"], test["y"], test["angle"], args.angle)
            steps["measure before"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            stream_x, stream_y = train["x"][order], np.asarray(train["y"][order])
            counts = stream(server, stream_x, stream_y, args.angle, args.max_corrections)
            steps["stream and correct"] = time.perf_counter() - t0
            drift, monitor = retrain(repo, args.target, steps)
            t0 = time.perf_counter()
            promoted = monitor["gate"]["passed"]
            after_version = server.wait(lambda h: str(h["version"]) != before_version, 60) if promoted else "-"
            steps["server picks up the champion"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            after = accuracies(server, test["x"], test["y"], test["angle"], args.angle) if promoted else before
            steps["measure after"] = time.perf_counter() - t0
        finally:
            server.stop()
    exported = {p: len(np.load(repo / f"data/feedback/{p}/y.npy")) for p in ("train", "holdout")}
    return {
        "angle": args.angle,
        "stream": counts,
        "exported": exported,
        "drift": {"verdict": drift["verdict"], "drifted": drift["drifted"]},
        "gate": monitor["gate"]["decision"],
        "gate_reasons": monitor["gate"]["reasons"],
        "holdout": holdout_angles(monitor),
        "feedback_slice": monitor.get("feedback", {}),
        "versions": {"before": before_version, "after": after_version},
        "before": before,
        "after": after,
        "seconds": {k: round(v, 1) for k, v in steps.items()},
    }


def holdout_angles(monitor: dict) -> dict:
    """The gate's view: holdout accuracy per angle of the champion before the loop and of the candidate."""
    champion = monitor.get("champion_holdout", {}).get("per_angle", {})
    return {
        a: {"champion": champion.get(a, {}).get("accuracy"), "candidate": m["accuracy"]}
        for a, m in monitor["holdout"]["per_angle"].items()
    }


def main() -> None:
    args = parse_args()
    report = loop(args.repo.resolve(), args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.check and report["versions"]["after"] == "-":
        sys.exit(f"check failed: the gate kept champion v{report['versions']['before']}: {report['gate_reasons']}")


def print_report(r: dict) -> None:
    s = r["stream"]
    print(f"stream at {r['angle']:g} deg: {s['sent']} digits sent, {s['wrong']} wrong, {s['corrected']} corrected")
    print(f"exported: {r['exported']['train']} to train on, {r['exported']['holdout']} held out (feedback slice)")
    print(f"input drift: {r['drift']['verdict']} ({r['drift']['drifted'] or 'none'}); gate: {r['gate']}")
    if r["gate"] != "passed":
        print(f"gate reasons: {r['gate_reasons']}")
    print(f"champion: v{r['versions']['before']} -> v{r['versions']['after']}\n")
    served = "after (the new champion)" if r["versions"]["after"] != "-" else "after (the same champion)"
    print(f"| test digits, through the server | before | {served} | change (points) |\n|---|---:|---:|---:|")
    rows = [(f"{r['angle']:g} deg (unseen)", r["before"]["unseen"], r["after"]["unseen"])]
    rows += [(f"{a} deg", r["before"]["trained"][a], r["after"]["trained"][a]) for a in r["before"]["trained"]]
    for name, b, a in rows:
        print(f"| {name} | {100 * b:.2f} % | {100 * a:.2f} % | {100 * (a - b):+.2f} |")
    print("\n| holdout digits (the gate) | champion before | candidate | change (points) |\n|---|---:|---:|---:|")
    for angle, h in r["holdout"].items():
        b, a = h["champion"], h["candidate"]
        change = f"{100 * (a - b):+.2f}" if b is not None else "-"
        before = f"{100 * b:.2f} %" if b is not None else "-"
        print(f"| {angle} deg | {before} | {100 * a:.2f} % | {change} |")
    print("\n| step | seconds |\n|---|---:|")
    for step, seconds in r["seconds"].items():
        print(f"| {step} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
