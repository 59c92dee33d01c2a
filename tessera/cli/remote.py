"""Connecting the CLI to a coordinator as an analyst or approver.

Settings come from flags or the environment, never secrets in argv: `--key` and
TESSERA_KEY name a key *file*, and the TLS key is read from the TLS folder.

    --coordinator HOST:PORT   or TESSERA_COORDINATOR
    --tls-dir DIR             or TESSERA_TLS_DIR     (DIR/<identity>.crt|.key, DIR/ca.crt)
    --identity NAME           or TESSERA_IDENTITY    (your certificate name)
    --key PATH                or TESSERA_KEY         (your Ed25519 private key file)
    --trust FILE              or TESSERA_TRUST       (node keys to verify results with;
                                                      on the commands that show results)
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tessera import verify
from tessera.client import Client, ClientError
from tessera.keys import KeyError_, SigningKey
from tessera.tls import TlsError, TlsFiles

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]
EXIT_REFUSED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (flags, or the TESSERA_* environment variables)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="or TESSERA_COORDINATOR")
    g.add_argument("--tls-dir", type=Path, metavar="DIR", help="or TESSERA_TLS_DIR")
    g.add_argument("--identity", metavar="NAME", help="or TESSERA_IDENTITY")
    g.add_argument("--key", type=Path, metavar="PATH", help="your signing key file, or TESSERA_KEY")


def _setting(args: argparse.Namespace, environ: Mapping[str, str], attr: str, env: str) -> str:
    value = getattr(args, attr, None) or environ.get(env)
    if not value:
        flag = "--" + attr.replace("_", "-")
        raise UsageError(f"give {flag} or set {env}")
    return str(value)


def connect(args: argparse.Namespace, environ: Mapping[str, str], *, signing: bool) -> Client:
    address = _setting(args, environ, "coordinator", "TESSERA_COORDINATOR")
    tls_dir = Path(_setting(args, environ, "tls_dir", "TESSERA_TLS_DIR"))
    identity = _setting(args, environ, "identity", "TESSERA_IDENTITY")
    key = None
    if signing:
        key_path = Path(_setting(args, environ, "key", "TESSERA_KEY"))
        try:
            key = SigningKey.load(key_path)
        except (OSError, KeyError_) as e:
            raise UsageError(f"cannot use the key {key_path}: {e}") from None
    trust = None
    trust_file = getattr(args, "trust", None) or environ.get("TESSERA_TRUST")
    if trust_file:
        try:
            trust = verify.load_trust(Path(trust_file).expanduser())
        except (OSError, verify.TrustError) as e:
            raise UsageError(f"cannot use the trust file {trust_file}: {e}") from None
    try:
        return Client(address, TlsFiles.for_name(tls_dir, identity), key, trust=trust)
    except (OSError, TlsError) as e:
        raise UsageError(f"cannot use the certificates in {tls_dir} for {identity}: {e}") from None


def handles_errors(handler: Handler) -> Handler:
    """Print a refusal or a usage problem plainly and exit non-zero, without a traceback."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        try:
            return handler(args, environ)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except ClientError as e:
            print(f"error: {e.code}: {e.message}", file=sys.stderr)
            return EXIT_REFUSED

    return wrapped
