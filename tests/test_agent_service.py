"""examples/agent_service.py run as a user runs it: a subprocess on a free loopback port, with
examples/agent_service.toml, a local OpenAI-compatible server (tests/openai_server.py, another
process), a real redis-server behind the cache, and real MCP servers (`time` from PyPI,
`everything` from npm) launched from the Preinstaller root `make mcp-servers` fills.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HANG = 20.0  # seconds: a bound that only a hang exceeds
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "agent_service.py"
CONFIG = ROOT / "examples" / "agent_service.toml"
OPENAI_SERVER = Path(__file__).with_name("openai_server.py")
KEY = "sk-agent-5e1d"
HAS_PROC = Path("/proc/self/task").is_dir()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(process: subprocess.Popen[Any], port: int, what: str) -> None:
    deadline = time.monotonic() + HANG
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(process: subprocess.Popen[Any]) -> tuple[int, str, str]:
    """SIGTERM, then the exit status and what the process wrote (its pipes closed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out or "", err or ""


def http(
    url: str, method: str = "GET", body: Any = None, *, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HANG) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post_json(url: str, body: Any) -> tuple[int, Any]:
    status, _, raw = http(url, "POST", body)
    return status, json.loads(raw)


def get_json(url: str) -> tuple[int, Any]:
    status, _, raw = http(url)
    return status, json.loads(raw)


@pytest.fixture(scope="module")
def mcp_root() -> str:
    root = os.environ.get("HELIXRT_MCP_TEST_ROOT")
    if not root:
        pytest.fail(
            "HELIXRT_MCP_TEST_ROOT is not set: run `make mcp-servers` (it installs the MCP "
            "servers of tests/mcp_servers.json into .cache/mcp), then set "
            "HELIXRT_MCP_TEST_ROOT=.cache/mcp, or run the tests with `make test`"
        )
    return root


@pytest.fixture(scope="module")
def openai_server() -> Iterator[str]:
    """The root URL of a fresh tests/openai_server.py process."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(OPENAI_SERVER), str(port), KEY])
    try:
        wait_for_port(process, port, "openai_server.py")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def chat_requests(openai_server: str) -> int:
    return int(get_json(openai_server + "/_count")[1]["count"])


@dataclass
class Service:
    url: str
    process: subprocess.Popen[str]
    audit_log: Path
    stopped: tuple[int, str, str] | None = None

    def stop(self) -> tuple[int, str, str]:
        if self.stopped is None:
            self.stopped = stop(self.process)
        return self.stopped


@pytest.fixture
def start_service(
    openai_server: str, redis_url: str, mcp_root: str, tmp_path: Path
) -> Iterator[Callable[[], Service]]:
    """Starts examples/agent_service.py as its README says; stops what it started."""
    started: list[Service] = []

    def start() -> Service:
        port = free_port()
        audit_log = tmp_path / f"audit-{port}.jsonl"
        env = {
            **os.environ,
            "OPENAI_BASE_URL": openai_server + "/v1",
            "OPENAI_API_KEY": KEY,
            "OPENAI_MODEL": "test-model",
            "HELIXRT_CACHE_L2_URL": redis_url,
            # A namespace of its own: nothing cached by another run answers for this one.
            "HELIXRT_CACHE_L2_KEY_PREFIX": f"agent-{uuid.uuid4().hex[:8]}:",
            "HELIXRT_MCP_ROOT": mcp_root,
        }
        env.pop("HELIXRT_OPS_TOKEN", None)
        command = [sys.executable, str(EXAMPLE), "--config", str(CONFIG), "--port", str(port)]
        process = subprocess.Popen(
            [*command, "--audit-log", str(audit_log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        service = Service(f"http://127.0.0.1:{port}", process, audit_log)
        started.append(service)
        wait_for_port(process, port, "agent_service.py")
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(start_service: Callable[[], Service]) -> Service:
    return start_service()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {HANG} s: {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ chat


def test_chat_answers_and_a_repeated_deterministic_chat_comes_from_the_cache(
    service: Service, openai_server: str
) -> None:
    prompt = f"hello {uuid.uuid4().hex[:6]}"
    before = chat_requests(openai_server)
    status, first = post_json(service.url + "/chat", {"prompt": prompt})
    assert status == 200, first
    assert first["answer"] == f"Echo: {prompt}"
    assert first["cached"] is False
    assert first["model"] == "test-model"
    assert chat_requests(openai_server) == before + 1
    status, again = post_json(service.url + "/chat", {"prompt": prompt})
    assert status == 200
    assert again == {**first, "cached": True}
    assert chat_requests(openai_server) == before + 1  # not sent: from the cache
    # The same conversation as messages is the same request, so the same cache entry.
    messages = [{"role": "user", "content": prompt}]
    status, same = post_json(service.url + "/chat", {"messages": messages, "temperature": 0})
    assert (status, same["cached"]) == (200, True)
    # Not deterministic: never cached, sent each time.
    for _ in range(2):
        status, hot = post_json(service.url + "/chat", {"prompt": prompt, "temperature": 0.7})
        assert (status, hot["cached"], hot["answer"]) == (200, False, f"Echo: {prompt}")
    assert chat_requests(openai_server) == before + 3
    # The entry is in Redis too: the ops endpoint's performance numbers show the L2 write.
    _, performance = get_json(service.url + "/ops/v1/metrics/performance")
    assert performance["cache"]["l2_enabled"] is True
    assert performance["cache"]["l1_hits"] >= 2


def test_a_bad_chat_request_is_a_json_400(service: Service) -> None:
    status, body = post_json(service.url + "/chat", {"messages": "hi"})
    assert status == 400
    assert '"prompt"' in body["error"]
    status, _, raw = http(service.url + "/chat", "POST", None)
    assert status == 400
    assert json.loads(raw) == {"error": "the body must be a JSON object"}
    status, _, raw = http(service.url + "/no/such/route")
    assert (status, json.loads(raw)) == (404, {"error": "Not Found"})


# ------------------------------------------------------------------------------ tools


def test_a_tool_call_returns_the_tools_text(service: Service) -> None:
    status, echo = post_json(service.url + "/tools/everything/echo", {"message": "hi there"})
    assert status == 200, echo
    assert echo == {
        "server": "everything",
        "tool": "echo",
        "is_error": False,
        "text": "Echo: hi there",
    }
    status, now = post_json(service.url + "/tools/time/get_current_time", {"timezone": "UTC"})
    assert status == 200, now
    assert json.loads(now["text"])["timezone"] == "UTC"
    status, listed = get_json(service.url + "/tools/time")
    assert status == 200
    assert "get_current_time" in {tool["name"] for tool in listed["tools"]}
    # A tool that failed is an answer (is_error), an unknown server a 404.
    status, missing = post_json(service.url + "/tools/everything/no_such_tool", {})
    assert status == 200
    assert missing["is_error"] is True
    assert "no_such_tool" in missing["text"]
    status, unknown = post_json(service.url + "/tools/nowhere/echo", {})
    assert status == 404
    assert unknown["error"] == "no MCP server named 'nowhere' (configured: 'time', 'everything')"
    _, mcp = get_json(service.url + "/ops/v1/mcp/status")
    assert mcp["servers"]["everything"]["state"] == "connected"
    assert mcp["servers"]["everything"]["calls"] == 2


# ------------------------------------------------------------------------------ ops, background


def test_ops_endpoints_answer_under_ops(service: Service) -> None:
    post_json(service.url + "/chat", {"prompt": "warm the cache"})
    post_json(service.url + "/chat", {"prompt": "warm the cache"})
    status, health = get_json(service.url + "/ops/health")
    assert status == 200
    assert health["status"] == "ok"
    assert health["started"] is True
    assert health["components"]["providers"]["providers"] == {"chat": "unknown"}
    assert health["components"]["cache"]["l2"] is True
    status, headers, metrics = http(service.url + "/ops/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = metrics.decode()
    assert "helixrt_cache_l1_hits_total 1.0" in text
    assert "helixrt_mcp_active_connections" in text
    assert "helixrt_worker_pool_completed_tasks_total" in text
    status, performance = get_json(service.url + "/ops/v1/metrics/performance")
    assert status == 200
    assert performance["http_pool"]["created"] is True
    assert performance["event_bus"]["events_by_topic"]["request.completed"] == 2


def test_background_work_counts_and_logs_every_request(service: Service) -> None:
    post_json(service.url + "/chat", {"prompt": "log me"})
    post_json(service.url + "/chat", {"prompt": "log me"})
    post_json(service.url + "/tools/everything/echo", {"message": "x"})
    post_json(service.url + "/tools/nowhere/echo", {})
    expected = {
        "chat": 2,
        "chat_sent": 1,
        "chat_cached": 1,
        "tool": 2,
        "tool_ok": 1,
        "tool_failed": 1,
    }
    eventually(lambda: get_json(service.url + "/stats")[1] == expected, "the counts")
    lines = [json.loads(line) for line in service.audit_log.read_text().splitlines()]
    assert [(e["kind"], e["outcome"]) for e in lines] == [
        ("chat", "sent"),
        ("chat", "cached"),
        ("tool", "ok"),
        ("tool", "failed"),
    ]
    assert lines[3]["error"].startswith("no MCP server named 'nowhere'")
    _, performance = get_json(service.url + "/ops/v1/metrics/performance")
    assert performance["worker_pool"]["completed"] >= 4


# ------------------------------------------------------------------------------ shutdown


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the child processes")
def test_shutdown_closes_the_runtime_and_leaves_no_child_process(
    start_service: Callable[[], Service],
) -> None:
    service = start_service()
    for server, tool, arguments in (
        ("everything", "echo", {"message": "x"}),
        ("time", "get_current_time", {"timezone": "UTC"}),
    ):
        status, body = post_json(f"{service.url}/tools/{server}/{tool}", arguments)
        assert status == 200, body
    _, mcp = get_json(service.url + "/ops/v1/mcp/status")
    servers = {name: s["pid"] for name, s in mcp["servers"].items()}
    assert set(servers) == {"everything", "time"}
    children = descendants(service.process.pid)
    assert all(pid in children for pid in servers.values())  # the check can see them
    assert all(alive(pid) for pid in children)
    started = time.monotonic()
    status, out, err = service.stop()
    assert status == 0, err
    assert time.monotonic() - started < HANG
    assert [pid for pid in children if alive(pid)] == []
    assert "agent service on http://127.0.0.1:" in out
    assert "Traceback" not in err
