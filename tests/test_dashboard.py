"""The ops dashboard (`GET /`) in a real headless Chromium, driven over the DevTools protocol:
the page is loaded against a running Runtime, load is generated on the runtime, and the figures
on the page must follow it. Chromium is Debian's `chromium` package (`make chromium`); without
it the tests fail, unless HELIXRT_SKIP_BROWSER=1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helixrt.ops import make_app
from helixrt.runtime import Runtime

pytestmark = pytest.mark.integration

SKIP_ENV = "HELIXRT_SKIP_BROWSER"
MCP_FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "raw_server.py")
WORKERS = 2
TOKEN = "s3cret"

# Every figure of the page (raw value and text), the two connection states, the MCP table's
# rows and the event log, in one evaluation.
READ_PAGE = """(() => {
  const figures = {};
  for (const e of document.querySelectorAll("dd[id]")) {
    figures[e.id] = { value: e.dataset.value === undefined ? null : Number(e.dataset.value),
                      text: e.textContent };
  }
  const state = (id) => ({ state: document.getElementById(id).dataset.state,
                           text: document.getElementById(id).textContent });
  return {
    figures,
    status: state("status"),
    stream: state("stream-state"),
    servers: [...document.querySelectorAll("#mcp-servers tr[data-server]")].map(
      (row) => [...row.cells].map((cell) => cell.textContent)),
    serversText: document.getElementById("mcp-servers").textContent,
    log: [...document.querySelectorAll("#event-log li")].map((li) => li.textContent),
    href: location.href,
  };
})()"""


# -- the browser ----------------------------------------------------------------------------------


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A headless Chromium for this module's tests: its DevTools websocket URL. Its whole
    process group is killed at the end, and nothing of it may be left."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the dashboard's browser tests are skipped")
    binary = chromium_binary()
    if binary is None:
        pytest.fail(
            "the dashboard tests need Chromium (chromium or chromium-browser on PATH): run "
            f"`make chromium` (Debian: apt-get install chromium), or set {SKIP_ENV}=1 to "
            "skip them",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("chromium")
    log_path = folder / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--remote-debugging-port=0",
                "--no-sandbox",
                f"--user-data-dir={folder / 'profile'}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-extensions",
                "--disable-sync",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1280,1100",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield devtools_url(process, log_path)
    finally:
        stop_process_group(process)


def devtools_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"DevTools listening on (ws://\S+)", log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(
        f"Chromium did not open its DevTools port (exit status {process.poll()}):\n"
        f"{log_path.read_text(errors='replace')[-3000:]}",
        pytrace=False,
    )


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=5)
    # Chromium's helpers (zygote, renderers, GPU) share its group: none may outlive the test.
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "Chromium left processes behind"
        time.sleep(0.05)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser-level websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is None:
                self.events.append(data)
            elif not future.done():
                future.set_result(data)
        for future in self._pending.values():
            future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_json(message)
        answer = await asyncio.wait_for(future, 10)
        assert "error" not in answer, f"{method}: {answer['error']}"
        result: dict[str, Any] = answer["result"]
        return result

    async def close(self) -> None:
        await self._ws.close()
        await self._reader


@asynccontextmanager
async def devtools(url: str) -> AsyncIterator[DevTools]:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, max_msg_size=0)
        client = DevTools(ws)
        try:
            yield client
        finally:
            await client.close()


class Page:
    """One browser tab, attached with its own DevTools session."""

    def __init__(self, client: DevTools, target: str, session: str) -> None:
        self.client = client
        self.target = target
        self.session = session

    @classmethod
    async def open(cls, client: DevTools) -> Page:
        target = (await client.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        attached = await client.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = cls(client, target, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.client.send(method, params, self.session)

    def events(self, method: str) -> list[dict[str, Any]]:
        return [
            e["params"]
            for e in self.client.events
            if e.get("sessionId") == self.session and e["method"] == method
        ]

    async def navigate(self, url: str) -> None:
        loads = len(self.events("Page.loadEventFired"))
        answer = await self.send("Page.navigate", {"url": url})
        assert "errorText" not in answer, answer
        deadline = time.monotonic() + 10
        while len(self.events("Page.loadEventFired")) == loads:
            assert time.monotonic() < deadline, f"{url} did not load"
            await asyncio.sleep(0.02)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    async def read(self) -> dict[str, Any]:
        page: dict[str, Any] = await self.evaluate(READ_PAGE)
        return page

    async def until(
        self, check: Callable[[dict[str, Any]], bool], what: str, within: float = 10
    ) -> dict[str, Any]:
        """The page's figures once `check` holds for them (an assertion error after `within`)."""
        deadline = time.monotonic() + within
        while True:
            page = await self.read()
            if check(page):
                return page
            assert time.monotonic() < deadline, f"the page never showed {what}: {page}"
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        """The whole page, as a PNG at `path`."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        answer = await self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.write_bytes(base64.b64decode(answer["data"]))

    def errors(self) -> list[str]:
        """Uncaught exceptions and error-level console or browser log entries."""
        found = [str(e["exceptionDetails"]) for e in self.events("Runtime.exceptionThrown")]
        found += [
            str(e["entry"]) for e in self.events("Log.entryAdded") if e["entry"]["level"] == "error"
        ]
        found += [
            str(e["args"]) for e in self.events("Runtime.consoleAPICalled") if e["type"] == "error"
        ]
        return found


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


def value(page: dict[str, Any], figure: str) -> float:
    shown = page["figures"][figure]["value"]
    assert shown is not None, f"{figure} shows no value yet: {page['figures'][figure]}"
    return float(shown)


def ready(page: dict[str, Any]) -> bool:
    return (
        page["status"]["state"] == "ok"
        and page["stream"]["state"] == "open"
        and all(f["value"] is not None for f in page["figures"].values())
    )


# -- the runtime and its ops app ------------------------------------------------------------------


def runtime_config(tmp_path: Path) -> Path:
    servers = {"mcpServers": {"fx": {"command": sys.executable, "args": [MCP_FIXTURE]}}}
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    path = tmp_path / "helixrt.toml"
    path.write_text(
        f"[worker_pool]\nworkers = {WORKERS}\n"
        f'[mcp]\nconfig = "servers.json"\nroot = "{tmp_path / "mcp"}"\n'
        'connection_timeout = "10s"\n'
    )
    return path


@asynccontextmanager
async def served(rt: Runtime, **options: Any) -> AsyncIterator[str]:
    """The ops app of `rt` on a free loopback port: its base URL."""
    runner = web.AppRunner(make_app(rt, **options), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def publish_steadily(rt: Runtime, stop: asyncio.Event, sent: list[int]) -> None:
    """20 events every 50 ms on `dashboard.load` until `stop`; counts them in `sent`."""
    while not stop.is_set():
        for n in range(20):
            rt.bus.publish("dashboard.load", {"n": n})
            sent[0] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


# -- the tests ------------------------------------------------------------------------------------


def test_the_dashboard_follows_the_runtime(tmp_path: Path, chromium: str) -> None:
    async def main() -> None:
        async with (
            Runtime.from_file(runtime_config(tmp_path), env={}) as rt,
            served(rt) as base,
            devtools(chromium) as client,
        ):
            page = await Page.open(client)
            await page.navigate(base + "/")
            before = await page.until(ready, "its first figures and an open event stream")
            assert before["figures"]["tasks-completed"]["value"] == 0
            assert before["figures"]["http-requests"]["value"] == 0
            assert before["figures"]["mcp-total"]["value"] == 0
            assert before["servers"] == []
            assert "no MCP server started" in before["serversText"]
            published = value(before, "events-published")
            streamed = value(before, "stream-events")

            # The worker pool: blocked workers and a queue behind them, then drained.
            gate = threading.Event()
            tasks = [rt.worker_pool.submit(gate.wait, 10) for _ in range(WORKERS + 5)]
            blocked = await page.until(
                lambda p: value(p, "queue-depth") == 5 and value(p, "active-workers") == WORKERS,
                "a queue depth of 5 behind busy workers",
            )
            assert blocked["figures"]["queue-depth"]["text"] == "5"
            gate.set()
            assert all(t.result(timeout=10) for t in tasks)

            # Events at a steady rate, on the bus and so on the stream.
            stop, sent = asyncio.Event(), [0]
            load = asyncio.create_task(publish_steadily(rt, stop, sent))

            # The cache, L1 only: 30 hits and 10 misses.
            for n in range(10):
                await rt.cache.set(f"dash:{n}", n)
            for _ in range(3):
                for n in range(10):
                    assert await rt.cache.get(f"dash:{n}") == n
            for n in range(10):
                assert await rt.cache.get(f"dash:missing:{n}") is None
            assert rt.cache.stats().hit_ratio == 0.75

            # HTTP requests through the runtime's pool (to the ops app itself).
            for _ in range(10):
                assert (await rt.http.get_json(base + "/health"))["status"] in ("ok", "degraded")

            # A tool call starts the MCP server.
            await rt.mcp.call_tool("fx", "echo", {"text": "hi"})

            during = await page.until(
                lambda p: (
                    value(p, "events-rate") > 0
                    and value(p, "stream-rate") > 0
                    and value(p, "tasks-completed") == WORKERS + 5
                    and value(p, "queue-depth") == 0
                    and value(p, "http-requests") == 10
                    and value(p, "cache-hit-ratio") == 0.75
                    and value(p, "mcp-active") == 1
                ),
                "the load: event rates, completed tasks, cache hits, HTTP requests, MCP",
            )
            stop.set()
            await load
            assert sent[0] > 0
            after = await page.until(
                lambda p: (
                    value(p, "events-published") >= published + sent[0]
                    and value(p, "stream-events") >= streamed + sent[0]
                ),
                f"the {sent[0]} events published, on the bus and on the stream",
            )

            figures = after["figures"]
            assert figures["tasks-completed"]["text"] == str(WORKERS + 5)
            assert figures["cache-hit-ratio"]["text"] == "75.0 %"
            assert figures["cache-l1-hits"]["value"] == 30
            assert figures["cache-l1-misses"]["value"] == 10
            assert figures["cache-l1-size"]["value"] == 10
            assert 0 < figures["http-latency-mean"]["value"] <= figures["http-latency-p99"]["value"]
            assert figures["http-latency-mean"]["text"].endswith(" ms")
            assert during["figures"]["events-rate"]["value"] > 0
            assert any("dashboard.load" in line for line in after["log"]), after["log"]
            # The MCP table: the server, connected, with its one call.
            (server,) = after["servers"]
            assert server[:4] == ["fx", "connected", "1", "0"], server
            assert figures["mcp-total"]["value"] == 1

            # The charts have drawn something (a blank canvas is all zeros).
            inked = await page.evaluate(
                """[...document.querySelectorAll("canvas")].map((c) => {
                     const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                     return d.some((byte) => byte !== 0);
                   })"""
            )
            assert inked == [True, True, True, True]

            # Light and dark, from prefers-color-scheme.
            colors = []
            for scheme in ("light", "dark"):
                await page.send(
                    "Emulation.setEmulatedMedia",
                    {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
                )
                colors.append(await page.evaluate("getComputedStyle(document.body).background"))
                shot = tmp_path / f"dashboard-{scheme}.png"
                await page.screenshot(shot)
                assert_png(shot)
            assert colors[0] != colors[1], colors

            assert page.errors() == []

    asyncio.run(asyncio.wait_for(main(), 25))


def test_the_dashboard_of_a_public_app_takes_the_token(tmp_path: Path, chromium: str) -> None:
    async def main() -> None:
        async with (
            Runtime(None) as rt,
            served(rt, token=TOKEN, public=True) as base,
            devtools(chromium) as client,
        ):
            async with aiohttp.ClientSession() as http:
                # The page itself is static and served without the token; its data is not.
                async with http.get(base + "/") as r:
                    assert r.status == 200
                    assert r.content_type == "text/html"
                    policy = r.headers["Content-Security-Policy"]
                    assert "default-src 'none'" in policy
                    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*';", policy), policy
                    assert "connect-src 'self'" in policy
                    assert "unsafe-inline" not in policy
                async with http.get(base + "/v1/metrics/performance") as r:
                    assert r.status == 401

            without = await Page.open(client)
            await without.navigate(base + "/")
            refused = await without.until(
                lambda p: p["status"]["state"] == "error" and p["stream"]["state"] == "error",
                "that the endpoints refuse it",
            )
            assert "401" in refused["status"]["text"]
            assert "#token=" in refused["status"]["text"]

            page = await Page.open(client)
            await page.navigate(f"{base}/#token={TOKEN}")
            before = await page.until(ready, "its figures with the token")
            assert TOKEN not in before["href"]  # taken out of the address bar
            published = value(before, "events-published")
            for n in range(7):
                rt.bus.publish("dashboard.token", {"n": n})
            after = await page.until(
                lambda p: (
                    value(p, "events-published") >= published + 7
                    and sum("dashboard.token" in line for line in p["log"]) == 7
                ),
                "the 7 events, through the JSON endpoint and the stream",
            )
            assert after["status"]["state"] == "ok"
            await page.screenshot(tmp_path / "dashboard-token.png")
            assert_png(tmp_path / "dashboard-token.png")
            assert page.errors() == []

    asyncio.run(asyncio.wait_for(main(), 25))
