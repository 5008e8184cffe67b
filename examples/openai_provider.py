"""An OpenAI-compatible chat-completion provider on helixrt: HTTPPool, Lazy, CircuitBreaker and
TieredCache together.

`ChatProvider` makes its HTTPPool on first use (a `Lazy`), sends through the pool's retry policy
(429 and 5xx retried, `Retry-After` honoured) and the breaker of the API's host (5xx and
connection errors open it; then calls fail fast with `CircuitOpenError`), and keeps the answers
to deterministic requests (temperature 0) in a TieredCache. It does not do tools, function
calling, images or token counting.

Run it against any OpenAI-compatible server (it starts none itself):
`OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=... python examples/openai_provider.py`
(`REDIS_URL`, if set, puts a Redis behind the cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

from helixrt import HTTPPool, Lazy, RetryPolicy
from helixrt.http import HostStats
from helixrt.tiered import TieredCache

Message = Mapping[str, Any]

# POST is not retried by default (a request may have been acted on). Here the server refused it
# (429) or failed it (5xx), and a chat completion has no side effects: retrying is safe.
DEFAULT_RETRY = RetryPolicy(max_attempts=3, retry_statuses=(429, 500, 502, 503, 504))


class ChatAPIError(Exception):
    """The API answered with an error status (after the retries). `status` is the HTTP
    status; the message is the API's own `error.message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"chat completion failed with HTTP {status}: {message}")
        self.status = status


class ChatProvider:
    """`ChatProvider(base_url, api_key, model, *, cache=None, cache_ttl=3600.0, retry=...,
    breaker_options=None, read_timeout=60.0)`

    - `base_url`: the API root, as the OpenAI SDK takes it ("https://api.openai.com/v1").
    - `cache`: a TieredCache for the answers to deterministic requests (temperature 0), kept
      `cache_ttl` seconds; the caller owns it (and closes it).
    - `retry`, `breaker_options`: the HTTPPool's policy and its per-host breaker's options.

    `await complete(messages, **params)` returns the chat.completion object; `async for delta in
    stream(messages, **params)` yields the content as it arrives. Errors: `ChatAPIError` (an
    error status), `CircuitOpenError` (the host is failing; not sent), aiohttp's connection
    errors. Close with `await aclose()` or `async with`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        cache: TieredCache | None = None,
        cache_ttl: float = 3600.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        breaker_options: Mapping[str, Any] | None = None,
        read_timeout: float = 60.0,
    ) -> None:
        self._origin = HTTPPool.origin(base_url)
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._pool = Lazy(
            lambda: HTTPPool(
                retry=retry,
                breaker_options=breaker_options,
                read_timeout=read_timeout,
                # The key lives in the pool's headers only: helixrt never logs headers.
                headers={"Authorization": f"Bearer {api_key}"},
            )
        )

    def __repr__(self) -> str:  # no key in reprs (they end up in logs and tracebacks)
        return f"ChatProvider({self._url!r}, model={self._model!r})"

    async def complete(self, messages: Sequence[Message], **params: Any) -> dict[str, Any]:
        """The chat.completion for `messages`; `params` are the API's (temperature, max_tokens,
        ...). Served from the cache when the request is deterministic and was made before."""
        body = self._body(messages, params)
        if self._cache is None or params.get("temperature", 1) != 0:
            return await self._post(body)
        result: dict[str, Any] = await self._cache.get_or_set(
            _cache_key(body), lambda: self._post(body), ttl=self._cache_ttl
        )
        return result

    async def stream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[str]:
        """The content deltas of a streamed completion, in order (never cached). To stop
        early, iterate in `contextlib.aclosing(...)`: the connection is released then."""
        body = {**self._body(messages, params), "stream": True}
        pool = await self._pool.aget()
        async with pool.request("POST", self._url, json=body, idempotent=True) as response:
            await _raise_for_status(response)
            async for event in _sse_events(response.content):
                for choice in event.get("choices", ()):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        yield content

    def stats(self) -> HostStats | None:
        """The pool's counters for the API host (requests, retries, rejected, breaker_state),
        or None before the first request."""
        if not self._pool.initialized:
            return None
        return self._pool.get().stats().hosts.get(self._origin)

    async def aclose(self) -> None:
        if self._pool.initialized:
            await self._pool.get().aclose()
            self._pool.reset()

    async def __aenter__(self) -> ChatProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _body(self, messages: Sequence[Message], params: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": self._model, "messages": [dict(m) for m in messages], **params}

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        pool = await self._pool.aget()
        async with pool.request("POST", self._url, json=body, idempotent=True) as response:
            await _raise_for_status(response)
            result: dict[str, Any] = await response.json()
            return result


def _cache_key(body: Mapping[str, Any]) -> str:
    """A stable key for (model, messages, params): the same request always gives the same key,
    in any process (sorted keys, no whitespace, then SHA-256)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"chat:{body['model']}:{hashlib.sha256(canonical.encode()).hexdigest()}"


async def _raise_for_status(response: Any) -> None:
    if response.status < 400:
        return
    text = await response.text()
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:200] or response.reason or ""
    raise ChatAPIError(response.status, message)


async def _sse_events(lines: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a Server-Sent Events body, up to `data: [DONE]`: the `data:` lines
    of an event are joined, a blank line ends it; comments and other fields are ignored."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            payload = "\n".join(data)
            data.clear()
            if payload == "[DONE]":
                return
            yield json.loads(payload)


async def main() -> None:
    base_url = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    api_key = os.environ.get("OPENAI_API_KEY", "sk-test")
    model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
    messages = [{"role": "user", "content": "Say hello in five words."}]
    async with (
        TieredCache(os.environ.get("REDIS_URL"), namespace="openai-example:") as cache,
        ChatProvider(base_url, api_key, model, cache=cache) as chat,
    ):
        for _ in range(2):  # the second one comes from the cache
            answer = await chat.complete(messages, temperature=0)
            print(answer["choices"][0]["message"]["content"], answer["usage"])
        async for delta in chat.stream(messages, temperature=0.7):
            print(delta, end="", flush=True)
        print(f"\n{chat.stats()}\n{cache.stats()}")


if __name__ == "__main__":
    asyncio.run(main())
