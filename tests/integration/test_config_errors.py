"""Each config, key, certificate and file mistake gives one or two lines naming the file,
the config key and the fix, and exit status 2, with no traceback (`--debug` shows it).

The servers run as real `tessera ... serve` processes, as an operator starts them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera import config
from tessera.config import TlsConfig
from tessera.coordinator.config import CoordinatorConfig
from tests.support import coordinator as coordlib
from tests.support import federation as fedlib

TESSERA = (sys.executable, "-c", "from tessera.cli.main import entry; entry()")


@dataclass
class Setup:
    fed: fedlib.Federation
    cfg: CoordinatorConfig
    path: Path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    fed = fedlib.make(tmp_path, node_names=("Leeds",))
    coordlib.issue_user_certs(fed, [coordlib.ANALYST, *coordlib.APPROVERS])
    cfg = coordlib.coordinator_config(fed, {"Leeds": 1})
    return Setup(fed, cfg, tmp_path / "coordinator.toml")


def _run(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TESSERA, *extra, "coordinator", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _short(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # never "ready"
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, out.stderr
    return lines


def _tls(s: Setup, **change: Path) -> CoordinatorConfig:
    return dataclasses.replace(s.cfg, tls=dataclasses.replace(s.cfg.tls, **change))


def _garbage(s: Setup) -> Path:
    p = s.fed.root / "garbage.crt"
    p.write_text("this is not a certificate\n")
    return p


# Each case: (name, how to break the config, what the message must contain).
CASES: list[tuple[str, Callable[[Setup], CoordinatorConfig | str], tuple[str, ...]]] = [
    (
        "missing certificate",
        lambda s: _tls(s, cert=s.fed.root / "nowhere" / "coordinator.crt"),
        ("tls.cert", "nowhere/coordinator.crt", "no such file", "fix"),
    ),
    (
        "missing CA",
        lambda s: _tls(s, ca=s.fed.root / "no-ca.crt"),
        ("tls.ca", "no-ca.crt", "no such file"),
    ),
    (
        "certificate is not PEM",
        lambda s: _tls(s, cert=_garbage(s)),
        ("tls.cert", "garbage.crt", "not a PEM certificate"),
    ),
    (
        "key of another party",
        lambda s: _tls(s, key=s.fed.tls("Leeds").key),
        ("tls.key", "does not match"),
    ),
    (
        "missing signing key",
        lambda s: dataclasses.replace(s.cfg, signing_key=s.fed.root / "lost.key"),
        ("signing_key", "lost.key", "no such file"),
    ),
    (
        "certificate path is a folder",
        lambda s: _tls(s, cert=s.fed.root),
        ("tls.cert", "is a folder"),
    ),
    (
        "unknown key",
        lambda s: config.dump(s.cfg) + 'colour = "blue"\n',
        ("coordinator.toml", "unknown key 'colour'"),
    ),
    (
        "wrong type",
        lambda s: config.dump(s.cfg).replace("deadline_seconds = 5.0", 'deadline_seconds = "5"'),
        ("coordinator.toml", "deadline_seconds", "must be a number"),
    ),
    (
        "missing key",
        lambda s: config.dump(s.cfg).replace('listen = "127.0.0.1:0"\n', ""),
        ("coordinator.toml", "missing key 'listen'"),
    ),
    (
        "not TOML",
        lambda s: config.dump(s.cfg) + "[[[\n",
        ("coordinator.toml",),
    ),
    (
        "threshold above the approvers",
        lambda s: dataclasses.replace(
            s.cfg, approvers=dataclasses.replace(s.cfg.approvers, threshold=9)
        ),
        ("coordinator.toml", "approvers.threshold"),
    ),
    (
        "port out of range",
        lambda s: dataclasses.replace(s.cfg, listen="127.0.0.1:99999"),
        ("coordinator.toml", "listen", "99999"),
    ),
    (
        "port not a number",
        lambda s: dataclasses.replace(s.cfg, listen="127.0.0.1:grpc"),
        ("coordinator.toml", "listen", "number"),
    ),
]


@pytest.mark.parametrize(("name", "breaks", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_config_mistake_is_one_short_message_and_exit_2(
    setup: Setup,
    name: str,
    breaks: Callable[[Setup], CoordinatorConfig | str],
    says: tuple[str, ...],
) -> None:
    broken = breaks(setup)
    setup.path.write_text(broken if isinstance(broken, str) else config.dump(broken))
    lines = _short(_run(setup.path))
    assert lines[0].startswith("tessera: error: ")
    text = "\n".join(lines)
    for fragment in says:
        assert fragment in text, text


def test_a_missing_config_file_names_it(setup: Setup) -> None:
    lines = _short(_run(setup.path.with_name("absent.toml")))
    assert "absent.toml" in lines[0]


def test_a_key_others_can_read_says_how_to_fix_it(setup: Setup) -> None:
    setup.cfg.signing_key.chmod(0o644)
    setup.path.write_text(config.dump(setup.cfg))
    text = "\n".join(_short(_run(setup.path)))
    assert str(setup.cfg.signing_key) in text
    assert f"chmod 600 {setup.cfg.signing_key}" in text


def test_debug_shows_the_traceback(setup: Setup) -> None:
    setup.path.write_text(config.dump(_tls(setup, cert=setup.fed.root / "nowhere.crt")))
    out = _run(setup.path, "--debug")
    assert out.returncode != 0
    assert "Traceback" in out.stderr
    assert "nowhere.crt" in out.stderr


def test_the_server_module_entry_point_behaves_the_same(setup: Setup) -> None:
    """`python -m tessera.coordinator.main`, as the demo and the image start it."""
    setup.path.write_text(config.dump(_tls(setup, cert=setup.fed.root / "nowhere.crt")))
    out = subprocess.run(
        [sys.executable, "-m", "tessera.coordinator.main", "--config", str(setup.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = _short(out)
    assert "tls.cert" in lines[0]


def test_tls_config_is_the_shared_section() -> None:
    # The cases above break [tls] through the shared dataclass: keep them in step.
    assert [f.name for f in dataclasses.fields(TlsConfig)] == ["cert", "key", "ca"]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--metrics", "127.0.0.1:99999", "--metrics"),
        ("--health", "nowhere", "--health"),
        ("--metrics", "HELD", "cannot listen"),
        ("--health", "HELD", "cannot listen"),
    ],
)
def test_a_bad_ops_port_is_one_short_message_and_exit_2(
    setup: Setup, flag: str, value: str, says: str
) -> None:
    import socket

    setup.path.write_text(config.dump(setup.cfg))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        if value == "HELD":
            value = f"127.0.0.1:{held.getsockname()[1]}"
        out = subprocess.run(
            [*TESSERA, "coordinator", "serve", "--config", str(setup.path), flag, value],
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = _short(out)
    assert says in lines[0] and flag in lines[0]
