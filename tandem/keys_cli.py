"""``tandem keys``: make the credentials of a secured deployment (``docs/security.md``).

- ``tandem keys api [--models ranker,echo]`` prints a new random API key, once, and the line that configures
  its SHA-256 digest in ``TANDEM_API_KEYS``. The key itself is stored nowhere.
- ``tandem keys curve --out DIR [--gateway-name NAME]`` writes the workers' CURVE keypair (unless ``DIR`` has
  one) and a keypair for a gateway, with its public key in ``DIR/authorized_gateways/``, and prints the
  ``TANDEM_*`` settings of each process kind. Secret files are mode 600, ``DIR`` mode 700.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
from pathlib import Path

API_KEY_PREFIX = "tdm_"
"""Marks Tandem keys, so secret scanners and people can tell what a leaked string is."""
API_KEY_BYTES = 32
SERVER_NAME = "server"
DEFAULT_GATEWAY_NAME = "gateway"
AUTHORIZED_DIR = "authorized_gateways"


def new_api_key() -> str:
    """A random API key: the prefix and 256 random bits, URL-safe."""
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def api_key_entry(key: str, models: str) -> str:
    """The ``TANDEM_API_KEYS`` entry of ``key``: its digest and the models it may use (``*`` or a list)."""
    from tandem.gateway.auth import ALL_MODELS, MODEL_SEPARATOR, digest_of

    names = [m.strip() for m in models.split(",") if m.strip()]
    allowed = ALL_MODELS if not names or ALL_MODELS in names else MODEL_SEPARATOR.join(names)
    return f"{digest_of(key)}:{allowed}"


def _cmd_api(args: argparse.Namespace) -> int:
    key = new_api_key()
    print("API key (shown once: hand it to the client; Tandem stores only its digest):")
    print(f"  {key}")
    print("Add this entry to TANDEM_API_KEYS on every gateway (comma-separated with any others):")
    print(f"  {api_key_entry(key, args.models)}")
    print("Clients send it as the header  Authorization: Bearer <key>")
    return 0


def _cmd_curve(args: argparse.Namespace) -> int:
    from tandem.common.curve import write_certificates

    out = Path(args.out).resolve()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized = out / AUTHORIZED_DIR
    authorized.mkdir(mode=0o700, exist_ok=True)
    server_secret = out / f"{SERVER_NAME}.key_secret"
    try:
        if server_secret.exists():
            print(f"keeping the workers' keypair in {server_secret}")
        else:
            write_certificates(out, SERVER_NAME)
        public, secret = write_certificates(out, args.gateway_name)
    except FileExistsError as exc:
        print(exc)
        return 1
    shutil.copyfile(public, authorized / public.name)
    print("Workers (every worker shares this keypair):")
    print(f"  TANDEM_CURVE_SERVER_SECRET_KEY_FILE={server_secret}")
    print(f"  TANDEM_CURVE_CLIENT_KEYS_DIR={authorized}")
    print(f"Gateway {args.gateway_name!r}:")
    print(f"  TANDEM_CURVE_SERVER_PUBLIC_KEY_FILE={out / f'{SERVER_NAME}.key'}")
    print(f"  TANDEM_CURVE_CLIENT_SECRET_KEY_FILE={secret}")
    print("Give workers only the server's secret and the authorized public keys, gateways only their own secret.")
    return 0


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tandem keys api`` and ``tandem keys curve`` to the ``tandem`` command's subcommands."""
    keys = sub.add_parser("keys", help="make API keys and CURVE keypairs for a secured deployment")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    api = keys_sub.add_parser("api", help="print a new random API key and its TANDEM_API_KEYS entry")
    api.add_argument("--models", default="*", help="models the key may use: * (default) or name1,name2")
    api.set_defaults(func=_cmd_api)
    curve = keys_sub.add_parser("curve", help="write CURVE keypairs for workers and a gateway")
    curve.add_argument("--out", required=True, help="directory for the certificate files (created, mode 700)")
    curve.add_argument("--gateway-name", default=DEFAULT_GATEWAY_NAME, help="file name of the gateway's keypair")
    curve.set_defaults(func=_cmd_curve)
