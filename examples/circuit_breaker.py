"""A circuit breaker in front of a flaky dependency."""

from __future__ import annotations

import asyncio

from helixrt import CircuitBreaker, CircuitOpenError

breaker = CircuitBreaker("llm-api", failure_threshold=3, reset_timeout=0.2)
breaker.add_listener(lambda b, old, new: print(f"{b.name}: {old} -> {new}"))


@breaker
async def complete(prompt: str, *, up: bool) -> str:
    if not up:
        raise ConnectionError("upstream refused the connection")
    return f"answer to {prompt!r}"


async def main() -> None:
    for _ in range(4):
        try:
            await complete("hi", up=False)
        except CircuitOpenError as err:
            print(f"refused without calling: retry in {err.retry_after:.2f} s")
        except ConnectionError as err:
            print("failed:", err)
    await asyncio.sleep(0.2)
    for _ in range(2):
        print(await complete("hi", up=True))
    print(breaker.stats())


asyncio.run(main())
