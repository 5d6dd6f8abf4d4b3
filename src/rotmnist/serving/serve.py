"""`rotmnist serve`: the registry's champion (or `--model`) over HTTP, with a page to draw a digit.

Loads the model once before listening (a model that does not load is a one-line error, exit 1), then
runs the app of `rotmnist.serving.app` with uvicorn, recording what it scores in the request log
(`serve.request_log`: SQLite at `Paths.request_log` by default). Imports no training code.
"""

from __future__ import annotations

import logging

from rotmnist.config import Config
from rotmnist.paths import Paths
from rotmnist.serving.app import create_app
from rotmnist.serving.auth import Access, read_token
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.storage.request_log import RequestLog
from rotmnist.tracking import store

log = logging.getLogger(__name__)


def main(
    config: Config,
    paths: Paths,
    model_uri: str | None = None,
    host: str | None = None,
    port: int | None = None,
    insecure: bool = False,
):
    """Serve until interrupted; `host` and `port` override params.yaml's `serve.host` and `serve.port`.

    A non-loopback `host` needs a token (`serving.auth`) unless `insecure`.
    """
    import uvicorn

    settings = config.serve  # settings.threads applies in the scoring thread (batcher.Batcher)
    host, port = host or settings.host, port or settings.port
    access = Access.decide(settings, read_token(settings, paths), host, insecure)
    request_log = RequestLog.from_settings(settings, paths)  # a bad serve.request_log fails before the model loads
    store.configure_mlflow(config, paths)
    source = ModelSource(config.monitor.model_name, model_uri)
    keeper = Keeper(source, source.load_initial())
    app = create_app(keeper, settings, access, request_log)
    log.info("serving %s on http://%s:%d (page: /, API: /score, /invocations)", keeper.describe(), host, port)
    log.info("%s", access.describe())
    log.info("requests logged to %s", request_log.describe() if request_log else "nowhere (serve.log_requests: false)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
