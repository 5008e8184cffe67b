"""The event bus: wildcard subscriptions, plain and coroutine handlers, readers, trace ids.

(The broken handler's traceback is also logged, on stderr, by the `helixrt.events` logger.)
"""

from __future__ import annotations

import asyncio

from helixrt import Event, EventBus, topics
from helixrt.events import trace_context

seen_by_thread: list[str] = []


def count(event: Event) -> None:  # a plain function: runs on a dispatcher thread
    seen_by_thread.append(event.topic)


async def main() -> None:
    async with EventBus(history=100) as bus:

        async def on_cache(event: Event) -> None:  # a coroutine: runs on this event loop
            print("cache event:", event.topic, event.payload)

        bus.subscribe("cache.>", on_cache)
        bus.subscribe(">", count)
        bus.subscribe("request.*", lambda event: 1 / 0)  # broken: reported, delivery goes on
        completed = bus.subscribe("request.completed")  # no handler: read it
        errors = bus.subscribe(topics.SYSTEM_ERROR)

        with trace_context("req-42"):
            bus.publish(topics.CACHE_MISS, {"key": "prompt:1"}, source="cache")
            bus.publish(topics.REQUEST_COMPLETED, {"status": 200}, source="gateway")
        event = await completed.get(timeout=1)
        print("read:", event.topic, event.payload, "trace", event.trace_id)
        error = await errors.get(timeout=1)
        print("reported:", repr(error.payload["error"]), "on", error.payload["event"].topic)
        print("kept:", [e.topic for e in bus.history("request.>")])
    print("seen by the plain handler:", seen_by_thread)
    stats = bus.stats()
    print(f"published={stats.published} delivered={stats.delivered} dropped={stats.dropped}")


asyncio.run(main())
