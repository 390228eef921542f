"""Open a report in headless Chromium and look at it: a screenshot, figure sizes, console errors, requests.

Talks the Chrome DevTools protocol over --remote-debugging-pipe (JSON messages ended by NUL on file
descriptors 3 and 4), so it needs nothing but a `chromium` binary: no driver, no npm, no network.
"""

from __future__ import annotations

import contextlib
import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]

# What the page looks like from inside: every image's drawn and natural size, the sections, the height.
PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
    naturalHeight: i.naturalHeight, width: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height})),
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  text: document.body.innerText.length,
  height: document.documentElement.scrollHeight,
  verdict: (document.querySelector('.verdict .reading') || {}).innerText || null
})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal CDP client over the pipe: send a command, wait for its answer, keep the events."""

    def __init__(self, binary: str, user_data_dir: str):
        to_browser_r, self._write = os.pipe()
        self._read, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. preexec_fn runs before Popen closes
        # the fds it was not told to keep, so 3 and 4 are kept; the dups first keep either pipe end from
        # being overwritten when it already is 3 or 4.
        def wire():
            reader, writer = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reader, 3)
            os.dup2(writer, 4)
        keep = tuple(sorted({3, 4, to_browser_r, from_browser_w}))
        self.process = subprocess.Popen([binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={user_data_dir}",
                                         "about:blank"], pass_fds=keep, preexec_fn=wire,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe: " + self._stderr_tail())
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr_tail(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return (self.process.stderr.read() or b"").decode(errors="replace")[-500:]

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a browser that already went away
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def inspect_page(html_path: Path | str, screenshot: Path | str | None = None, width: int = 1100,
                 timeout: float = 60) -> dict[str, Any]:
    """Load html_path from disk; return what the page holds, its console errors and every request it made.

    {"images": [...], "sections": [...], "text": chars, "height": px, "verdict": str, "errors": [str],
     "requests": [url], "screenshot": path or None}
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="harness-chromium-") as profile:
        tools = DevTools(binary, profile)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                               "mobile": False}, session=session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": url}, session=session, timeout=timeout)
            tools.wait_for("Page.loadEventFired", timeout=timeout)
            probe = tools.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            page = json.loads(probe["result"]["value"])
            page["screenshot"] = None
            if screenshot:
                tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": int(page["height"]),
                                                                   "deviceScaleFactor": 1, "mobile": False}, session=session)
                shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                  session=session, timeout=timeout)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                page["screenshot"] = str(screenshot)
        finally:
            tools.close()
    page["errors"] = console_errors(tools.events)
    page["requests"] = [e["params"]["request"]["url"] for e in tools.events
                        if e.get("method") == "Network.requestWillBeSent"]
    return page


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", "log error"))
    return errors
