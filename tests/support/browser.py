"""Render a local HTML file in headless Chromium and report what the page did, over the
DevTools protocol: console errors (including Content-Security-Policy refusals and
uncaught exceptions), every network request other than the page itself, and a
full-page screenshot.

Needs Debian's `chromium` (`.ci/run` installs it) and `websocket-client`;
`find_chromium()` says why when either is missing, for the tests to skip with.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


def find_chromium() -> tuple[str | None, str]:
    """(path, "") or (None, why not)."""
    try:
        import websocket  # noqa: F401
    except ImportError:
        return None, "websocket-client is not installed (pip install -e '.[dev]')"
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        path = shutil.which(name) if name else None
        if path:
            return path, ""
    return None, "Chromium is not installed (apt-get install -y chromium; .ci/run does this)"


@dataclass
class Rendered:
    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""
    text: str = ""


class _Devtools:
    def __init__(self, ws_url: str, timeout: float) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, deadline: float) -> None:
        if any(e["method"] == method for e in self.events):
            return
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return
        raise TimeoutError(f"no {method} from Chromium")

    def close(self) -> None:
        self.ws.close()


def _wait_port(profile: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Chromium exited early: {log.read_text(errors='replace')[-2000:]}")
        if marker.exists():
            lines = marker.read_text().split("\n")
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        time.sleep(0.05)  # polling for readiness: the file appears once it listens
    raise TimeoutError("Chromium did not open its DevTools port")


def _page_target(port: int, deadline: float) -> str:
    """The WebSocket address of the browser's first page, once it has one."""
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium opened no page")
        time.sleep(0.05)  # polling for readiness: the first tab appears just after the port


def render(
    page: Path, screenshot: Path, *, chromium: str, timeout: float = 60.0, width: int = 1200
) -> Rendered:
    """Load `page` (a local file) and report its console errors and outside requests."""
    url = page.resolve().as_uri()
    out = Rendered(url)
    # Chromium's helper processes can still be writing the profile as the folder is
    # removed; they are stopped with the browser's process group, and a file they leave
    # is not the test's failure.
    with tempfile.TemporaryDirectory(prefix="tessera-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp) / "profile"
        log = Path(tmp) / "chromium.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            port = _wait_port(profile, proc, log, timeout)
            dev = _Devtools(_page_target(port, time.monotonic() + timeout), timeout)
            try:
                for domain in ("Page", "Network", "Runtime", "Log"):
                    dev.call(f"{domain}.enable")
                dev.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=900,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                dev.events.clear()
                dev.call("Page.navigate", url=url)
                dev.wait_for("Page.loadEventFired", time.monotonic() + timeout)
                info = dev.call(
                    "Runtime.evaluate",
                    expression="JSON.stringify([document.title, document.body.innerText])",
                    returnByValue=True,
                )
                out.title, out.text = json.loads(info["result"]["value"])
                shot = dev.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                out.screenshot = screenshot
                _collect(dev.events, out)
            finally:
                dev.close()
        finally:
            _stop_group(proc)
    return out


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop Chromium and every helper process it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Helpers outlive the main process by a moment: wait until the group is gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # polling for the helpers' exit, bounded by the deadline
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _collect(events: list[dict[str, Any]], out: Rendered) -> None:
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if u != out.url and not u.startswith("data:"):
                out.requests.append(u)
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.console_errors.append(" ".join(str(a.get("value", "")) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            out.console_errors.append(str(p.get("exceptionDetails", {}).get("text", "exception")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.console_errors.append(str(p["entry"].get("text", "")))
