"""The Preinstaller with real packages from the real registries: @modelcontextprotocol/server-memory
from npm and mcp-server-time from PyPI, installed once per session into a temporary root, then
started (an MCP `initialize` over stdio answers); failures, offline installs, two processes at
once, cancellation, events and the `helixrt mcp install/status` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helixrt import topics
from helixrt.errors import HelixError
from helixrt.events import EventBus
from helixrt.mcp import InstallError, Preinstaller, ServerConfig, load_config
from helixrt.mcp.preinstall import DEFAULT_PACKAGES, PackageStatus

pytestmark = pytest.mark.integration

MEMORY = "npm:@modelcontextprotocol/server-memory@2026.8.31"
TIME = "pypi:mcp-server-time==2026.10.19"
MEMORY_DIR = "npm/@modelcontextprotocol+server-memory@2026.8.31"
TIME_DIR = "pypi/mcp-server-time@2026.10.19"
# An `initialize` request: whatever a resolved command starts must answer it.
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "helixrt-test", "version": "0"},
        },
    }
)


@dataclass
class Recorder:
    """A bus: remembers what is published."""

    events: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def publish(self, topic: str, payload: dict[str, Any], *, source: str) -> None:
        self.events.append((topic, payload, source))


@dataclass
class Installed:
    root: Path
    status: dict[str, PackageStatus]
    events: list[tuple[str, dict[str, Any], str]]
    installs: int
    install_seconds: float


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """server-memory (npm) and mcp-server-time (PyPI), installed into a fresh root."""
    root = tmp_path_factory.mktemp("mcp-root")
    recorder = Recorder()

    async def install() -> Installed:
        async with Preinstaller(root, [MEMORY, TIME], bus=recorder) as pre:
            started = time.monotonic()
            await pre.start()
            assert time.monotonic() - started < 0.5  # start() returns at once
            assert {s.state for s in pre.status().values()} <= {"queued", "installing"}
            status = await pre.wait_all()
            stats = pre.stats()
            return Installed(root, status, recorder.events, stats.installs, stats.install_seconds)

    return asyncio.run(install())


def answers_initialize(command: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Starts the server, sends `initialize`, and returns its serverInfo name."""
    result = subprocess.run(
        [command, *args],
        input=INITIALIZE + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **(env or {})},
    )
    reply = json.loads(result.stdout.splitlines()[0])
    assert reply["id"] == 1
    name = reply["result"]["serverInfo"]["name"]
    assert isinstance(name, str)
    return name


def files_under(root: Path, *, skip: tuple[str, ...] = (".locks",)) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def run_helixrt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helixrt", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


# --- installing -------------------------------------------------------------------------------


def test_installs_an_npm_and_a_pypi_package(installed: Installed) -> None:
    memory, time_ = (
        installed.status["@modelcontextprotocol/server-memory"],
        installed.status["mcp-server-time"],
    )
    assert memory.state == time_.state == "installed"
    assert (memory.error, time_.error) == (None, None)
    assert memory.path == str(installed.root / MEMORY_DIR)
    assert time_.path == str(installed.root / TIME_DIR)
    assert (memory.package, memory.ecosystem, memory.version) == (MEMORY, "npm", "2026.8.31")
    assert (time_.package, time_.ecosystem, time_.version) == (TIME, "pypi", "2026.10.19")
    for status in (memory, time_):
        assert status.duration is not None
        assert status.duration > 0
        assert status.log_path is not None
        assert Path(status.log_path).is_file()
    assert "npm install" in Path(memory.log_path or "").read_text()
    assert installed.installs == 2
    assert installed.install_seconds >= max(memory.duration or 0, time_.duration or 0)
    # Nothing temporary is left behind.
    assert list((installed.root / ".tmp").iterdir()) == []


def test_the_manifest_records_what_is_installed(installed: Installed) -> None:
    manifest = json.loads((installed.root / "manifest.json").read_text())
    memory = manifest["packages"][MEMORY]
    assert memory["spec"] == "@modelcontextprotocol/server-memory@2026.8.31"
    assert memory["version"] == "2026.8.31"
    assert memory["path"] == MEMORY_DIR
    assert memory["bin"] == (
        f"{MEMORY_DIR}/node_modules/@modelcontextprotocol/server-memory/dist/index.js"
    )
    assert memory["installed_at"].startswith("20")
    time_ = manifest["packages"][TIME]
    assert time_["path"] == TIME_DIR
    assert time_["bin"] == f"{TIME_DIR}/bin/mcp-server-time"
    for entry in (memory, time_):
        assert (installed.root / entry["bin"]).is_file()


def test_resolved_commands_start_the_servers(installed: Installed, tmp_path: Path) -> None:
    pre = Preinstaller(installed.root, [MEMORY, TIME])
    command, args = pre.resolve("@modelcontextprotocol/server-memory")
    assert Path(command).name == "node"
    assert args == [str(installed.root / json.loads((installed.root / "manifest.json").read_text())
                        ["packages"][MEMORY]["bin"])]  # fmt: skip
    env = {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")}
    assert answers_initialize(command, args, env) == "memory-server"

    command, args = pre.resolve("mcp-server-time")
    assert command == str(installed.root / TIME_DIR / "bin" / "python")
    assert args == [str(installed.root / TIME_DIR / "bin" / "mcp-server-time")]
    assert os.access(args[0], os.X_OK)
    assert answers_initialize(command, args) == "mcp-time"
    # Also by package key and spec.
    assert pre.resolve(TIME) == pre.resolve("mcp-server-time==2026.10.19") == (command, args)


def test_launch_runs_a_desktop_config_from_the_installed_copy(
    installed: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXRT_MCP_TEST_DIR", str(tmp_path))
    servers = load_config(Path(__file__).with_name("mcp_servers.json"))
    plain = ServerConfig("plain", "stdio", command="cat")
    pre = Preinstaller(installed.root, [servers["memory"], servers["time"], plain])
    assert set(pre.status()) == {"memory", "time"}  # plain needs no install
    assert pre.status()["memory"].state == "installed"

    memory = pre.launch(servers["memory"])
    assert memory.command is not None
    assert Path(memory.command).name == "node"
    assert memory.args[0].endswith("server-memory/dist/index.js")
    assert len(memory.args) == 1
    assert memory.env == servers["memory"].env
    assert answers_initialize(memory.command, list(memory.args), dict(memory.env)) == (
        "memory-server"
    )

    time_ = pre.launch(servers["time"])
    assert time_.args[1:] == ("--local-timezone", "UTC")
    assert time_.command is not None
    assert answers_initialize(time_.command, list(time_.args)) == "mcp-time"

    assert pre.launch(plain) is plain
    # A server whose package is not installed here: a clear error, not a silent npx.
    with pytest.raises(InstallError, match=r"server-everything@2026.8.31 is not installed"):
        pre.launch(servers["everything"])


def test_ensure_is_a_no_op_for_names_that_need_no_install(installed: Installed) -> None:
    async def check() -> None:
        plain = ServerConfig("plain", "stdio", command="cat")
        pre = Preinstaller(installed.root, [MEMORY, plain])
        await pre.ensure("plain")
        await pre.ensure("unknown-server")
        await pre.ensure("@modelcontextprotocol/server-memory")  # installed: returns at once
        assert pre.stats().installs == 0

    asyncio.run(check())


def test_a_second_start_is_instant(installed: Installed) -> None:
    log = installed.root / "logs" / "@modelcontextprotocol+server-memory@2026.8.31.log"
    before = log.stat().st_mtime_ns

    async def again() -> None:
        started = time.monotonic()
        pre = Preinstaller(installed.root, [MEMORY, TIME])
        assert {s.state for s in pre.status().values()} == {"installed"}
        await pre.start()
        statuses = await pre.wait_all()
        assert time.monotonic() - started < 1.0
        assert {s.state for s in statuses.values()} == {"installed"}
        stats = pre.stats()
        assert (stats.installs, stats.installed, stats.failed) == (0, 2, 0)

    asyncio.run(again())
    assert log.stat().st_mtime_ns == before  # npm did not run again


def test_events_are_published(installed: Installed) -> None:
    assert sorted(e[1]["package"] for e in installed.events) == [MEMORY, TIME]
    for topic, payload, source in installed.events:
        assert topic == topics.MCP_PACKAGE_INSTALLED == "mcp.package.installed"
        assert source == "mcp_preinstaller"
        assert payload["duration"] > 0
        assert Path(payload["log_path"]).is_file()
        assert "error" not in payload


def test_failures_reach_an_event_bus(tmp_path: Path) -> None:
    async def run() -> list[Any]:
        async with EventBus() as bus:
            sub = bus.subscribe("mcp.package.>")
            pre = Preinstaller(tmp_path, ["npm:helixrt-test-no-such-package-x9q@1.0.0"], bus=bus)
            await pre.wait_all()
            return [await sub.get(10)]

    [event] = asyncio.run(run())
    assert event.topic == topics.MCP_PACKAGE_FAILED
    assert event.payload["package"] == "npm:helixrt-test-no-such-package-x9q@1.0.0"
    assert "no such package" in event.payload["error"]


# --- failures leave nothing half-made ---------------------------------------------------------


def test_bad_names_and_unknown_versions_fail_clearly(tmp_path: Path) -> None:
    bad = {
        "no-package": "npm:@modelcontextprotocol/helixrt-no-such-server@1.0.0",
        "no-version": "npm:@modelcontextprotocol/server-memory@0.0.1",
        "no-pypi-version": "pypi:mcp-server-time==1999.1.1",
    }
    recorder = Recorder()

    async def run() -> dict[str, PackageStatus]:
        pre = Preinstaller(tmp_path, list(bad.items()), concurrency=3, bus=recorder)
        statuses = await pre.wait_all()
        for name in bad:
            with pytest.raises(InstallError):  # a recent failure: raised again at once
                await pre.ensure(name)
        assert pre.stats().failed == 3
        with pytest.raises(InstallError, match="is not installed"):
            pre.resolve("no-package")
        return statuses

    statuses = asyncio.run(run())
    assert {s.state for s in statuses.values()} == {"failed"}
    assert "the registry has no such package" in (statuses["no-package"].error or "")
    assert "the registry has no such version" in (statuses["no-version"].error or "")
    assert "no such package or version" in (statuses["no-pypi-version"].error or "")
    for status in statuses.values():
        assert status.error is not None
        assert status.package in status.error
        assert f"(log: {status.log_path})" in status.error
    # Nothing but the logs (and the lock files): no package directory, no temporary one.
    logs = {str(Path(s.log_path or "").relative_to(tmp_path)) for s in statuses.values()}
    assert files_under(tmp_path) == logs
    assert not (tmp_path / "npm").exists()
    assert not (tmp_path / "pypi").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert not (tmp_path / "manifest.json").exists()
    assert [e[0] for e in recorder.events] == [topics.MCP_PACKAGE_FAILED] * 3


def test_offline_installs_from_the_cache_and_fails_clearly_for_the_rest(
    installed: Installed, tmp_path: Path
) -> None:
    # server-memory is in the npm cache since the session's install; the other never was.
    missing = "npm:helixrt-test-never-published-x9q@1.0.0"

    async def run() -> dict[str, PackageStatus]:
        pre = Preinstaller(tmp_path, [MEMORY, missing], offline=True)
        return await pre.wait_all()

    statuses = asyncio.run(run())
    assert statuses["@modelcontextprotocol/server-memory"].state == "installed"
    failed = statuses["helixrt-test-never-published-x9q"]
    assert failed.state == "failed"
    assert "it is not in the npm cache, and installs are offline" in (failed.error or "")
    assert "--offline" in Path(failed.log_path or "").read_text()
    assert list((tmp_path / "npm").iterdir()) == [tmp_path / MEMORY_DIR]


def test_a_missing_node_is_explained(
    installed: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    async def run() -> None:
        pre = Preinstaller(tmp_path / "root", [MEMORY])
        with pytest.raises(InstallError) as info:
            await pre.ensure(MEMORY)
        message = str(info.value)
        assert "needs Node.js >= 18 with npm" in message
        assert "`node` is not on PATH" in message
        assert message.startswith(f"cannot install {MEMORY}: ")
        assert pre.status()["@modelcontextprotocol/server-memory"].state == "failed"

    asyncio.run(run())
    assert files_under(tmp_path / "root") == set()
    # Installed already, but nothing to run it with: resolve says so.
    with pytest.raises(InstallError, match="`node` is not on PATH"):
        Preinstaller(installed.root, [MEMORY]).resolve(MEMORY)


def test_a_timeout_kills_the_install_and_leaves_nothing(tmp_path: Path) -> None:
    async def run() -> PackageStatus:
        pre = Preinstaller(tmp_path, [MEMORY], timeout=0.3)
        return (await pre.wait_all())["@modelcontextprotocol/server-memory"]

    status = asyncio.run(run())
    assert status.state == "failed"
    assert "timed out after 0.3 s" in (status.error or "")
    assert not (tmp_path / "npm").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_aclose_cancels_an_install_cleanly(tmp_path: Path) -> None:
    async def run() -> dict[str, PackageStatus]:
        pre = Preinstaller(tmp_path, ["npm:@modelcontextprotocol/server-everything@2026.8.31"])
        await pre.start()
        await asyncio.sleep(0.5)
        assert {s.state for s in pre.status().values()} == {"installing"}
        await pre.aclose()
        with pytest.raises(InstallError, match="closed"):
            await pre.start()
        return pre.status()

    statuses = asyncio.run(run())
    assert {s.state for s in statuses.values()} == {"absent"}
    assert not (tmp_path / "npm").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert not (tmp_path / "manifest.json").exists()
    # The npm process was killed with its group: nothing still writes under the root.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


# --- processes sharing a root -----------------------------------------------------------------

TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from helixrt.mcp import Preinstaller

    async def main():
        pre = Preinstaller(sys.argv[1], [sys.argv[2]])
        status = await pre.wait_all()
        state = next(iter(status.values())).state
        print(json.dumps({"state": state, "installs": pre.stats().installs,
                          "resolve": pre.resolve(sys.argv[2])}))

    asyncio.run(main())
    """
)


def test_two_processes_installing_at_once_install_once(
    installed: Installed, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(root), MEMORY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    assert [r["state"] for r in results] == ["installed", "installed"]
    assert sorted(r["installs"] for r in results) == [0, 1]
    assert results[0]["resolve"] == results[1]["resolve"]
    log = (root / "logs" / "@modelcontextprotocol+server-memory@2026.8.31.log").read_text()
    assert log.count("$ ") == 1  # one npm install
    assert list((root / ".tmp").iterdir()) == []
    assert list(json.loads((root / "manifest.json").read_text())["packages"]) == [MEMORY]


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "memory": {
                        "command": "npx",
                        "args": ["-y", "@modelcontextprotocol/server-memory@2026.8.31"],
                    },
                    "time": {"command": "uvx", "args": ["mcp-server-time==2026.10.19"]},
                    "remote": {"url": "http://127.0.0.1:9/mcp"},
                    "broken": {"command": "npx", "args": ["-y", "helixrt-no-such-pkg-x9q@1.0.0"]},
                }
            }
        )
    )
    return path


def test_cli_install_and_status(installed: Installed, cli_config: Path) -> None:
    root = str(installed.root)
    done = run_helixrt("mcp", "install", "--config", str(cli_config), "--root", root,
                       "--only", "memory", "--only", "time")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.split()[:2] == ["memory", "installed"] for line in lines)
    assert any(line.split()[:2] == ["time", "installed"] for line in lines)
    assert "0 failed" in lines[-1]

    status = run_helixrt("mcp", "status", "--config", str(cli_config), "--root", root)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert set(rows) == {"memory", "time", "broken"}  # "remote" installs nothing
    assert rows["memory"][1] == rows["time"][1] == "installed"
    assert str(installed.root / MEMORY_DIR) in rows["memory"]
    assert rows["broken"][1] == "absent"


def test_cli_install_fails_with_a_non_zero_status(tmp_path: Path, cli_config: Path) -> None:
    done = run_helixrt("mcp", "install", "--config", str(cli_config), "--root", str(tmp_path),
                       "--only", "broken")  # fmt: skip
    assert done.returncode == 1
    assert any(line.split()[:2] == ["broken", "failed"] for line in done.stderr.splitlines())
    assert "broken: installing npm:helixrt-no-such-pkg-x9q@1.0.0 failed" in done.stderr
    assert "the registry has no such package" in done.stderr

    unknown = run_helixrt("mcp", "install", "--config", str(cli_config), "--only", "nope")
    assert unknown.returncode == 2
    assert "no server named nope" in unknown.stderr

    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"mcpServers": {"x": {"command": "a", "argz": []}}}')
    invalid = run_helixrt("mcp", "status", "--config", str(bad_config))
    assert invalid.returncode == 1
    assert "server 'x', field 'argz': unknown field" in invalid.stderr


def test_cli_status_lists_the_default_set(tmp_path: Path) -> None:
    done = run_helixrt("mcp", "status", env={"HELIXRT_MCP_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"root {tmp_path}"
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == list(DEFAULT_PACKAGES)
    assert {r[1] for r in rows} == {"absent"}


def test_default_root_and_default_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HELIXRT_MCP_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert Preinstaller().root == tmp_path / "cache" / "helixrt" / "mcp"
    monkeypatch.setenv("HELIXRT_MCP_ROOT", str(tmp_path / "r"))
    pre = Preinstaller()
    assert pre.root == tmp_path / "r"
    assert {name: s.package for name, s in pre.status().items()} == {
        "filesystem": "npm:@modelcontextprotocol/server-filesystem@2026.8.31",
        "github": "npm:@modelcontextprotocol/server-github@2025.4.8",
        "memory": "npm:@modelcontextprotocol/server-memory@2026.8.31",
        "fetch": "pypi:mcp-server-fetch==2026.10.24",
        "puppeteer": "npm:@modelcontextprotocol/server-puppeteer@2025.5.12",
        "sqlite": "pypi:mcp-server-sqlite==2025.4.25",
    }
    assert Preinstaller(tmp_path / "x").root == tmp_path / "x"


def test_bad_arguments() -> None:
    with pytest.raises(HelixError, match="concurrency"):
        Preinstaller(packages=[MEMORY], concurrency=0)
    with pytest.raises(ValueError, match="exact version"):
        Preinstaller(packages=["npm:@modelcontextprotocol/server-memory"])
    with pytest.raises(HelixError, match="packages are specs"):
        Preinstaller(packages=[42])


def test_cli_tools_and_call_run_the_installed_servers(installed: Installed, tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    memory_args = ["-y", "@modelcontextprotocol/server-memory@2026.8.31"]
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "memory": {
                        "command": "npx",
                        "args": memory_args,
                        "env": {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")},
                    },
                    "time": {"command": "uvx", "args": ["mcp-server-time==2026.10.19"]},
                }
            }
        )
    )
    where = ("--config", str(config), "--root", str(installed.root))
    tools = run_helixrt("mcp", "tools", "memory", *where)
    assert tools.returncode == 0, tools.stderr
    names = {line.split()[0] for line in tools.stdout.splitlines()}
    assert {"create_entities", "read_graph", "search_nodes"} <= names

    call = run_helixrt("mcp", "call", "time", "get_current_time", '{"timezone": "UTC"}', *where)
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["timezone"] == "UTC"

    missing = run_helixrt("mcp", "call", "time", "no_such_tool", "{}", *where)
    assert missing.returncode == 1
    assert "no_such_tool" in missing.stdout + missing.stderr

    not_json = run_helixrt("mcp", "call", "time", "get_current_time", "{timezone", *where)
    assert not_json.returncode == 2
    assert "not JSON" in not_json.stderr
