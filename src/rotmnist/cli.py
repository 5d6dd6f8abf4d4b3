"""`rotmnist <stage>`: the command line that `dvc.yaml` calls, one subcommand per stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# stage -> (module, help); each module has `main(config, paths) -> None`.
# Modules are imported only when their stage runs, so `--help` stays instant.
STAGES = {
    "download": ("rotmnist.data", "fetch MNIST (70,000 images) into data/raw and profile it"),
    "augment": ("rotmnist.augment", "rotate every image by every angle: data/augmented (490,000 images)"),
    "split": ("rotmnist.split", "split by source image into train/val/holdout/test: data/splits"),
    "tune": ("rotmnist.tune", "Optuna sweep, one MLflow run per trial: models/best_params.json"),
    "train": ("rotmnist.train", "train the final model and log it to MLflow: models/"),
    "monitor": ("rotmnist.monitor", "holdout drift check, registration and gated promotion to champion"),
}

log = logging.getLogger("rotmnist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotmnist",
        description="Rotation-robust MNIST pipeline: download -> augment -> split -> tune -> train -> monitor.",
    )
    parser.add_argument("--params", default=None, help="params file (default: params.yaml of the workspace)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (_, text) in STAGES.items():
        sub.add_parser(name, help=text, description=text)
    predict = sub.add_parser("predict", help="score PNG images or a .npy array with the champion model")
    predict.add_argument("images", nargs="+", help="PNG files or one .npy array of shape (N, 28, 28)")
    predict.add_argument("--model", default=None, help="model URI (default: models:/<monitor.model_name>@champion)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from rotmnist.config import ConfigError, load_config
    from rotmnist.errors import PipelineError
    from rotmnist.paths import Paths

    paths = Paths.here()
    try:
        config = load_config(args.params)
    except ConfigError as err:
        print(f"rotmnist: {err}", file=sys.stderr)
        return 2
    if args.command == "predict":
        from rotmnist import registry

        return registry.predict_main(config, paths, args.images, args.model)
    module = importlib.import_module(STAGES[args.command][0])
    try:
        module.main(config, paths)
    except (PipelineError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"rotmnist {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
