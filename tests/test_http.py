"""HTTPPool against a real aiohttp server in another process (tests/http_server.py): retries
counted on the server, POST and idempotency, Retry-After, 4xx, the breaker per host (open, no
request, half-open, closed), timeouts, streaming, the per-host and pool-wide limits counted on
the server, session reuse, clean close (no warnings, no open connectors), stats, logging and
bad arguments.

Each test runs its own event loop with `run()`, which fails the test when asyncio's exception
handler saw anything; warnings are errors (pyproject), so an "Unclosed client session" or an
unclosed socket found by `gc.collect()` fails the test too.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from helixrt.errors import CircuitOpenError, HelixError, InvalidArgumentError, PoolClosedError
from helixrt.events import EventBus
from helixrt.http import HostStats, HTTPPool, HTTPStats
from helixrt.retries import RetryPolicy

T = TypeVar("T")

HANG = 10.0  # seconds: a bound that only a hang exceeds
SERVER = Path(__file__).with_name("http_server.py")
FAST = RetryPolicy(max_attempts=3, base_delay=0.0)  # retries without waiting


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The URL of a fresh tests/http_server.py process on a free loopback port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), str(port)])
    try:
        deadline = time.monotonic() + HANG
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"http_server.py exited with status {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HANG) as answer:
        return json.loads(answer.read())


def count(base: str, path: str) -> int:
    """How many requests the server got on `path`."""
    result: int = server_get(f"{base}/count{path}")["count"]
    return result


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    reported: list[dict[str, Any]] = []

    async def watched() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        return await asyncio.wait_for(main(), HANG * 2)

    result = asyncio.run(watched())
    gc.collect()
    assert reported == []
    return result


# ------------------------------------------------------------------------------ basics


def test_get_json_reuses_one_session_per_host_and_closes_it(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(headers={"X-Test": "hello"}) as pool:
            assert await pool.get_json(f"{base}/ok/basic") == {
                "ok": True,
                "method": "GET",
                "x_test": "hello",
            }
            session = pool.session(base)
            assert pool.session(base) is session
            assert pool.session(base + "/") is session  # another spelling, the same origin
            assert pool.session(base.replace("127.0.0.1", "127.0.0.1")) is session
            assert await pool.post_json(f"{base}/ok/basic", json={"a": 1}) == {
                "ok": True,
                "method": "POST",
                "x_test": "hello",
            }
            connector = session.connector
            assert connector is not None
            assert pool.stats().sessions == 1
        assert pool.closed
        assert session.closed
        assert connector.closed
        await pool.aclose()  # idempotent
        with pytest.raises(PoolClosedError):
            pool.request("GET", f"{base}/ok")
        with pytest.raises(PoolClosedError):
            pool.session("http://127.0.0.1:1")

    run(main)
    assert count(base, "/ok/basic") == 2


def test_one_session_per_origin(base: str) -> None:
    other = base.replace("127.0.0.1", "localhost")

    async def main() -> None:
        async with HTTPPool() as pool:
            await pool.get_json(f"{base}/ok/origins")
            await pool.get_json(f"{other}/ok/origins")
            assert pool.session(base) is not pool.session(other)
            stats = pool.stats()
            assert stats.sessions == 2
            assert set(stats.hosts) == {base + "", other}
            assert stats.requests == 2

    run(main)


def test_aclose_without_async_with_leaves_nothing_open(base: str) -> None:
    async def main() -> list[aiohttp.ClientSession]:
        pool = HTTPPool()
        sessions = []
        for host in (base, base.replace("127.0.0.1", "localhost")):
            async with pool.request("GET", f"{host}/ok/close") as response:
                assert response.status == 200
            sessions.append(pool.session(host))
        await pool.aclose()
        return sessions

    sessions = run(main)  # gc.collect() there would turn an unclosed session into an error
    assert all(s.closed for s in sessions)
    assert all(s.connector is None or s.connector.closed for s in sessions)


# ------------------------------------------------------------------------------ retries


def test_retryable_status_is_retried_exactly_max_attempts_times(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST.replace(max_attempts=4), breaker_per_host=False) as pool:
            async with pool.request("GET", f"{base}/status/503/r1") as response:
                assert response.status == 503  # the last answer, after the retries
            with pytest.raises(aiohttp.ClientResponseError) as info:
                await pool.get_json(f"{base}/status/502/r2")
            assert info.value.status == 502
            stats = pool.stats()
            assert (stats.requests, stats.retries, stats.errors_status_5xx) == (2, 6, 8)

    run(main)
    assert count(base, "/status/503/r1") == 4
    assert count(base, "/status/502/r2") == 4


def test_status_not_in_retry_statuses_is_not_retried(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST) as pool:
            with pytest.raises(aiohttp.ClientResponseError) as info:
                await pool.get_json(f"{base}/status/500/r3")
            assert info.value.status == 500
            # The message quotes the start of the body, where an API says why, and no more.
            assert info.value.message == 'Internal Server Error: {"status": 500}'
            with pytest.raises(aiohttp.ClientResponseError) as info:
                await pool.post_json(f"{base}/refused", json={"model": "nope"})
            assert info.value.message.startswith("Bad Request: model not found xxx")
            assert len(info.value.message) == len("Bad Request: ") + 512
            assert pool.stats().in_flight == 0

    run(main)
    assert count(base, "/status/500/r3") == 1


def test_post_is_retried_only_when_idempotent(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST, breaker_per_host=False) as pool:
            with pytest.raises(aiohttp.ClientResponseError):
                await pool.post_json(f"{base}/status/503/p1", json={"n": 1})
            with pytest.raises(aiohttp.ClientResponseError):
                await pool.post_json(f"{base}/status/503/p2", json={"n": 1}, idempotent=True)
            assert await pool.post_json(f"{base}/flaky/2/p3", json={}, idempotent=True) == {
                "ok": True,
                "attempt": 3,
            }
            # A connection dropped before the answer: POST once, GET per the policy.
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with pool.request("POST", f"{base}/reset/p4", data=b"x"):
                    pass
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with pool.request("GET", f"{base}/reset/p5"):
                    pass
            assert pool.stats().errors_connect == 1 + 3

    run(main)
    assert count(base, "/status/503/p1") == 1
    assert count(base, "/status/503/p2") == 3
    assert count(base, "/flaky/2/p3") == 3
    assert count(base, "/reset/p4") == 1
    assert count(base, "/reset/p5") == 3


def test_a_flaky_endpoint_succeeds_after_retries(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST) as pool:
            assert await pool.get_json(f"{base}/flaky/2/f1") == {"ok": True, "attempt": 3}
            host = pool.stats().hosts[base]
            assert isinstance(host, HostStats)
            assert (host.requests, host.retries, host.errors_status_5xx) == (1, 2, 2)
            assert host.breaker_state == "closed"

    run(main)


def test_retry_after_is_honoured_and_capped(base: str) -> None:
    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, base_delay=0.0, max_retry_after=0.05)
        async with HTTPPool(retry=policy.replace(max_retry_after=5.0)) as pool:
            started = time.monotonic()
            assert (await pool.get_json(f"{base}/flaky/1/ra1?retry_after=0.4"))["ok"]
            assert time.monotonic() - started >= 0.4
        async with HTTPPool(retry=policy) as pool:
            started = time.monotonic()
            assert (await pool.get_json(f"{base}/flaky/1/ra2?retry_after=3600"))["ok"]
            assert time.monotonic() - started < HANG / 2  # capped at 0.05 s, not an hour

    run(main)
    assert count(base, "/flaky/1/ra1") == 2
    assert count(base, "/flaky/1/ra2") == 2


def test_retries_stop_at_the_policys_total_timeout(base: str) -> None:
    async def main() -> None:
        policy = RetryPolicy(max_attempts=10, base_delay=0.0, total_timeout=0.5)
        url = f"{base}/flaky/5/tt?retry_after=0.3"
        async with HTTPPool(retry=policy) as pool, pool.request("GET", url) as response:
            assert response.status == 503  # the wait after the 2nd would pass 0.5 s

    run(main)
    assert count(base, "/flaky/5/tt") == 2


def test_4xx_is_neither_retried_nor_a_breaker_failure(base: str) -> None:
    async def main() -> None:
        options = {"failure_threshold": 2}
        async with HTTPPool(retry=FAST, breaker_options=options) as pool:
            for _ in range(5):
                with pytest.raises(aiohttp.ClientResponseError) as info:
                    await pool.get_json(f"{base}/status/404/x1")
                assert info.value.status == 404
            breaker = pool.breaker(base)
            assert breaker is not None
            assert breaker.state == "closed"
            stats = pool.stats()
            assert (stats.errors_status_4xx, stats.retries, stats.rejected) == (5, 0, 0)

    run(main)
    assert count(base, "/status/404/x1") == 5


def test_timeouts_are_retried_and_counted(base: str) -> None:
    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, base_delay=0.0)
        async with HTTPPool(retry=policy, read_timeout=0.2, breaker_per_host=False) as pool:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.get_json(f"{base}/slow-headers/t1?delay=2")
            assert time.monotonic() - started < 1.5  # two 0.2 s attempts, not a 2 s wait
            stats = pool.stats()
            assert (stats.errors_timeout, stats.retries) == (2, 1)

    run(main)
    assert count(base, "/slow-headers/t1") == 2


def test_connection_errors_are_retried_and_open_the_breaker(base: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, base_delay=0.0)
        options = {"failure_threshold": 4, "reset_timeout": 30.0}
        async with HTTPPool(retry=policy, breaker_options=options) as pool:
            for _ in range(2):
                with pytest.raises(aiohttp.ClientConnectorError):
                    await pool.get_json(f"{dead}/ok")
            assert pool.stats().hosts[dead].errors_connect == 4
            with pytest.raises(CircuitOpenError) as info:
                await pool.get_json(f"{dead}/ok")
            assert info.value.breaker == f"http:{dead}"
            host = pool.stats().hosts[dead]
            assert (host.errors_connect, host.rejected, host.breaker_state) == (4, 1, "open")
            # Another origin has its own breaker.
            assert (await pool.get_json(f"{base}/ok/other"))["ok"]
            assert pool.stats().hosts[base].breaker_state == "closed"

    run(main)


# ------------------------------------------------------------------------------ breaker


def test_breaker_opens_refuses_without_a_request_then_half_opens_and_closes(base: str) -> None:
    async def main() -> None:
        options = {"failure_threshold": 3, "reset_timeout": 0.2, "success_threshold": 2}
        policy = RetryPolicy(max_attempts=1)
        bus = EventBus(history=20)
        async with HTTPPool(retry=policy, breaker_options=options, bus=bus) as pool:
            breaker = pool.breaker(base)
            assert breaker is not None
            assert breaker is pool.breaker(base)
            assert breaker.name == f"http:{base}"
            for _ in range(3):
                async with pool.request("GET", f"{base}/status/500/b1") as response:
                    assert response.status == 500
            assert breaker.state == "open"
            with pytest.raises(CircuitOpenError):
                async with pool.request("GET", f"{base}/status/500/b1"):
                    pass
            with pytest.raises(CircuitOpenError):
                await pool.get_json(f"{base}/ok/b1")
            assert count(base, "/status/500/b1") == 3  # nothing reached the server
            assert count(base, "/ok/b1") == 0
            assert pool.stats().hosts[base].rejected == 2

            await asyncio.sleep(0.25)
            assert breaker.state == "half_open"
            async with pool.request("GET", f"{base}/status/500/b1"):
                pass  # one failed trial opens it again
            assert breaker.state == "open"
            with pytest.raises(CircuitOpenError):
                await pool.get_json(f"{base}/ok/b1")

            await asyncio.sleep(0.25)
            assert (await pool.get_json(f"{base}/ok/b1"))["ok"]
            assert breaker.state == "half_open"
            assert (await pool.get_json(f"{base}/ok/b1"))["ok"]
            assert breaker.state == "closed"
            assert pool.stats().hosts[base].breaker_state == "closed"
        changes = [(e.payload["old"], e.payload["new"]) for e in bus.history("breaker.>")]
        assert changes == [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
        ]
        assert {e.payload["breaker"] for e in bus.history()} == {f"http:{base}"}
        await bus.aclose()

    run(main)
    assert count(base, "/status/500/b1") == 4
    assert count(base, "/ok/b1") == 2


def test_retried_5xx_attempts_each_count_as_breaker_failures(base: str) -> None:
    async def main() -> None:
        options = {"failure_threshold": 3}
        async with HTTPPool(retry=FAST.replace(max_attempts=5), breaker_options=options) as pool:
            # Three 503s open the breaker; the fourth attempt is refused, not sent.
            with pytest.raises(CircuitOpenError):
                await pool.get_json(f"{base}/status/503/b2")

    run(main)
    assert count(base, "/status/503/b2") == 3


def test_a_request_cancelled_while_waiting_for_a_slot_gives_its_trial_back(base: str) -> None:
    other = base.replace("127.0.0.1", "localhost")

    async def main() -> None:
        options = {
            "failure_threshold": 1,
            "reset_timeout": 0.1,
            "half_open_max_calls": 1,
            "success_threshold": 1,
        }
        policy = RetryPolicy(max_attempts=1)
        async with HTTPPool(limit=1, retry=policy, breaker_options=options) as pool:
            with pytest.raises(aiohttp.ClientResponseError):
                await pool.get_json(f"{base}/status/500/c1")
            breaker = pool.breaker(base)
            assert breaker is not None
            await asyncio.sleep(0.15)
            assert breaker.state == "half_open"
            busy = asyncio.create_task(pool.get_json(f"{other}/slow-headers/c2?delay=0.3"))
            await asyncio.sleep(0.05)  # `busy` holds the pool's only slot
            waiting = asyncio.create_task(pool.get_json(f"{base}/ok/c3"))
            await asyncio.sleep(0.05)  # `waiting` took the only trial, and waits for the slot
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await busy == {"ok": True}
            assert (await pool.get_json(f"{base}/ok/c3"))["ok"]  # the trial was given back
            assert breaker.state == "closed"

    run(main)
    assert count(base, "/ok/c3") == 1


def test_without_breakers_5xx_never_opens_anything(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=RetryPolicy(max_attempts=1), breaker_per_host=False) as pool:
            for _ in range(8):
                async with pool.request("GET", f"{base}/status/500/b3") as response:
                    assert response.status == 500
            assert pool.breaker(base) is None
            assert pool.stats().hosts[base].breaker_state is None

    run(main)
    assert count(base, "/status/500/b3") == 8


# ------------------------------------------------------------------------------ streaming


def test_a_long_stream_is_not_cut_and_a_total_timeout_does_cut_it(base: str) -> None:
    url = f"{base}/stream?chunks=8&interval=0.1"

    async def main() -> None:
        async with HTTPPool(read_timeout=0.5) as pool:
            lines = []
            async with pool.request("GET", url) as response:
                async for line in response.content:
                    lines.append(line)
            assert lines == [f"chunk {i}\n".encode() for i in range(8)]
        async with HTTPPool(read_timeout=0.5, total_timeout=0.3) as pool:
            with pytest.raises(TimeoutError):  # the control: the same stream, cut
                async with pool.request("GET", url) as response:
                    await response.read()
            assert pool.stats().errors_timeout == 1

    run(main)


def test_a_connection_closed_mid_body_raises_and_is_not_retried(base: str) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST) as pool:

            async def read() -> bytes:
                async with pool.request("GET", f"{base}/reset/m1?mode=body") as response:
                    assert response.status == 200
                    return await response.read()

            with pytest.raises(aiohttp.ClientPayloadError):
                await read()
            stats = pool.stats()
            assert (stats.errors_connect, stats.in_flight) == (1, 0)
            assert (await pool.get_json(f"{base}/ok/m1"))["ok"]  # the pool still works

    run(main)
    assert count(base, "/reset/m1") == 1


# ------------------------------------------------------------------------------ limits


def reset_concurrency(base: str) -> None:
    """Waits until the server is idle (handlers of earlier tests may still run after their
    client left: /reset sleeps after closing the connection), then zeroes its maxima."""
    deadline = time.monotonic() + HANG
    while True:
        now = server_get(f"{base}/concurrency")
        if now["in_flight"] == 0 and now["connections"] <= 1:  # 1: this very request
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.02)
    request = urllib.request.Request(f"{base}/concurrency/reset", method="POST")
    with urllib.request.urlopen(request, timeout=HANG):
        pass


def test_limit_per_host_bounds_connections_counted_on_the_server(base: str) -> None:
    reset_concurrency(base)

    async def main() -> None:
        async with HTTPPool(limit_per_host=5) as pool:
            url = f"{base}/slow-headers/l1?delay=0.02"
            results = await asyncio.gather(*(pool.get_json(url) for _ in range(200)))
            assert all(r == {"ok": True} for r in results)
            assert pool.stats().in_flight == 0

    run(main)
    assert count(base, "/slow-headers/l1") == 200
    seen = server_get(f"{base}/concurrency")
    assert seen["max_in_flight"] == 5  # reached, never passed
    assert 1 <= seen["max_connections"] <= 5
    assert 1 <= seen["peers"] <= 5  # connections were reused, not reopened


def test_pool_wide_limit_bounds_requests_across_hosts(base: str) -> None:
    reset_concurrency(base)
    other = base.replace("127.0.0.1", "localhost")

    async def main() -> None:
        async with HTTPPool(limit=3, limit_per_host=10) as pool:
            urls = [f"{host}/slow-headers/l2?delay=0.02" for host in (base, other)] * 30
            await asyncio.gather(*(pool.get_json(url) for url in urls))

    run(main)
    assert count(base, "/slow-headers/l2") == 60
    assert server_get(f"{base}/concurrency")["max_in_flight"] == 3


def test_stats_are_frozen_snapshots_with_latencies(base: str) -> None:
    async def main() -> None:
        async with HTTPPool() as pool:
            assert pool.stats().requests == 0
            assert pool.stats().latency_p99_seconds == 0.0
            for _ in range(5):
                await pool.get_json(f"{base}/slow-headers/s1?delay=0.01")
            stats = pool.stats()
            assert isinstance(stats, HTTPStats)
            with pytest.raises(AttributeError):
                stats.requests = 0  # type: ignore[misc]
            host = stats.hosts[base]
            assert host.requests == stats.requests == 5
            assert 0.01 <= host.latency_mean_seconds <= host.latency_p99_seconds < HANG
            assert stats.latency_p99_seconds == host.latency_p99_seconds
            await pool.get_json(f"{base}/ok/s1")
            assert stats.requests == 5  # a snapshot
            assert pool.stats().requests == 6

    run(main)


# ------------------------------------------------------------------------------ logging


def test_retries_are_logged_without_query_strings_or_headers(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with HTTPPool(retry=FAST, headers={"Authorization": "Bearer HEADER-SECRET"}) as pool:
            await pool.get_json(f"{base}/flaky/1/log1?token=QUERY-SECRET&retry_after=0")

    with caplog.at_level(logging.DEBUG, logger="helixrt.http"):
        run(main)
    assert "retrying GET" in caplog.text
    assert "/flaky/1/log1" in caplog.text
    assert "SECRET" not in caplog.text
    assert all(r.name.startswith("helixrt.http") for r in caplog.records)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit_per_host": 0}, "limit_per_host"),
        ({"limit_per_host": "5"}, "limit_per_host"),
        ({"keepalive_timeout": 0}, "keepalive_timeout"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"read_timeout": float("nan")}, "read_timeout"),
        ({"read_timeout": True}, "read_timeout"),
        ({"total_timeout": 0}, "total_timeout"),
        ({"retry": 3}, "retry"),
        ({"breaker_per_host": 1}, "breaker_per_host"),
        ({"dns_cache_ttl": -1}, "dns_cache_ttl"),
        ({"dns_cache_ttl": None}, "dns_cache_ttl"),
        ({"headers": [("a", "b")]}, "headers"),
        ({"breaker_options": {"failure_threshold": 0}}, "failure_threshold"),
        ({"breaker_options": {"nope": 1}}, "breaker_options"),
    ],
)
def test_bad_constructor_arguments_are_named(options: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidArgumentError, match=name) as info:
        HTTPPool(**options)
    assert isinstance(info.value, HelixError)
    assert isinstance(info.value, ValueError)


def test_good_edge_arguments_are_accepted() -> None:
    HTTPPool(limit=1, limit_per_host=1, dns_cache_ttl=0, total_timeout=None, headers={})


def test_bad_request_arguments_are_named(base: str) -> None:
    async def main() -> None:
        async with HTTPPool() as pool:
            for url in ("/ok", "ok", "127.0.0.1:8080/ok", "//127.0.0.1/ok"):
                with pytest.raises(InvalidArgumentError, match="url"):
                    pool.request("GET", url)
            with pytest.raises(InvalidArgumentError, match="scheme"):
                pool.request("GET", "ftp://127.0.0.1/file")
            with pytest.raises(InvalidArgumentError, match="url"):
                pool.request("GET", 42)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="method"):
                pool.request("", f"{base}/ok")
            with pytest.raises(InvalidArgumentError, match="idempotent"):
                pool.request("POST", f"{base}/ok", idempotent="yes")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="relative"):
                await pool.get_json("/ok")
            for host in (f"{base}/path", f"{base}/?q=1", "localhost"):
                with pytest.raises(InvalidArgumentError, match="host"):
                    pool.session(host)
            assert pool.stats().sessions == 0  # nothing was opened by the bad calls

    run(main)


def test_lazy_name() -> None:
    import helixrt

    assert helixrt.HTTPPool is HTTPPool


def test_a_request_slot_handed_to_a_cancelled_waiter_passes_on() -> None:
    from helixrt.http import _Slots

    async def main() -> None:
        slots = _Slots(1)
        assert slots.take_now()
        first = asyncio.ensure_future(slots.take())
        second = asyncio.ensure_future(slots.take())
        await asyncio.sleep(0)
        slots.give()  # the slot goes to `first`...
        first.cancel()  # ...which is cancelled before it resumes
        await asyncio.gather(first, return_exceptions=True)
        assert first.cancelled()
        await asyncio.wait_for(second, 1)  # so the slot passed on
        assert slots.free == 0
        slots.give()
        assert slots.free == 1
        assert slots.take_now()

    asyncio.run(main())


def test_origin_and_breaker_take_any_url_of_the_host(base: str) -> None:
    async def main() -> None:
        async with HTTPPool() as pool:
            assert HTTPPool.origin(f"{base}/v1/chat?x=1") == base
            assert pool.breaker(f"{base}/v1/chat") is pool.breaker(base)
            with pytest.raises(InvalidArgumentError, match="absolute"):
                HTTPPool.origin("/relative")
            with pytest.raises(InvalidArgumentError, match=r"str or a yarl\.URL"):
                HTTPPool.origin(3)  # type: ignore[arg-type]

    run(main)
