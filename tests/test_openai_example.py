"""examples/openai_provider.py against a local OpenAI-compatible server in another process
(tests/openai_server.py) and a real redis-server: JSON and streamed completions, the cache of
deterministic requests, retries with Retry-After counted on the server, the breaker opening on
persistent 5xx, a wrong key, and a clean close.

Each test runs its own event loop with `run()`, which fails the test when asyncio's exception
handler saw anything; warnings are errors (pyproject), so an "Unclosed client session" found by
`gc.collect()` fails the test too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from helixrt import CircuitOpenError, RetryPolicy
from helixrt.http import HTTPPool
from helixrt.tiered import TieredCache

pytestmark = pytest.mark.integration

T = TypeVar("T")

HANG = 10.0  # seconds: a bound that only a hang exceeds
ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).with_name("openai_server.py")
KEY = "sk-test-7f3a9c"
RETRIES = (429, 500, 502, 503, 504)
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "openai_provider", ROOT / "examples" / "openai_provider.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The root URL of a fresh tests/openai_server.py process on a free loopback port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), str(port), KEY])
    try:
        deadline = time.monotonic() + HANG
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"openai_server.py exited with status {process.returncode}")
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


@pytest.fixture(autouse=True)
def no_planned_failures(server: str) -> Iterator[None]:
    yield
    control(server, "POST", "/_reset")


def control(server: str, method: str, path: str) -> Any:
    request = urllib.request.Request(server + path, method=method)
    with urllib.request.urlopen(request, timeout=HANG) as answer:
        return json.loads(answer.read())


def count(server: str) -> int:
    """The requests the server got on /v1/chat/completions so far (every attempt)."""
    result: int = control(server, "GET", "/_count")["count"]
    return result


def fail_next(server: str, n: int, status: int, retry_after: str | None = None) -> None:
    query = f"n={n}&status={status}" + (f"&retry_after={retry_after}" if retry_after else "")
    control(server, "POST", f"/_fail?{query}")


def provider(server: str, *, key: str = KEY, **options: Any) -> Any:
    options.setdefault("retry", RetryPolicy(max_attempts=3, base_delay=0.0, retry_statuses=RETRIES))
    return example.ChatProvider(f"{server}/v1", key, "test-model", **options)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    reported: list[dict[str, Any]] = []

    async def watched() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        return await asyncio.wait_for(main(), HANG * 2)

    result = asyncio.run(watched())
    gc.collect()
    assert reported == []
    return result


# ------------------------------------------------------------------------------ completions


def test_complete_returns_the_chat_completion(server: str) -> None:
    async def main() -> None:
        before = count(server)
        async with provider(server) as chat:
            answer = await chat.complete(HELLO, max_tokens=20)
            assert count(server) == before + 1
        assert answer["object"] == "chat.completion"
        assert answer["model"] == "test-model"
        assert answer["choices"][0]["message"] == {
            "role": "assistant",
            "content": "Echo: hello there",
            "refusal": None,
        }
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}

    run(main)


def test_deterministic_requests_are_cached_and_others_are_not(server: str, redis_url: str) -> None:
    namespace = f"oa{uuid.uuid4().hex[:8]}:"

    async def main() -> None:
        async with (
            TieredCache(redis_url, namespace=namespace) as cache,
            provider(server, cache=cache) as chat,
        ):
            before = count(server)
            first = await chat.complete(HELLO, temperature=0)
            assert count(server) == before + 1
            assert await chat.complete(HELLO, temperature=0) == first
            assert count(server) == before + 1  # from the cache: not sent
            assert cache.stats().l1_hits == 1
            # Another request (other messages, other params) is another key.
            other = [{"role": "user", "content": "something else"}]
            answer = await chat.complete(other, temperature=0)
            assert answer["choices"][0]["message"]["content"] == "Echo: something else"
            await chat.complete(HELLO, temperature=0, max_tokens=5)
            assert count(server) == before + 3
            # Not deterministic (explicitly, or by the API's default temperature of 1).
            await chat.complete(HELLO, temperature=0.7)
            await chat.complete(HELLO, temperature=0.7)
            await chat.complete(HELLO)
            assert count(server) == before + 6
        # Another instance (another process, as far as Redis knows) finds it in Redis.
        async with (
            TieredCache(redis_url, namespace=namespace) as cache,
            provider(server, cache=cache) as chat,
        ):
            before = count(server)
            assert await chat.complete(HELLO, temperature=0) == first
            assert count(server) == before
            assert cache.stats().l2_hits == 1
            await cache.clear()

    run(main)


def test_the_cache_key_is_stable_and_tells_requests_apart() -> None:
    key = example._cache_key
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert key(a) == key(reordered)
    assert key(a).startswith("chat:m:")
    assert key(a) != key({**a, "model": "n"})
    assert key(a) != key({**a, "max_tokens": 5})
    assert key(a) != key({**a, "messages": [{"role": "user", "content": "hi!"}]})


def test_the_origin_names_the_port_as_the_pool_does() -> None:
    assert HTTPPool.origin("https://api.openai.com/v1") == "https://api.openai.com:443"
    assert HTTPPool.origin("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert HTTPPool.origin("http://[::1]/v1") == "http://[::1]:80"


def test_stream_yields_the_deltas_in_order(server: str) -> None:
    async def main() -> None:
        async with provider(server) as chat:
            full = (await chat.complete(HELLO))["choices"][0]["message"]["content"]
            before = count(server)
            deltas = [delta async for delta in chat.stream(HELLO, temperature=0)]
            assert deltas == ["Echo:", " hello", " there"]
            assert "".join(deltas) == full
            # The usage chunk (no choices) is skipped; streams are never cached.
            params = {"stream_options": {"include_usage": True}, "temperature": 0}
            deltas = [delta async for delta in chat.stream(HELLO, **params)]
            assert "".join(deltas) == full
            assert count(server) == before + 2

    run(main)


def test_sse_parsing_joins_data_lines_and_stops_at_done() -> None:
    lines = [
        b": a comment\n",
        b"event: message\n",
        b'data: {"choices": [{"delta":\n',
        b'data: {"content": "a"}}]}\n',
        b"\n",
        b'data:{"choices": [{"delta": {"content": "b"}}]}\r\n',
        b"\r\n",
        b"data: [DONE]\n",
        b"\n",
        b'data: {"choices": [{"delta": {"content": "after"}}]}\n',
        b"\n",
    ]

    async def body() -> Any:
        for line in lines:
            yield line

    async def main() -> list[Any]:
        return [event async for event in example._sse_events(body())]

    events = asyncio.run(main())
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["a", "b"]


# ------------------------------------------------------------------------------ failures


def test_503_with_retry_after_is_retried_after_the_wait(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with provider(server) as chat:
            before = count(server)
            fail_next(server, 2, 503, retry_after="0.3")
            started = time.monotonic()
            answer = await chat.complete(HELLO)
            elapsed = time.monotonic() - started
            assert answer["choices"][0]["message"]["content"] == "Echo: hello there"
            assert count(server) == before + 3
            assert elapsed >= 0.6  # the two waits the server asked for (base_delay is 0)
            stats = chat.stats()
            assert (stats.requests, stats.retries, stats.errors_status_5xx) == (1, 2, 2)
            # A stream is retried the same way: the status comes before the body.
            fail_next(server, 1, 429, retry_after="0")
            assert "".join([d async for d in chat.stream(HELLO)]) == "Echo: hello there"
            assert count(server) == before + 5
            # Out of attempts: the last answer is the error.
            fail_next(server, 3, 503, retry_after="0")
            with pytest.raises(example.ChatAPIError) as info:
                await chat.complete(HELLO)
            assert info.value.status == 503
            assert "The server is overloaded" in str(info.value)
            assert count(server) == before + 8

    with caplog.at_level(logging.DEBUG):
        run(main)
    assert any("retrying POST" in record.getMessage() for record in caplog.records)
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_persistent_500s_open_the_breaker_and_calls_fail_fast(server: str) -> None:
    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, base_delay=0.0, retry_statuses=RETRIES)
        options = {"failure_threshold": 3, "reset_timeout": 0.5, "success_threshold": 2}
        async with provider(server, retry=policy, breaker_options=options) as chat:
            before = count(server)
            fail_next(server, 1000, 500)
            with pytest.raises(example.ChatAPIError) as info:
                await chat.complete(HELLO)  # 2 attempts, 2 failures
            assert info.value.status == 500
            assert count(server) == before + 2
            with pytest.raises(CircuitOpenError):
                await chat.complete(HELLO)  # the 3rd failure opens it; the retry is refused
            assert count(server) == before + 3
            assert chat.stats().breaker_state == "open"
            with pytest.raises(CircuitOpenError):
                await chat.complete(HELLO)
            with pytest.raises(CircuitOpenError):
                await anext(chat.stream(HELLO))
            assert count(server) == before + 3  # refused without reaching the server
            assert chat.stats().rejected == 3
            # The host recovers; after reset_timeout the trial calls close the breaker.
            control(server, "POST", "/_reset")
            await asyncio.sleep(0.6)
            await chat.complete(HELLO)
            await chat.complete(HELLO)
            assert chat.stats().breaker_state == "closed"
            assert count(server) == before + 5

    run(main)


def test_a_wrong_key_is_a_clear_error_that_is_not_retried(server: str) -> None:
    async def main() -> None:
        async with provider(server, key="sk-wrong-123") as chat:
            before = count(server)
            with pytest.raises(example.ChatAPIError) as info:
                await chat.complete(HELLO)
            assert info.value.status == 401
            assert str(info.value) == (
                "chat completion failed with HTTP 401: Incorrect API key provided."
            )
            assert count(server) == before + 1
            with pytest.raises(example.ChatAPIError) as info:
                await anext(chat.stream(HELLO))
            assert info.value.status == 401
            assert count(server) == before + 2
            stats = chat.stats()
            assert (stats.retries, stats.errors_status_4xx, stats.breaker_state) == (
                0,
                2,
                "closed",  # a 4xx says the host is up
            )
            assert "sk-wrong-123" not in repr(chat)

    run(main)


# ------------------------------------------------------------------------------ lifetime


def test_aclose_leaves_nothing_open(server: str) -> None:
    def unclosed(caught: list[warnings.WarningMessage]) -> list[str]:
        return [str(w.message) for w in caught if "Unclosed" in str(w.message)]

    async def use(close: bool) -> None:
        chat = provider(server)
        assert chat.stats() is None  # no pool before the first request
        await chat.complete(HELLO)
        async with contextlib.aclosing(chat.stream(HELLO)) as deltas:
            async for _ in deltas:
                break  # a stream left early releases its connection too
        assert chat.stats().in_flight == 0
        if close:
            await chat.aclose()
            assert chat.stats() is None
            await chat.aclose()  # idempotent

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(use(close=True))
        gc.collect()
    assert unclosed(caught) == []
    # The check can fail: the same use without aclose() leaves the session open.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(use(close=False))
        gc.collect()
    assert unclosed(caught) != []
