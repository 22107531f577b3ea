"""Open a page in headless Chromium (Debian's ``chromium``) over the DevTools protocol.

:func:`open_page` loads a file, collects console errors, uncaught exceptions and every
network request, evaluates a JavaScript expression once the page has loaded and the plots
have drawn, and saves a full-page screenshot. Uses websocket-client (a dev dependency).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where CI keeps artifacts: the screenshots of the reports opened by the tests.
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"

#: Evaluated in the report page: every plot's points, traces and drawn marks, and the notes.
PLOT_CHECK = """new Promise(resolve => setTimeout(() => resolve({
  plots: Array.from(document.querySelectorAll('.llem-plot')).map(p => {
    const gd = p.querySelector('.js-plotly-plot');
    return {
      points: Number(p.dataset.points),
      traces: gd && gd.data ? gd.data.length : 0,
      drawn: gd ? gd.querySelectorAll(
        '.scatterlayer .point, .scatterlayer .js-line, .barlayer .point').length : 0,
      width: gd ? gd.getBoundingClientRect().width : 0,
      height: gd ? gd.getBoundingClientRect().height : 0,
      title: (p.previousElementSibling || {}).textContent || '',
    };
  }),
  notes: Array.from(document.querySelectorAll('p.note')).map(n => n.textContent),
  summary_rows: document.querySelectorAll('#summary tbody tr').length,
}), 1000))"""


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
)


REQUIRE_ENV = "LLEM_REQUIRE_CHROMIUM"


def need_chromium() -> None:
    """Skip without Chromium, or fail when LLEM_REQUIRE_CHROMIUM=1 (.ci/run sets it)."""
    import importlib.util

    import pytest

    if chromium_path() is None:
        why = "chromium is not installed (apt-get install chromium)"
    elif importlib.util.find_spec("websocket") is None:
        why = "websocket-client (dev extra) is not installed"
    else:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no"):
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}")
    pytest.skip(why)


def chromium_path() -> str | None:
    """The Chromium binary, if installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageReport:
    """What happened while the page loaded."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None


class _Session:
    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
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
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def wait_event(self, method: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(method)

    def close(self) -> None:
        self.ws.close()


def open_page(
    path: Path, expression: str, screenshot: Path, *, timeout_s: float = 90.0
) -> PageReport:
    """Load ``path``, evaluate ``expression`` (awaiting a promise), save ``screenshot``."""
    binary = chromium_path()
    assert binary is not None, "chromium is not installed"
    profile = tempfile.mkdtemp(prefix="llem-chromium-")
    # stderr to a file, not a pipe: Chromium keeps logging, and a full pipe would stall it
    log_path = Path(profile) / "chromium.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/data", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        port = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and port is None and proc.poll() is None:
            m = re.search(
                r"DevTools listening on ws://127\.0\.0\.1:(\d+)/",
                log_path.read_text(errors="replace"),
            )
            if m:
                port = int(m.group(1))
            else:
                time.sleep(0.1)
        assert port is not None, f"chromium did not start: {log_path.read_text()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        s = _Session(page["webSocketDebuggerUrl"])
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                s.call(f"{domain}.enable")
            s.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            s.call("Page.navigate", url=path.resolve().as_uri())
            s.wait_event("Page.loadEventFired", timeout_s)
            value = s.call(
                "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
            )
            shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            report = PageReport(value=value.get("result", {}).get("value"))
            if "exceptionDetails" in value:
                report.exceptions.append(json.dumps(value["exceptionDetails"])[:2000])
            for e in s.events:
                method, params = e.get("method"), e.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error",
                    "assert",
                ):
                    report.console_errors.append(json.dumps(params.get("args"))[:500])
                elif method == "Runtime.exceptionThrown":
                    report.exceptions.append(json.dumps(params)[:2000])
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    report.console_errors.append(params["entry"].get("text", "")[:500])
                elif method == "Network.requestWillBeSent":
                    report.requests.append(params.get("request", {}).get("url", ""))
            return report
        finally:
            s.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
