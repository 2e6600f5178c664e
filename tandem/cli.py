"""The ``tandem`` command: ``up``, ``worker``, ``gateway``, ``registry`` and ``models``.

Flags override ``TANDEM_*`` environment variables, which override defaults. Heavy imports (torch, mlflow,
fastapi) happen inside the subcommand that needs them, so ``tandem gateway`` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tandem.keys_cli import add_keys_parser

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _home(value: str | None) -> Path:
    from tandem.common.settings import default_home

    return Path(value).resolve() if value else default_home()


def _overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """Settings fields given on the command line (None means not given)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _cmd_up(args: argparse.Namespace) -> int:
    from tandem.up import UpOptions, run_up

    options = UpOptions(
        home=_home(args.home),
        port=args.port,
        workers=args.workers,
        gateways=args.gateways,
        registry_port=args.registry_port,
        registry_server=not args.no_registry_server,
        host=args.host,
    )
    return run_up(options)


WORKER_FIELDS = ["bind", "registry_uri", "models", "device", "max_batch_size", "max_queue_rows", "worker_id"]


def _cmd_worker(args: argparse.Namespace) -> int:
    from tandem.common.settings import WorkerSettings
    from tandem.worker.server import run

    settings = WorkerSettings(home=_home(args.home), **_overrides(args, WORKER_FIELDS))
    run(settings)
    return 0


GATEWAY_FIELDS = ["host", "port", "workers", "request_timeout_ms", "max_body_bytes", "processes"]


def _cmd_gateway(args: argparse.Namespace) -> int:
    from tandem.common.settings import GatewaySettings
    from tandem.gateway.server import run

    overrides = _overrides(args, GATEWAY_FIELDS)
    settings = GatewaySettings(home=_home(args.home), **overrides)
    # Extra uvicorn processes rebuild their settings from the environment: hand the flags down that way.
    os.environ["TANDEM_HOME"] = str(settings.home)
    for name, value in overrides.items():
        os.environ[f"TANDEM_{name.upper()}"] = str(value)
    run(settings)
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from tandem.processes import QUIET_MLFLOW_ENV

    home = _home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(QUIET_MLFLOW_ENV)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    os.execv(sys.executable, argv)


def _cmd_models_bootstrap(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from tandem.demo.bootstrap import bootstrap

    version = bootstrap(_home(args.home), args.registry_uri, force=args.force)
    if version is None:
        print("the registry already has ranker@champion; nothing to do (use --force to retrain)")
    else:
        print(f"registered ranker version {version} as ranker@champion")
    return 0


def _cmd_features_load(args: argparse.Namespace) -> int:
    from tandem.common.settings import GatewaySettings
    from tandem.features_load import DEFAULT_BATCH_SIZE, load_home, stderr_progress

    home = _home(args.home)
    redis_url = args.redis_url or GatewaySettings(home=home).redis_url
    if not redis_url:
        print("no Redis to load into: pass --redis-url or set TANDEM_REDIS_URL", file=sys.stderr)
        return 2
    try:
        batch_size = args.batch_size or DEFAULT_BATCH_SIZE
        summary = load_home(home, redis_url, batch_size=batch_size, progress=stderr_progress())
    except FileNotFoundError:
        print(f"no demo catalog under {home}: run `tandem models bootstrap` first", file=sys.stderr)
        return 1
    except (ConnectionError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"loaded {summary.users} users and {summary.products} products (version {summary.version}, "
        f"{summary.deleted} stale entities removed) in {summary.seconds:.2f}s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--home", help="local state directory (default: $TANDEM_HOME or ./.tandem)")
        return p

    up = with_home(sub.add_parser("up", help="run the whole local stack"))
    up.add_argument("--port", type=int, default=8000, help="HTTP port of the first gateway")
    up.add_argument("--host", default="127.0.0.1", help="HTTP listen address of the gateways")
    up.add_argument("--workers", type=int, default=1, help="number of worker processes")
    up.add_argument("--gateways", type=int, default=1, help="number of gateway processes (consecutive ports)")
    up.add_argument("--registry-port", type=int, default=0, help="MLflow server port (default: a free one)")
    up.add_argument(
        "--no-registry-server", action="store_true", help="use the sqlite registry directly, no MLflow server"
    )
    up.set_defaults(func=_cmd_up)

    worker = with_home(sub.add_parser("worker", help="run one worker"))
    worker.add_argument("--bind", help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5555")
    worker.add_argument("--registry-uri", help="MLflow registry URI (default: sqlite in --home)")
    worker.add_argument("--models", help="comma-separated NAME@ALIAS or NAME/VERSION to serve")
    worker.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    worker.add_argument("--max-batch-size", type=int, help="most rows in one batch")
    worker.add_argument("--max-queue-rows", type=int, help="rows queued before requests are refused")
    worker.add_argument("--worker-id", help="name reported to gateways")
    worker.set_defaults(func=_cmd_worker)

    gateway = with_home(sub.add_parser("gateway", help="run one gateway"))
    gateway.add_argument("--host", help="HTTP listen address")
    gateway.add_argument("--port", type=int, help="HTTP port")
    gateway.add_argument("--workers", help="comma-separated worker ZeroMQ endpoints")
    gateway.add_argument("--request-timeout-ms", type=float, help="default deadline of a request")
    gateway.add_argument("--max-body-bytes", type=int, help="largest request body accepted")
    gateway.add_argument("--processes", type=int, help="gateway processes sharing the port")
    gateway.set_defaults(func=_cmd_gateway)

    registry = with_home(sub.add_parser("registry", help="run an MLflow server over the sqlite store in --home"))
    registry.add_argument("--host", default="127.0.0.1")
    registry.add_argument("--port", type=int, default=5000)
    registry.set_defaults(func=_cmd_registry)

    models = sub.add_parser("models", help="manage registered models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    boot = with_home(models_sub.add_parser("bootstrap", help="train and register the demo models if missing"))
    boot.add_argument("--registry-uri", help="MLflow registry URI (default: sqlite in --home)")
    boot.add_argument("--force", action="store_true", help="retrain and register a new version anyway")
    boot.set_defaults(func=_cmd_models_bootstrap)
    from tandem import models_cli  # light: mlflow is imported only when a models command runs

    registry_help = "MLflow registry URI (default: $TANDEM_REGISTRY_URI, else sqlite in --home)"
    listing = with_home(models_sub.add_parser("list", help="versions, aliases, and which version is live where"))
    listing.add_argument("--registry-uri", help=registry_help)
    listing.add_argument("--workers", help="worker endpoints to ask what they serve (default: $TANDEM_WORKERS)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=models_cli.run_list)
    promote = with_home(models_sub.add_parser("promote", help="point an alias at a version; workers swap it in"))
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="version to promote")
    promote.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    promote.add_argument("--registry-uri", help=registry_help)
    promote.set_defaults(func=models_cli.run_promote)
    rollback = with_home(models_sub.add_parser("rollback", help="point an alias back at its previous version"))
    rollback.add_argument("name", help="registered model name")
    rollback.add_argument("--alias", default="champion", help="alias to move back (default: champion)")
    rollback.add_argument("--registry-uri", help=registry_help)
    rollback.set_defaults(func=models_cli.run_rollback)

    features = sub.add_parser("features", help="manage the features gateways read")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    load = with_home(features_sub.add_parser("load", help="write the demo users and products into Redis"))
    load.add_argument("--redis-url", help="Redis to load into (default: $TANDEM_REDIS_URL)")
    load.add_argument("--batch-size", type=int, help="entities written per Redis command (default: 500)")
    load.set_defaults(func=_cmd_features_load)

    add_keys_parser(sub)  # tandem keys api | curve
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tandem`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
