"""MCPConnectionPool against real processes: the raw JSON-RPC fixture server in
`tests/mcp_fixtures/` (fast, and misbehaving on demand), and the real reference servers
(memory, filesystem, everything from npm; time from PyPI) when `HELIXRT_MCP_TEST_ROOT` names a
Preinstaller root where they are installed (`make test` prepares one)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("mcp")

from helixrt.errors import HelixError, PoolClosedError
from helixrt.mcp.config import RestartPolicy, ServerConfig, Timeouts, load_config
from helixrt.mcp.pool import (
    MCPConnectionPool,
    ServerDisconnectedError,
    ServerStartError,
    ServerState,
    ServerUnavailableError,
    ToolTimeoutError,
    UnknownServerError,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "raw_server.py")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fixture(name: str, *flags: str, **settings: Any) -> ServerConfig:
    return ServerConfig(
        name=name, transport="stdio", command=sys.executable, args=(FIXTURE, *flags), **settings
    )


def text(result: Any) -> str:
    return str(result.content[0].text)


def alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every live process (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found.append((int(entry), int(fields[1]), int(fields[2])))
    return found


_BASELINE: set[int] = set()


@pytest.fixture(autouse=True)
def _baseline() -> None:
    """Children this process already had (a session's redis-server): not the pool's."""
    _BASELINE.clear()
    if os.path.isdir("/proc/self"):
        me = os.getpid()
        _BASELINE.update(pid for pid, ppid, _ in processes() if ppid == me)


def children() -> list[int]:
    """This process's children started since the test began."""
    me = os.getpid()
    return [pid for pid, ppid, _ in processes() if ppid == me and pid not in _BASELINE]


def group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group in processes() if group == pgid]


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def starts(log_path: str | None) -> int:
    """How many times the fixture started (each start writes one line to its stderr log)."""
    assert log_path is not None
    return Path(log_path).read_text().count("fixture: started")


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str]] = []

    def publish(self, topic: str, payload: dict[str, Any], *, source: str) -> None:
        self.events.append((topic, payload, source))

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.events]


# --- the fixture server -------------------------------------------------------------------------


@needs_proc
def test_pending_until_first_use_and_50_first_calls_start_one_process() -> None:
    async def main() -> None:
        async with MCPConnectionPool({"fx": fixture("fx")}) as pool:
            assert pool.state("fx") is ServerState.PENDING
            assert children() == []
            results = await asyncio.gather(*(pool.call_tool("fx", "pid") for _ in range(50)))
            pids = {int(text(result)) for result in results}
            assert len(pids) == 1
            (pid,) = pids
            assert children() == [pid]
            stats = pool.stats()["fx"]
            assert (stats.state, stats.pid, stats.calls, stats.restarts) == (
                "connected",
                pid,
                50,
                0,
            )
            assert 0 < stats.latency_mean <= stats.latency_p99
            assert starts(stats.log_path) == 1
        assert not alive(pid)
        assert children() == []

    run(main())


@needs_proc
def test_kill_9_fails_calls_in_flight_at_once_and_the_next_call_restarts() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("fx")], health_interval=None) as pool:
            pid = int(text(await pool.call_tool("fx", "pid")))
            calls = [
                asyncio.ensure_future(pool.call_tool("fx", "sleep", {"seconds": 30}, timeout=50))
                for _ in range(3)
            ]
            await eventually(lambda: pool.stats()["fx"].inflight == 3)
            await asyncio.sleep(0.1)  # let the requests reach the server
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert time.monotonic() - killed < 3.0
            for outcome in outcomes:
                assert isinstance(outcome, ServerDisconnectedError), outcome
                assert isinstance(outcome, ConnectionError)
                assert isinstance(outcome, HelixError)
            assert "went away" in str(outcomes[0])
            new_pid = int(text(await pool.call_tool("fx", "pid")))
            assert new_pid != pid
            assert alive(new_pid)
            stats = pool.stats()["fx"]
            assert (stats.restarts, stats.failures, stats.pid) == (1, 3, new_pid)
        assert not alive(new_pid)

    run(main())


def test_a_server_that_never_answers_initialize_fails_within_the_connect_timeout() -> None:
    async def main() -> None:
        config = fixture("mute", "--no-initialize", timeouts=Timeouts(connect=0.5))
        async with MCPConnectionPool([config], backoff_base=0.4) as pool:
            started = time.monotonic()
            with pytest.raises(ServerStartError, match=r"initialize` within 0\.5 s") as info:
                await pool.call_tool("mute", "echo")
            assert 0.45 < time.monotonic() - started < 3.0
            assert "fixture: started" in str(info.value)  # the stderr tail
            assert pool.state("mute") is ServerState.FAILED
            log = pool.stats()["mute"].log_path
            # Within the backoff: refused at once, nothing spawned.
            with pytest.raises(ServerUnavailableError) as refused:
                await pool.call_tool("mute", "echo")
            assert 0 < refused.value.retry_after <= 0.4
            assert starts(log) == 1
            # After it: tried again (and fails again, the same way).
            await asyncio.sleep(0.45)
            with pytest.raises(ServerStartError):
                await pool.call_tool("mute", "echo")
            assert starts(log) == 2
            assert pool.state("mute") is ServerState.FAILED
        if os.path.isdir("/proc/self"):
            assert children() == []

    run(main())


def test_garbage_on_stdout_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        servers = [
            fixture("junk", "--garbage", "only", timeouts=Timeouts(connect=1.0)),
            fixture("noisy", "--garbage", "mixed"),
        ]
        async with MCPConnectionPool(servers) as pool:
            started = time.monotonic()
            with pytest.raises(ServerStartError, match="not JSON-RPC"):
                await pool.call_tool("junk", "echo")
            assert time.monotonic() - started < 4.0
            assert pool.state("junk") is ServerState.FAILED
            # Junk lines between valid answers are counted and skipped.
            assert text(await pool.call_tool("noisy", "echo", {"text": "hi"})) == "hi"
            assert pool.stats()["noisy"].stdout_garbage >= 2

    run(main())


def test_a_slow_tool_times_out_and_the_server_stays_connected() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("slow", timeouts=Timeouts(call=0.4))]) as pool:
            pid = text(await pool.call_tool("slow", "pid"))
            started = time.monotonic()
            with pytest.raises(ToolTimeoutError) as info:
                await pool.call_tool("slow", "sleep", {"seconds": 5})
            assert 0.35 < time.monotonic() - started < 2.0
            assert isinstance(info.value, TimeoutError)
            assert info.value.timeout == 0.4
            with pytest.raises(ToolTimeoutError):  # the per-call timeout wins over the server's
                await pool.call_tool("slow", "sleep", {"seconds": 5}, timeout=0.1)
            result = await pool.call_tool("slow", "sleep", {"seconds": 0.6}, timeout=3)
            assert text(result) == "slept"
            assert text(await pool.call_tool("slow", "pid")) == pid
            assert pool.state("slow") is ServerState.CONNECTED
            assert pool.stats()["slow"].failures == 2

    run(main())


def test_a_missing_command_or_a_server_that_exits_fails_clearly() -> None:
    async def main() -> None:
        servers = [
            ServerConfig(name="ghost", transport="stdio", command="/nonexistent/helixrt-mcp-nope"),
            fixture("quitter", "--exit-now", "3"),
        ]
        async with MCPConnectionPool(servers) as pool:
            with pytest.raises(ServerStartError, match="command was not found") as info:
                await pool.call_tool("ghost", "echo")
            assert isinstance(info.value.__cause__, FileNotFoundError)
            assert pool.state("ghost") is ServerState.FAILED
            with pytest.raises(ServerStartError, match="exited") as info:
                await pool.call_tool("quitter", "echo")
            assert "refusing to start (exit-now)" in str(info.value)
            assert pool.state("quitter") is ServerState.FAILED
            with pytest.raises(UnknownServerError, match=r"'nope'.*configured: 'ghost', 'quitter'"):
                await pool.call_tool("nope", "echo")

    run(main())


def test_a_crash_loop_spends_the_restart_budget_then_the_server_is_failed() -> None:
    async def main() -> None:
        config = fixture(
            "crashy", "--crash-after", "1", restart=RestartPolicy(max_restarts=2, window_seconds=60)
        )
        async with MCPConnectionPool([config], backoff_base=0.1, health_interval=None) as pool:
            for _ in range(3):  # the first run, then two restarts
                assert text(await pool.call_tool("crashy", "echo", {"text": "ok"})) == "ok"
                with pytest.raises(ServerDisconnectedError):
                    await pool.call_tool("crashy", "echo", {"text": "boom"})
            with pytest.raises(ServerUnavailableError, match="restart budget") as info:
                await pool.call_tool("crashy", "echo")
            assert 59 < info.value.retry_after <= 60
            assert pool.state("crashy") is ServerState.FAILED
            assert pool.stats()["crashy"].restarts == 2
            # An explicit restart forgets the budget.
            await pool.restart("crashy")
            assert pool.state("crashy") is ServerState.CONNECTED
            assert text(await pool.call_tool("crashy", "echo", {"text": "back"})) == "back"

    run(main())


@needs_proc
def test_the_health_check_restarts_a_crashed_server_without_a_call() -> None:
    async def main() -> None:
        bus = Bus()
        async with MCPConnectionPool([fixture("fx")], health_interval=0.1, bus=bus) as pool:
            pid = int(text(await pool.call_tool("fx", "pid")))
            os.kill(pid, signal.SIGKILL)
            await eventually(
                lambda: pool.state("fx") is ServerState.CONNECTED and pool.stats()["fx"].pid != pid
            )
            assert pool.stats()["fx"].restarts == 1
            assert (await pool.health_check()) == {"fx": True}
            assert await pool.health_check("fx") == {"fx": True}
        health = [p["healthy"] for t, p, _ in bus.events if t == "mcp.server.health.changed"]
        assert health == [True, False, True]

    run(main())


@needs_proc
def test_an_idle_server_goes_back_to_pending_and_its_process_exits() -> None:
    async def main() -> None:
        config = fixture("fx", timeouts=Timeouts(idle=0.3))
        async with MCPConnectionPool([config], health_interval=None) as pool:
            pid = int(text(await pool.call_tool("fx", "pid")))
            await eventually(lambda: pool.state("fx") is ServerState.PENDING, within=5)
            await eventually(lambda: not alive(pid), within=5)
            assert children() == []
            assert int(text(await pool.call_tool("fx", "pid"))) != pid
            assert pool.stats()["fx"].restarts == 0  # an idle close is not a crash

    run(main())


def test_max_connections_closes_the_least_recently_used_idle_server() -> None:
    async def main() -> None:
        servers = [fixture(name) for name in ("a", "b", "c")]
        async with MCPConnectionPool(servers, max_connections=2) as pool:
            await pool.call_tool("a", "echo")
            await pool.call_tool("b", "echo")
            await pool.call_tool("a", "echo")  # now b is the least recently used
            await pool.call_tool("c", "echo")
            states = {name: pool.state(name) for name in ("a", "b", "c")}
            assert states == {
                "a": ServerState.CONNECTED,
                "b": ServerState.PENDING,
                "c": ServerState.CONNECTED,
            }
            await pool.call_tool("b", "echo")  # evicts a (c was used after it)
            assert pool.state("a") is ServerState.PENDING

    run(main())


def test_a_cancelled_caller_stops_neither_the_start_nor_the_server() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("fx", "--start-delay", "0.3")]) as pool:
            first = asyncio.ensure_future(pool.call_tool("fx", "pid"))
            second = asyncio.ensure_future(pool.call_tool("fx", "pid"))
            await asyncio.sleep(0.1)
            first.cancel()  # while the server starts: the start goes on for the others
            pid = text(await second)
            assert first.cancelled()
            slow = asyncio.ensure_future(pool.call_tool("fx", "sleep", {"seconds": 5}))
            await asyncio.sleep(0.2)
            slow.cancel()  # in flight: the server is told, and stays
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert text(await pool.call_tool("fx", "pid")) == pid
            assert pool.stats()["fx"].restarts == 0

    run(main())


def test_max_concurrency_bounds_the_calls_in_flight_per_server() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("fx", max_concurrency=2)]) as pool:
            await pool.call_tool("fx", "echo")
            started = time.monotonic()
            await asyncio.gather(
                *(pool.call_tool("fx", "sleep", {"seconds": 0.25}) for _ in range(6))
            )
            assert time.monotonic() - started >= 0.7  # three rounds of two

    run(main())


@needs_proc
def test_aclose_leaves_no_process_behind_not_even_a_servers_child() -> None:
    async def main() -> tuple[list[int], list[int]]:
        pool = MCPConnectionPool([fixture("a"), fixture("b"), fixture("c")])
        pids = []
        grandchildren = []
        for name in ("a", "b", "c"):
            pids.append(int(text(await pool.call_tool(name, "pid"))))
            grandchildren.append(int(text(await pool.call_tool(name, "spawn_child"))))
        assert all(map(alive, pids + grandchildren))
        started = time.monotonic()
        await pool.aclose()
        assert time.monotonic() - started < 8.0
        for name in ("a", "b", "c"):
            assert pool.state(name) is ServerState.CLOSED
        with pytest.raises(PoolClosedError):
            await pool.call_tool("a", "echo")
        await pool.aclose()  # idempotent
        return pids, grandchildren

    pids, grandchildren = run(main())
    # SIGKILL is delivered by then; the kernel takes a moment to finish the processes off.
    run(eventually(lambda: not any(map(alive, pids + grandchildren)), within=2.0))
    assert all(group_members(pid) == [] for pid in pids)
    assert children() == []


def test_the_environment_is_the_configs_plus_a_safe_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIXRT_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("LANG", "C.UTF-8")

    async def main() -> None:
        config = fixture("fx", env={"GREETING": "hello"})
        async with MCPConnectionPool([config]) as pool:

            async def env(name: str) -> str:
                return text(await pool.call_tool("fx", "env", {"name": name}))

            assert await env("GREETING") == "hello"
            assert await env("HELIXRT_TEST_SECRET") == ""
            assert await env("LANG") == "C.UTF-8"
            assert await env("PATH") == os.environ["PATH"]

    run(main())


def test_list_tools_qualifies_names_across_servers() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("a"), fixture("b")]) as pool:
            own = [tool.name for tool in await pool.list_tools("a")]
            assert own == ["echo", "sleep", "pid", "env", "spawn_child"]
            everything = [tool.name for tool in await pool.list_tools()]
            assert everything == [f"a__{n}" for n in own] + [f"b__{n}" for n in own]
            session = await pool.get_session("b")
            assert (await session.list_tools()).tools[0].name == "echo"

    run(main())


def test_events_are_published_on_the_bus() -> None:
    async def main() -> None:
        bus = Bus()
        config = fixture("fx", timeouts=Timeouts(call=0.2))
        async with MCPConnectionPool([config], bus=bus) as pool:
            await pool.call_tool("fx", "echo", {"text": "x"})
            with pytest.raises(ToolTimeoutError):
                await pool.call_tool("fx", "sleep", {"seconds": 2})
            await pool.close("fx")
            assert pool.state("fx") is ServerState.PENDING
        assert bus.topics() == [
            "mcp.server.connected",
            "mcp.server.health.changed",
            "mcp.tool.executed",
            "mcp.tool.failed",
            "mcp.server.disconnected",
        ]
        assert all(source == "mcp_pool" for _, _, source in bus.events)
        by_topic = {topic: payload for topic, payload, _ in bus.events}
        assert by_topic["mcp.server.connected"]["server"] == "fx"
        assert by_topic["mcp.tool.executed"]["tool"] == "echo"
        assert "ToolTimeoutError" in by_topic["mcp.tool.failed"]["error"]
        assert by_topic["mcp.server.disconnected"]["reason"] == "close"

    run(main())


def test_eager_servers_start_with_the_pool_and_warmup_starts_others() -> None:
    async def main() -> None:
        async with MCPConnectionPool([fixture("warm", eager=True), fixture("cold")]) as pool:
            await asyncio.wait_for(_until_connected(pool, "warm"), 10)
            assert pool.state("cold") is ServerState.PENDING
            await pool.warmup(["cold"])
            assert pool.state("cold") is ServerState.CONNECTED

    run(main())


async def _until_connected(pool: MCPConnectionPool, name: str) -> None:
    while pool.state(name) is not ServerState.CONNECTED:
        await asyncio.sleep(0.02)


class FakePreinstaller:
    """What the pool needs of a Preinstaller: `ensure` then `launch`."""

    def __init__(self, fail: bool = False) -> None:
        self.ensured: list[str] = []
        self.fail = fail

    async def ensure(self, name: str) -> None:
        self.ensured.append(name)
        await asyncio.sleep(0.05)
        if self.fail:
            raise RuntimeError("npm ERR! 404 Not Found - helixrt-no-such-package")

    def launch(self, server: ServerConfig) -> ServerConfig:
        return ServerConfig(
            name=server.name,
            transport="stdio",
            command=sys.executable,
            args=(FIXTURE,),
            env={"INSTALLED": "yes"},
        )


def test_the_preinstaller_is_awaited_and_its_launch_used() -> None:
    async def main() -> None:
        unrunnable = ServerConfig(name="pkg", transport="stdio", command="/not/installed/yet")
        installer = FakePreinstaller()
        async with MCPConnectionPool([unrunnable], preinstaller=installer) as pool:  # type: ignore[arg-type]
            await asyncio.gather(*(pool.call_tool("pkg", "echo") for _ in range(5)))
            result = await pool.call_tool("pkg", "env", {"name": "INSTALLED"})
            assert text(result) == "yes"
            assert installer.ensured == ["pkg"]
        broken = FakePreinstaller(fail=True)
        async with MCPConnectionPool([unrunnable], preinstaller=broken) as pool:  # type: ignore[arg-type]
            with pytest.raises(ServerStartError, match="404 Not Found"):
                await pool.call_tool("pkg", "echo")
            assert pool.state("pkg") is ServerState.FAILED

    run(main())


# --- real servers ---------------------------------------------------------------------------------

REAL_ROOT = os.environ.get("HELIXRT_MCP_TEST_ROOT")
needs_real = pytest.mark.skipif(
    not REAL_ROOT,
    reason="set HELIXRT_MCP_TEST_ROOT to a Preinstaller root holding the real MCP servers "
    "(`make test` installs them); the fixture-server tests above still ran",
)
REAL_SERVERS = {
    "memory": ["-y", "@modelcontextprotocol/server-memory@2026.8.31"],
    "filesystem": ["-y", "@modelcontextprotocol/server-filesystem@2026.8.31"],
    "everything": ["-y", "@modelcontextprotocol/server-everything@2026.8.31"],
}


def real_config(tmp_path: Path) -> dict[str, ServerConfig]:
    files = tmp_path / "files"
    files.mkdir()
    servers: dict[str, Any] = {
        name: {"command": "npx", "args": args} for name, args in REAL_SERVERS.items()
    }
    servers["memory"]["env"] = {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")}
    servers["filesystem"]["args"] = [*servers["filesystem"]["args"], str(files)]
    servers["time"] = {"command": "uvx", "args": ["mcp-server-time==2026.10.19"]}
    return load_config({"mcpServers": servers})


async def real_pool(tmp_path: Path) -> tuple[MCPConnectionPool, Any]:
    from helixrt.mcp.preinstall import Preinstaller

    servers = real_config(tmp_path)
    installer = Preinstaller(root=REAL_ROOT, packages=servers, offline=True)
    return MCPConnectionPool(servers, preinstaller=installer), installer


@needs_real
def test_real_servers_answer_through_the_pool(tmp_path: Path) -> None:
    async def main() -> None:
        pool, installer = await real_pool(tmp_path)
        async with installer, pool:
            await asyncio.gather(*(pool.warmup([name]) for name in pool.servers))
            created = await pool.call_tool(
                "memory",
                "create_entities",
                {"entities": [{"name": "Ada", "entityType": "person", "observations": ["math"]}]},
            )
            assert not created.is_error
            graph = await pool.call_tool("memory", "read_graph", {})
            assert "Ada" in text(graph)
            assert "Ada" in (tmp_path / "memory.jsonl").read_text()

            target = tmp_path / "files" / "note.txt"
            wrote = await pool.call_tool(
                "filesystem", "write_file", {"path": str(target), "content": "hello pool"}
            )
            assert not wrote.is_error, text(wrote)
            read = await pool.call_tool("filesystem", "read_file", {"path": str(target)})
            assert "hello pool" in text(read)

            echo = await pool.call_tool("everything", "echo", {"message": "hi"})
            assert text(echo) == "Echo: hi"
            total = await pool.call_tool("everything", "get-sum", {"a": 2, "b": 3})
            assert "5" in text(total)

            now = await pool.call_tool("time", "get_current_time", {"timezone": "UTC"})
            assert json.loads(text(now))["timezone"] == "UTC"

            names = {tool.name for tool in await pool.list_tools()}
            assert {"memory__read_graph", "everything__echo", "time__get_current_time"} <= names
            pids = [stats.pid for stats in pool.stats().values()]
            assert all(pid is not None for pid in pids)
        await eventually(lambda: not any(alive(pid) for pid in pids if pid is not None), 2.0)

    run(main())


@needs_real
@needs_proc
def test_a_killed_real_server_is_restarted_and_keeps_its_data(tmp_path: Path) -> None:
    async def main() -> None:
        pool, installer = await real_pool(tmp_path)
        async with installer, pool:
            entity = {"name": "Grace", "entityType": "person", "observations": ["cobol"]}
            await pool.call_tool("memory", "create_entities", {"entities": [entity]})
            pid = pool.stats()["memory"].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            # Once the pool has seen the exit (at once: stdout closes), the next call restarts.
            await eventually(lambda: pool.state("memory") is not ServerState.CONNECTED)
            graph = await pool.call_tool("memory", "read_graph", {})
            assert "Grace" in text(graph)
            assert pool.stats()["memory"].restarts == 1
        assert children() == []

    run(main())


@needs_real
def test_a_real_http_server_through_streamable_http(tmp_path: Path) -> None:
    """server-everything in its streamable-HTTP mode, started by the test (the pool only
    connects to HTTP servers); stopping it makes the next call fail fast, not hang."""
    import socket
    import subprocess

    from helixrt.mcp.preinstall import Preinstaller

    servers = real_config(tmp_path)
    installer = Preinstaller(root=REAL_ROOT, packages=servers, offline=True)
    command, args = installer.resolve("everything")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    server = subprocess.Popen(
        [command, *args, "streamableHttp"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "listening on port" in line:
                break
        config = ServerConfig(
            name="web",
            transport="http",
            url=f"http://127.0.0.1:{port}/mcp",
            headers={"X-Helixrt-Test": "1"},
            timeouts=Timeouts(connect=10, call=3),
        )

        async def main() -> None:
            async with MCPConnectionPool([config]) as pool:
                echo = await pool.call_tool("web", "echo", {"message": "over http"})
                assert text(echo) == "Echo: over http"
                assert pool.stats()["web"].pid is None  # not a process of the pool's
                assert await pool.health_check("web") == {"web": True}
                server.kill()
                server.wait()
                started = time.monotonic()
                with pytest.raises((ServerDisconnectedError, ToolTimeoutError, ServerStartError)):
                    await pool.call_tool("web", "echo", {"message": "gone"})
                assert time.monotonic() - started < 3 + 2

        run(main())
    finally:
        server.kill()
        server.wait()
        if server.stderr is not None:
            server.stderr.close()
