"""The other process of the Redis bridge tests: a bus and a RedisBridge on the Redis at argv[1].

    python tests/bridge_peer.py REDIS_URL MODE SERIALIZER STREAM_PREFIX

It bridges "test.>", prints one JSON line per thing that happens on stdout, and takes commands,
one per line, on stdin:

- `publish PREFIX N TRACE`: publishes N events on `PREFIX.0` ... `PREFIX.{N-1}` in the trace
  TRACE, then prints {"published": [event dicts]}.
- `stats`: prints {"stats": the bridge's stats}.
- `quit` (or end of input): closes the bridge and the bus, prints {"closed": stats}, exits.

It prints {"ready": bridge id} once the bridge has started, and {"received": event dict} for
every event that reaches its bus from elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

from helixrt.events import Event, EventBus, trace_context
from helixrt.events.bridge import RedisBridge


def say(**what: Any) -> None:
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


def as_dict(event: Event) -> dict[str, Any]:
    return event.to_dict()


async def main(url: str, mode: str, serializer: str, stream_prefix: str) -> None:
    async with EventBus() as bus:
        incoming = bus.subscribe("test.>", filter=lambda e: "helixrt.bridge" in e.metadata)

        async def report() -> None:
            async for event in incoming:
                say(received=as_dict(event))

        reporter = asyncio.create_task(report())
        bridge = RedisBridge(
            bus,
            url,
            mode=mode,  # type: ignore[arg-type]
            serializer=serializer,  # type: ignore[arg-type]
            patterns=("test.>",),
            stream_prefix=stream_prefix,
        )
        await bridge.start()
        say(ready=bridge.id)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            command = line.split()
            if not command or command[0] == "quit":
                break
            if command[0] == "publish":
                prefix, count, trace = command[1], int(command[2]), command[3]
                published = []
                with trace_context(trace):
                    for i in range(count):
                        payload = {"i": i, "from": "peer", "list": [1, 2.5, None, "x"]}
                        event = bus.publish(f"{prefix}.{i}", payload, source="peer")
                        published.append(as_dict(event))
                say(published=published)
            elif command[0] == "stats":
                say(stats=dataclasses.asdict(bridge.stats()))
        await bridge.aclose()
        incoming.unsubscribe()
        await reporter
        say(closed=dataclasses.asdict(bridge.stats()))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
