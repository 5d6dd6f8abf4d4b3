"""`rotmnist <stage>`: the command line that `dvc.yaml` calls, one subcommand per stage, plus `predict` and `serve`.

Every expected failure is a `PipelineError`: printed on one line, exit status 1 (2 for invalid
params); `-v` shows the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rotmnist.config import Config
    from rotmnist.paths import Paths

# command -> (module, help); a stage's module has `main(config, paths) -> None`.
# Modules are imported only when their command runs, so `--help` stays instant.
STAGES = {
    "download": ("rotmnist.stages.download", "fetch MNIST (70,000 images) into data/raw and profile it"),
    "augment": ("rotmnist.stages.augment", "rotate every image by every angle: data/augmented (490,000 images)"),
    "split": ("rotmnist.stages.split", "split by source image into train/val/holdout/test: data/splits"),
    "feedback": (
        "rotmnist.stages.feedback",
        "export people's corrections from the request log into data/feedback (train, and a held-out slice)",
    ),
    "tune": ("rotmnist.stages.tune", "Optuna sweep, one MLflow run per trial: models/best_params.json"),
    "train": ("rotmnist.stages.train", "train the final model and log it to MLflow: models/"),
    "finetune": (
        "rotmnist.stages.finetune",
        "the candidate: train's model, or it fine-tuned on people's corrections (finetune.feedback)",
    ),
    "monitor": (
        "rotmnist.stages.monitor",
        "concept drift (holdout check), registration and gated promotion to champion",
    ),
    "compare": ("rotmnist.stages.compare", "model families x training data side by side: accuracy, latency, SLA"),
    "curriculum": (
        "rotmnist.stages.curriculum",
        "the drift story: rotations arrive, the monitor flags, the model is retrained",
    ),
}
COMMANDS = {
    "predict": ("rotmnist.commands.predict", "score image files or a .npy array with the champion model"),
    "serve": (
        "rotmnist.serving.serve",
        "serve the champion over HTTP (/score, /invocations) with a page to draw a digit",
    ),
    "drift": (
        "rotmnist.commands.drift",
        "input drift: the digits the server logged against the training data, no labels: ok, narrower or harmful",
    ),
    "workspace": (
        "rotmnist.workspace",
        "copy the pipeline into a folder of its own with params overlays (make quick): its own data and stores",
    ),
}

EVERY = STAGES | COMMANDS  # command -> (module, help), stages first

# What a command runs: the parsed arguments, the validated params and the workspace's paths.
Runner = Callable[[argparse.Namespace, "Config", "Paths"], None]

log = logging.getLogger("rotmnist")


def build_parser() -> argparse.ArgumentParser:
    """The `rotmnist` parser: one subparser per command, each naming the function that runs it (`func`)."""
    parser = argparse.ArgumentParser(
        prog="rotmnist",
        description="Rotation-robust MNIST. The pipeline: download -> augment -> split -> tune -> train -> finetune -> "
        "monitor (feedback feeds finetune), and the reports compare and curriculum. Outside it: predict, serve, drift, "
        "workspace.",
    )
    parser.add_argument("--params", default=None, help="params file (default: params.yaml of the workspace)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in (_add_stages, _add_predict, _add_serve, _add_drift, _add_workspace):
        add(sub)
    return parser


def _command(sub: argparse._SubParsersAction, name: str, func: Runner) -> argparse.ArgumentParser:
    """The subparser of `name` with its help text, running `func`."""
    text = EVERY[name][1]
    parser = sub.add_parser(name, help=text, description=text)
    parser.set_defaults(func=func)
    return parser


def _add_stages(sub: argparse._SubParsersAction) -> None:
    for name in STAGES:
        _command(sub, name, _run_stage)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    predict = _command(sub, "predict", _run_predict)
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or .npy arrays of shape (N, 28, 28)")
    predict.add_argument("--model", default=None, help="model URI (default: models:/<monitor.model_name>@champion)")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = _command(sub, "serve", _run_serve)
    serve.add_argument(
        "--model", default=None, help="model URI (default: models:/<monitor.model_name>@champion, followed as it moves)"
    )
    serve.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address without a token (POST /reload then answers 401 to everyone)",
    )


def _add_drift(sub: argparse._SubParsersAction) -> None:
    drift = _command(sub, "drift", _run_drift)
    drift.add_argument("--model", default=None, help="model URI (default: the one that served most logged images)")


def _add_workspace(sub: argparse._SubParsersAction) -> None:
    workspace = _command(sub, "workspace", _run_workspace)
    workspace.add_argument("dest", help="the workspace folder (made, or refreshed in place)")
    workspace.add_argument(
        "--overlay",
        action="append",
        default=[],
        help="a params file of keys to change (repeatable; e.g. config/quick.yaml)",
    )
    workspace.add_argument(
        "--repro",
        nargs="*",
        metavar="STAGE",
        default=None,
        help="then run `dvc repro [STAGE ...]` there (no stage: the whole pipeline) and commit the results",
    )


# The runners: module-level functions, so that two parses of the same command line compare equal.
def _module(command: str) -> ModuleType:
    """The module of `command`, imported now (not when the parser is built)."""
    return importlib.import_module(EVERY[command][0])


def _run_stage(args: argparse.Namespace, config: Config, paths: Paths) -> None:
    _module(args.command).main(config, paths)


def _run_predict(args: argparse.Namespace, config: Config, paths: Paths) -> None:
    _module("predict").main(config, paths, args.images, args.model)


def _run_serve(args: argparse.Namespace, config: Config, paths: Paths) -> None:
    _module("serve").main(config, paths, args.model, args.host, args.port, args.insecure)


def _run_drift(args: argparse.Namespace, config: Config, paths: Paths) -> None:
    _module("drift").main(config, paths, args.model)


def _run_workspace(args: argparse.Namespace, config: Config, paths: Paths) -> None:
    _module("workspace").main(paths.root, args.dest, args.overlay, args.repro)


def run(args: argparse.Namespace) -> None:
    """Load params and run the chosen command; raises what the command raises."""
    from rotmnist.config import load_config
    from rotmnist.paths import Paths

    paths = Paths.here()
    config = load_config(args.params)
    args.func(args, config, paths)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from rotmnist.errors import ConfigError, PipelineError

    try:
        run(args)
    except PipelineError as err:
        if args.verbose:
            raise
        print(f"rotmnist {args.command}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
