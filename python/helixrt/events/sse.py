"""Server-Sent Events: an aiohttp handler that streams a bus's events to HTTP clients, the
original's documented (and never built) `GET /v1/events/stream`."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from helixrt.errors import BusClosedError, EventTimeoutError, InvalidArgumentError

if TYPE_CHECKING:
    from helixrt.events import Event, EventBus

__all__ = ["sse_handler"]

# Seconds between looks at whether a quiet stream's client is still there.
_LOOK_AT_CLIENT = 0.5


def _data(event: Event) -> str:
    # A payload that JSON cannot carry is sent as its repr rather than failing the stream.
    return json.dumps(event.to_dict(), default=repr, separators=(",", ":"))


def sse_handler(
    bus: EventBus,
    pattern: str = ">",
    *,
    heartbeat: float = 15.0,
    buffer_size: int | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler streaming the events matching `pattern` (or the request's
    `?pattern=`) as `id:` / `event: <topic>` / `data: <json of Event.to_dict()>` records.

    Each client gets its own subscription; a slow client drops its oldest events rather than
    slowing the bus. A comment line every `heartbeat` seconds keeps idle connections open
    through proxies. The stream ends when the client goes away or the bus closes.
    """
    if heartbeat <= 0:
        raise InvalidArgumentError(
            f"heartbeat must be a positive number of seconds, got {heartbeat}"
        )

    async def handler(request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("pattern", pattern)
        try:
            sub = bus.subscribe(wanted, buffer_size=buffer_size, on_full="drop_oldest")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b": connected\n\n")
            quiet_since = time.monotonic()
            while True:
                try:
                    # Short waits: aiohttp does not cancel a handler when its client goes away,
                    # so the stream looks at the connection between waits.
                    event = await sub.get(timeout=min(heartbeat, _LOOK_AT_CLIENT))
                except EventTimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    if time.monotonic() - quiet_since >= heartbeat:
                        await response.write(b": ping\n\n")
                        quiet_since = time.monotonic()
                    continue
                except BusClosedError:
                    break
                quiet_since = time.monotonic()
                record = f"id: {event.id}\nevent: {event.topic}\ndata: {_data(event)}\n\n"
                await response.write(record.encode())
        except ConnectionResetError:
            pass  # the client went away (or aiohttp cancels the handler: that propagates)
        finally:
            sub.unsubscribe()
        return response

    return handler
