"""B2: a bare FastAPI + uvicorn endpoint that answers the V2 request body as is, with no model.

The least any FastAPI server can cost per request (HTTP parsing, routing, reading the body, writing the answer):
the floor Tandem's gateway is held against. Same path and payload as the other systems.

Run: ``python -m benchmarks.baselines.echo --port 8002``.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response


def create_app() -> FastAPI:
    """An app whose V2 infer route echoes the request body."""
    app = FastAPI(title="B2 echo")

    @app.post("/v2/models/{model}/infer")
    async def infer(request: Request, model: str) -> Response:
        return Response(await request.body(), media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve on ``--port`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
