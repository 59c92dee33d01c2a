"""Mistakes an operator can act on: a config, key, certificate, file or port problem
becomes one or two lines naming the file, the config key and the fix, and exit
status 2. `--debug` shows the traceback instead."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from cryptography import x509

C = TypeVar("C")

EXIT_CONFIG = 2
# Certificates that end sooner than this are warned of at start and in Describe.
EXPIRY_WARNING = timedelta(days=30)


class StartupError(Exception):
    """A problem found before serving, already phrased for the operator."""


# Other exception types whose text is already phrased for the operator (a module
# adds its own, e.g. the node's rollback check), shown as they are.
EXPLAINED: list[type[BaseException]] = []


def require_files(where: str, files: Mapping[str, Path]) -> None:
    """Every config key naming a file must name one that exists and can be read."""
    for key, path in files.items():
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            raise StartupError(
                f"{where}: {key} = {path}: no such file\n"
                f"  fix: correct {key} in the config, or create the file "
                "(`tessera keys new` for a signing key, `tessera certs` for certificates)"
            ) from None
        except IsADirectoryError:
            raise StartupError(
                f"{where}: {key} = {path} is a folder\n  fix: {key} must name a file"
            ) from None
        except PermissionError:
            raise StartupError(
                f"{where}: {key} = {path} cannot be read by this user\n"
                "  fix: give the server's user read access to the file"
            ) from None


def expiry_warnings(
    files: Mapping[str, Path],
    now: datetime | None = None,
    within: timedelta = EXPIRY_WARNING,
    *,
    paths: bool = True,
) -> list[str]:
    """One warning per certificate that has expired or ends within `within`. Without
    `paths` (for callers over the wire) a warning names the config key only."""
    now = now or datetime.now(UTC)
    out = []
    for key, path in files.items():
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue  # reported by the loader, with the key named
        ends = cert.not_valid_after_utc
        what = f"{key} = {path}" if paths else f"the certificate in {key}"
        if ends <= now:
            out.append(f"{what} expired on {ends:%Y-%m-%d %H:%M} UTC; renew it")
        elif ends - now <= within:
            days = (ends - now).days
            out.append(f"{what} expires on {ends:%Y-%m-%d} UTC (in {days} days); renew it")
    return out


def explain(exc: BaseException) -> str | None:
    """The operator's message for a known kind of mistake, or None for a fault of ours."""
    from tessera import audit, config, keys, tls
    from tessera.observability import PortError

    if isinstance(exc, (StartupError, config.ConfigError, PortError, *EXPLAINED)):
        return str(exc)
    if isinstance(exc, tls.TlsError):
        return f"certificate problem: {exc}\n  fix: check the files under [tls] in the config"
    if isinstance(exc, keys.KeyError_):
        return f"key problem: {exc}"
    if isinstance(exc, audit.AuditError):
        return (
            f"audit log problem: {exc}\n  fix: if the signing key changed, put the old key "
            "back, or rotate it as docs/deploy.md describes"
        )
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, sqlite3.Error):
        return f"state database problem: {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror}"
    return None


def run(
    fn: Callable[[], int],
    *,
    debug: bool = False,
    prog: str = "tessera",
    stderr: IO[str] | None = None,
) -> int:
    """Run a command; a known mistake prints its short message and returns 2."""
    if debug:
        return fn()
    try:
        return fn()
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        message = explain(e)
        if message is None:
            raise
        out: Any = stderr or sys.stderr
        print(f"{prog}: error: {message}", file=out, flush=True)
        logging.getLogger("tessera.startup").debug("startup error", exc_info=True)
        return EXIT_CONFIG


def serve_main(
    prog: str,
    argv: Sequence[str] | None,
    load: Callable[[Path], C],
    serve: Callable[[C, Any, str], int],
) -> int:
    """`python -m tessera.node.main` / `...coordinator.main`: read --config and the
    ops options, then serve until signalled, a known mistake exiting 2 in short."""
    from tessera import observability

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    observability.add_arguments(parser)
    args = parser.parse_args(argv)
    ops = observability.options_from(args)
    return run(lambda: serve(load(args.config), ops, str(args.config)), debug=args.debug, prog=prog)


def load_tls(where: str, cert: Path, key: Path, ca: Path) -> Any:
    """The [tls] files checked and read, with the config key named in any error."""
    from tessera import tls

    files = {"tls.cert": cert, "tls.key": key, "tls.ca": ca}
    require_files(where, files)
    try:
        return tls.TlsFiles(cert, key, ca).load()
    except tls.TlsError as e:
        text = str(e)
        # The loader names the file first: name the config key too.
        for name, path in files.items():
            if text.startswith(f"{path}:"):
                text = f"{name} = {text}"
                break
        raise StartupError(
            f"{where}: {text}\n  fix: point tls.cert, tls.key and tls.ca at the PEM files "
            "that `tessera certs` wrote (or your PKI issued)"
        ) from None
