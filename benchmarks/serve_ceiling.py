"""The HTTP stack's ceiling for `benchmarks/serve.py`: two bare FastAPI apps on uvicorn, run as `rotmnist serve` runs.

Usage: python -m benchmarks.serve_ceiling {read,decode} --port PORT

- `read`: `POST /invocations` reads the body and answers one fixed prediction: what FastAPI, uvicorn and
  loopback cost a request, with no work at all.
- `decode`: the same, after decoding the body's JSON `{"inputs": [...]}` into a float32 (N, 28, 28) array,
  the least a JSON scoring server must do before its model runs.

Both answer `GET /health`, and run with the options of `rotmnist serve` (uvloop, httptools, no access log).
`rotmnist serve`'s share of the `decode` app's requests/s is the figure its serving goal is set against.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

ANSWER = json.dumps({"predictions": [[0.1] * 10]}).encode()  # one image's answer, the same size as a model's


def bare_app(decode: bool) -> FastAPI:
    """The app: `/invocations` reads (and with `decode`, parses to float32) the body; `/health` answers ok."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        body = await request.body()
        if decode:
            x = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
            assert x.shape[1:] == (28, 28)
        return Response(ANSWER, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status": "ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=("read", "decode"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = bare_app(decode=args.app == "decode")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
