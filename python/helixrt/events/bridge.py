"""The Redis bridge: carries an EventBus's events to the buses of other processes, and theirs
to it, through Redis (Streams by default, or Pub/Sub).

It does not make the bus durable or ordered across processes: each bus still delivers locally at
once, and events from other processes arrive when Redis hands them over. Only this module
imports redis and msgpack (`pip install helixrt[redis]`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import msgpack  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from helixrt import _core
from helixrt.errors import BusClosedError, HelixError, InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from types import TracebackType

    from helixrt.events import EventBus, Subscription

__all__ = ["BridgeStats", "RedisBridge", "RedisUnavailableError"]

log = logging.getLogger("helixrt.events")

Mode = Literal["streams", "pubsub"]
Serializer = Literal["msgpack", "json"]

ORIGIN_KEY = "helixrt.bridge"
"""The metadata key a bridge puts on the events it brings in: the id of the bridge that sent
them. A bridge never sends an event that carries it, so nothing is echoed back."""

# Outgoing events one pipeline carries; incoming entries one XREADGROUP asks for.
_SEND_BATCH = 64
_READ_COUNT = 100
# How long one XREADGROUP / get_message waits for something to arrive.
_READ_BLOCK = 1.0
# Retry delays while Redis is unreachable: doubling from the first to the cap, with jitter.
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 2.0
# Pages of XAUTOCLAIM (of _READ_COUNT entries) one claim round goes through at most.
_CLAIM_PAGES = 10
_ORIGIN_LEN = 32  # uuid4().hex: the prefix of a Pub/Sub message naming its sender


class RedisUnavailableError(HelixError, ConnectionError):
    """Redis could not be reached when the bridge started (later outages are retried)."""


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """A snapshot of a RedisBridge's counters (since it was made) and one gauge."""

    sent: int
    """Local events written to Redis."""
    received: int
    """Events from other processes published on the local bus."""
    send_errors: int
    """Failed attempts to write to Redis (each retry counts), and events that could not be
    encoded any more when their turn came (their payload changed after publish)."""
    receive_errors: int
    """Failed reads from Redis, and messages that were not events or that the local bus
    refused."""
    pending: int
    """Local events waiting to be written to Redis (after aclose: those it gave up on)."""


class _Backoff:
    """Capped exponential delays with jitter, for retrying while Redis is away."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = _BACKOFF_FIRST

    def reset(self) -> None:
        self._next = _BACKOFF_FIRST

    def delay(self) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, _BACKOFF_CAP)
        return delay


class _Unserializable(Exception):
    def __init__(self, value: object) -> None:
        super().__init__(type(value).__qualname__)
        self.type_name = type(value).__qualname__


def _refuse(value: object) -> Any:
    raise _Unserializable(value)


def _pack_msgpack(data: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True, default=_refuse)
    return packed


def _unpack_msgpack(data: bytes | str) -> Any:
    if isinstance(data, str):
        raise TypeError("a msgpack message arrived as text: the Redis client decodes responses")
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _pack_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=_refuse).encode()


def _unpack_json(data: bytes | str) -> Any:
    return json.loads(data)


_CODECS: dict[str, tuple[Callable[[dict[str, Any]], bytes], Callable[[bytes | str], Any]]] = {
    "msgpack": (_pack_msgpack, _unpack_msgpack),
    "json": (_pack_json, _unpack_json),
}


def _text(value: bytes | str | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _escape_glob(text: str) -> str:
    """`text` as a literal in a PSUBSCRIBE pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _stream_entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) entries of an XREADGROUP reply, in either of redis-py's shapes (a list
    of [stream, entries] pairs, or a dict of stream to entries or to [entries])."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, Mapping) else (r[1] for r in reply)
    entries: list[tuple[Any, Any]] = []
    for value in streams:
        if value and isinstance(value[0], list):  # RESP3 dict shape: {stream: [entries]}
            value = value[0]
        entries.extend(value or ())
    return entries


class RedisBridge:
    """Bridges an EventBus to the buses of other processes through Redis.

    `RedisBridge(bus, redis, *, mode="streams", patterns=(">",), stream_prefix="helixrt:events:",
    group=None, serializer="msgpack", buffer_size=10_000, claim_after=30.0, maxlen=100_000)`

    - `redis`: a URL (the bridge makes its own client, and closes it) or a `redis.asyncio.Redis`
      that the caller owns and closes (with msgpack, one made with `decode_responses=False`).
    - `patterns`: which topics are bridged (NATS patterns, as for `subscribe`): local events on
      them go to Redis, and events from other processes on them come into this bus. An event is
      never sent back to the process it came from: the events a bridge brings in carry
      `metadata["helixrt.bridge"]` (the sending bridge's id), and no bridge sends those on.
    - `serializer`: "msgpack" (the default: bytes stay bytes) or "json" (tuples become lists).
      An event on a bridged topic that the serializer cannot encode is refused at publish:
      `bus.publish` raises InvalidTypeError (a TypeError) naming the topic and the type, and
      nobody, here or elsewhere, receives it.
    - `mode="streams"` (at least once): events go to the stream `{stream_prefix}stream` (trimmed
      to about `maxlen` entries), read through a consumer group and acknowledged once published
      on the local bus. `group=None` gives each bridge a group of its own (every process receives
      every event; the group is destroyed at aclose); processes sharing a `group="name"` split
      the events between them, and an event one of them published counts as handled by that one
      (its own subscribers had it). Entries left unacknowledged by a process that died are
      claimed by another member after `claim_after` seconds. If Redis loses the group (a restart
      without persistence), the bridge makes it again and reads the stream from its start.
    - `mode="pubsub"` (at most once): events are PUBLISHed on `{stream_prefix}{topic}`; a
      process receives only what is published while it is connected.
    - `buffer_size`: how many outgoing events wait for Redis at most; `claim_after`: seconds.

    While Redis is unreachable, in streams mode nothing is lost: outgoing events stay in the
    bridge's subscription on the bus, at most `buffer_size` of them (then `publish` waits for
    room, except on the bridge's own event loop, where the mailbox overfills rather than
    deadlock), and the sender retries with exponential backoff (capped at 2 s) until Redis is
    back, then sends them in order; the reader retries the same way. One warning is logged per
    outage, not one per retry. (In pubsub mode the same buffering applies to sending, but the
    other processes miss whatever was published while they were disconnected.)

    Start with `async with RedisBridge(...) as bridge:` or `await bridge.start()` (which
    returns once the bridge receives what other processes publish from then on), and stop with
    `await bridge.aclose()`, which sends what is buffered (for up to `timeout` seconds, 5 by
    default) and then releases everything. The bridge runs on the event loop that started it;
    `stats()` may be called from anywhere.
    """

    def __init__(
        self,
        bus: EventBus,
        redis: str | aioredis.Redis,
        *,
        mode: Mode = "streams",
        patterns: Iterable[str] | str = (">",),
        stream_prefix: str = "helixrt:events:",
        group: str | None = None,
        serializer: Serializer = "msgpack",
        buffer_size: int = 10_000,
        claim_after: float = 30.0,
        maxlen: int | None = 100_000,
    ) -> None:
        from helixrt.events import EventBus

        if not isinstance(bus, EventBus):
            raise InvalidTypeError(f"bus must be a helixrt EventBus, got {type(bus).__name__}")
        if mode not in ("streams", "pubsub"):
            raise InvalidArgumentError(f"mode must be 'streams' or 'pubsub', got {mode!r}")
        if serializer not in _CODECS:
            raise InvalidArgumentError(
                f"serializer must be 'msgpack' or 'json', got {serializer!r}"
            )
        self._patterns = _check_patterns(patterns)
        if not isinstance(stream_prefix, str) or not stream_prefix:
            raise InvalidArgumentError(
                f"stream_prefix must be a non-empty str, got {stream_prefix!r}"
            )
        if group is not None and (not isinstance(group, str) or not group):
            raise InvalidArgumentError(f"group must be a non-empty str or None, got {group!r}")
        if group is not None and mode == "pubsub":
            raise InvalidArgumentError(
                "group applies to mode='streams' only: Pub/Sub delivers every message to every "
                "subscriber"
            )
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise InvalidArgumentError(f"buffer_size must be at least 1, got {buffer_size!r}")
        if (
            isinstance(claim_after, bool)
            or not isinstance(claim_after, int | float)
            or not claim_after > 0
        ):
            raise InvalidArgumentError(
                f"claim_after must be a positive number of seconds, got {claim_after!r}"
            )
        if maxlen is not None and (
            isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1
        ):
            raise InvalidArgumentError(f"maxlen must be at least 1 or None, got {maxlen!r}")
        if isinstance(redis, str):
            self._url: str | None = redis
            self._client: aioredis.Redis | None = None
            self._where = _url_location(redis)
        elif isinstance(redis, aioredis.Redis):
            kwargs = redis.connection_pool.connection_kwargs
            if serializer == "msgpack" and kwargs.get("decode_responses"):
                raise InvalidArgumentError(
                    "this Redis client decodes responses (decode_responses=True), which breaks "
                    "msgpack's bytes: pass a client without it, a URL, or serializer='json'"
                )
            self._url = None
            self._client = redis
            self._where = _kwargs_location(kwargs)
        else:
            raise InvalidTypeError(
                f"redis must be a URL (str) or a redis.asyncio.Redis, got {type(redis).__name__}"
            )
        self._bus = bus
        self.id = uuid.uuid4().hex
        """This bridge's id: the `metadata["helixrt.bridge"]` of the events it sends."""
        self.mode: Mode = mode
        self.patterns = self._patterns
        self.stream = f"{stream_prefix}stream"
        self._channel_prefix = stream_prefix
        self.group = group if group is not None else f"helixrt-bridge-{self.id}"
        self._own_group = group is None
        self.serializer: Serializer = serializer
        self._encode, self._decode = _CODECS[serializer]
        self.buffer_size = buffer_size
        self.claim_after = float(claim_after)
        self.maxlen = maxlen

        self._state: Literal["new", "starting", "running", "closing", "closed"] = "new"
        self._sub: Subscription | None = None
        self._pubsub: Any = None  # redis.asyncio.client.PubSub, in pubsub mode
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        # Encoded by the filter (in the publisher), taken by the sender: one encoding per event.
        self._encoded: dict[str, bytes] = {}
        self._in_flight = 0
        self._reading = False
        self._down_since: float | None = None
        self._sent = 0
        self._received = 0
        self._send_errors = 0
        self._receive_errors = 0
        self._abandoned = 0

    # --- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connects, makes the consumer group (streams) or subscribes (pubsub), and starts
        bridging. Returns once events other processes publish from now on will arrive.
        Raises RedisUnavailableError when Redis cannot be reached. Idempotent while running."""
        if self._state in ("starting", "running"):
            return
        if self._state != "new":
            raise BusClosedError("this RedisBridge was closed: make a new one")
        self._state = "starting"
        try:
            if self._url is not None:
                self._client = _client_from_url(self._url)
            if self.mode == "streams":
                await self._create_group("$")
            else:
                self._pubsub = await self._subscribe_pubsub()
        except (RedisError, OSError) as exc:
            await self._release_redis()
            self._state = "closed"
            raise RedisUnavailableError(
                f"the Redis bridge could not reach Redis at {self._where}: {exc}"
            ) from exc
        except BaseException:
            await self._release_redis()
            self._state = "closed"
            raise
        try:
            self._sub = self._bus._subscribe_as(
                ">", None, self._filter, self.buffer_size, "block", True
            )
        except BaseException:  # the bus is closed, or has its max_subscribers already
            if self.mode == "streams" and self._own_group:
                await self._destroy_group()
            await self._release_redis()
            self._state = "closed"
            raise
        loop = asyncio.get_running_loop()
        self._state = "running"
        self._sender = loop.create_task(self._send_loop(), name=f"helixrt-bridge-send-{self.id}")
        read = self._read_streams() if self.mode == "streams" else self._read_pubsub()
        self._reader = loop.create_task(read, name=f"helixrt-bridge-read-{self.id}")
        log.debug(
            "Redis bridge %s started (%s at %s, patterns %s)",
            self.id,
            self.mode,
            self._where,
            self._patterns,
        )

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stops bridging: local events published from now on stay local; what is buffered is
        sent for up to `timeout` seconds (the rest is given up on and counted in `pending`);
        then the tasks stop, the subscription ends, an own consumer group is destroyed and an
        own client closed. Idempotent."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        deadline = time.monotonic() + timeout
        try:
            await self._drain(deadline)
            await self._stop_reader(deadline)
            if self._own_group and self.mode == "streams":
                await self._destroy_group()
            elif self.mode == "streams":
                await self._leave_group()
        finally:
            await self._release_redis()
            self._state = "closed"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def stats(self) -> BridgeStats:
        sub = self._sub
        if self._state == "closed":
            pending = self._abandoned
        else:
            pending = (sub.stats().pending if sub is not None else 0) + self._in_flight
        return BridgeStats(
            sent=self._sent,
            received=self._received,
            send_errors=self._send_errors,
            receive_errors=self._receive_errors,
            pending=pending,
        )

    def __repr__(self) -> str:
        return (
            f"<RedisBridge {self.id} {self.mode} {self._where} patterns={list(self._patterns)} "
            f"{self._state}>"
        )

    # --- outgoing ------------------------------------------------------------------------

    def _filter(self, event: _core.Event) -> bool:
        """Runs in the publisher (a strict filter: what it raises reaches `publish`)."""
        if self._state != "running" or ORIGIN_KEY in event.metadata:
            return False
        if not self._matches(event.topic):
            return False
        data = self._encode_event(event)
        encoded = self._encoded
        if len(encoded) > 2 * self.buffer_size + 1024:
            encoded.clear()  # left by publishes a later strict filter refused: re-encode those
        encoded[event.id] = data
        return True

    def _encode_event(self, event: _core.Event) -> bytes:
        try:
            return self._encode(event.to_dict())
        except _Unserializable as exc:
            raise InvalidTypeError(
                f"the event on {event.topic!r} cannot go through the Redis bridge: "
                f"{self.serializer} cannot encode a value of type {exc.type_name} in it; "
                f"publish plain data (dict, list, str, int, float, bool, None"
                f"{', bytes' if self.serializer == 'msgpack' else ''}) on bridged topics"
            ) from None
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidTypeError(
                f"the event on {event.topic!r} cannot go through the Redis bridge: "
                f"{self.serializer} cannot encode it ({exc})"
            ) from None

    def _matches(self, topic: str) -> bool:
        return any(_core.topic_matches(p, topic) for p in self._patterns)

    async def _send_loop(self) -> None:
        sub = self._sub
        assert sub is not None
        async for first in sub:
            batch = [first, *sub._core._take(_SEND_BATCH - 1)]
            self._in_flight = len(batch)
            await self._send(batch)
            self._in_flight = 0

    async def _send(self, batch: list[_core.Event]) -> None:
        messages: list[tuple[str, bytes]] = []
        for event in batch:
            data = self._encoded.pop(event.id, None)
            if data is None:
                try:
                    data = self._encode_event(event)
                except InvalidTypeError as exc:  # its payload was changed after publish
                    self._send_errors += 1
                    log.error("Redis bridge %s dropped event %s: %s", self.id, event.id, exc)
                    continue
            messages.append((event.topic, data))
        backoff = _Backoff()
        while True:
            try:
                await self._write(messages)
            except (RedisError, OSError) as exc:
                self._send_errors += 1
                self._unreachable(exc)
                await asyncio.sleep(backoff.delay())
                continue
            self._sent += len(messages)
            self._reachable()
            return

    async def _write(self, messages: list[tuple[str, bytes]]) -> None:
        client = self._client
        assert client is not None
        origin = self.id.encode()
        async with client.pipeline(transaction=False) as pipe:
            for topic, data in messages:
                if self.mode == "streams":
                    pipe.xadd(
                        self.stream,
                        {"origin": origin, "data": data},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                else:
                    pipe.publish(self._channel_prefix + topic, origin + data)
            await pipe.execute()

    async def _drain(self, deadline: float) -> None:
        sub, sender = self._sub, self._sender
        assert sub is not None
        assert sender is not None
        while (sub.stats().pending or self._in_flight) and not sender.done():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        self._abandoned = sub.stats().pending + self._in_flight
        sub.unsubscribe()  # the sender's `async for` ends
        if not sender.done():
            sender.cancel()  # still retrying a batch Redis did not take
        await asyncio.gather(sender, return_exceptions=True)
        self._encoded.clear()
        if self._abandoned:
            log.warning(
                "Redis bridge %s closed with %d events not sent to %s",
                self.id,
                self._abandoned,
                self._where,
            )

    # --- incoming ------------------------------------------------------------------------

    def _deliver(self, origin: str | None, data: bytes | str | None) -> None:
        """Publishes one message from Redis on the local bus; raises BusClosedError only."""
        if origin == self.id:
            return
        try:
            if data is None:
                raise ValueError("the message has no data")
            fields = self._decode(data)
            if not isinstance(fields, dict):
                raise TypeError(f"it decodes to a {type(fields).__name__}, not an event")
            topic = fields.get("topic")
            if not isinstance(topic, str):
                raise TypeError("it has no topic")
            if not self._matches(topic):
                return
            metadata = fields.get("metadata") or {}
            fields["metadata"] = {**metadata, ORIGIN_KEY: origin}
            event = _core.Event.from_dict(fields)
        except Exception as exc:
            self._receive_errors += 1
            log.warning(
                "Redis bridge %s skipped a message from %s that is not an event: %s",
                self.id,
                origin,
                exc,
            )
            return
        try:
            self._bus.publish_event(event)
        except BusClosedError:
            raise
        except Exception as exc:  # a strict filter of another subscriber refused it
            self._receive_errors += 1
            log.error(
                "Redis bridge %s could not publish event %s on %r from %s: %s",
                self.id,
                event.id,
                event.topic,
                origin,
                exc,
            )
            return
        self._received += 1

    async def _create_group(self, start: str) -> None:
        client = self._client
        assert client is not None
        try:
            await client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_streams(self) -> None:
        client = self._client
        assert client is not None
        backoff = _Backoff()
        claim_every = self.claim_after / 2
        next_claim = time.monotonic() + claim_every
        make_group = False
        while self._state == "running":
            try:
                if make_group:
                    await self._create_group("0")
                    make_group = False
                if time.monotonic() >= next_claim:
                    await self._claim()
                    next_claim = time.monotonic() + claim_every
                self._reading = True
                try:
                    reply = await client.xreadgroup(
                        self.group,
                        self.id,
                        {self.stream: ">"},
                        count=_READ_COUNT,
                        block=int(_READ_BLOCK * 1000),
                    )
                finally:
                    self._reading = False
                await self._handle(_stream_entries(reply))
            except ResponseError as exc:
                self._receive_errors += 1
                if "NOGROUP" in str(exc):
                    log.warning(
                        "Redis at %s lost the bridge's consumer group %r (a restart without "
                        "persistence?): making it again, from the start of the stream",
                        self._where,
                        self.group,
                    )
                    make_group = True
                    continue
                log.error("Redis bridge %s: reading the stream failed: %s", self.id, exc)
                await asyncio.sleep(backoff.delay())
                continue
            except (RedisError, OSError) as exc:
                self._receive_errors += 1
                self._unreachable(exc)
                await asyncio.sleep(backoff.delay())
                continue
            except BusClosedError:
                log.info("Redis bridge %s stops receiving: its bus is closed", self.id)
                return
            backoff.reset()
            self._reachable()

    async def _claim(self) -> None:
        """Takes over the entries other members of the group left unacknowledged too long."""
        client = self._client
        assert client is not None
        start: Any = "0-0"
        for _page in range(_CLAIM_PAGES):
            reply = await client.xautoclaim(
                self.stream,
                self.group,
                self.id,
                min_idle_time=int(self.claim_after * 1000),
                start_id=start,
                count=_READ_COUNT,
            )
            entries = [e for e in reply[1] if e[0] is not None]
            if entries:
                log.info(
                    "Redis bridge %s claimed %d entries left unacknowledged for %.1f s",
                    self.id,
                    len(entries),
                    self.claim_after,
                )
                await self._handle(entries)
            start = reply[0]
            if _text(start) == "0-0":
                return

    async def _handle(self, entries: list[tuple[Any, Any]]) -> None:
        if not entries:
            return
        client = self._client
        assert client is not None
        done = []
        for entry_id, fields in entries:
            if entry_id is None:  # trimmed away while pending
                continue
            origin = fields.get(b"origin", fields.get("origin"))
            self._deliver(_text(origin), fields.get(b"data", fields.get("data")))
            done.append(entry_id)
        if done:
            await client.xack(self.stream, self.group, *done)

    async def _subscribe_pubsub(self) -> Any:
        client = self._client
        assert client is not None
        pubsub: Any = client.pubsub()  # redis-py's PubSub is untyped
        try:
            await pubsub.psubscribe(_escape_glob(self._channel_prefix) + "*")
            async with asyncio.timeout(10.0):
                while True:
                    message = await pubsub.get_message(timeout=_READ_BLOCK)
                    if message is not None and message["type"] == "psubscribe":
                        return pubsub
        except TimeoutError:
            await pubsub.aclose()
            raise RedisUnavailableError(
                f"Redis at {self._where} did not confirm the bridge's PSUBSCRIBE within 10 s"
            ) from None
        except BaseException:
            await pubsub.aclose()
            raise

    async def _read_pubsub(self) -> None:
        backoff = _Backoff()
        while self._state == "running":
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe_pubsub()
                self._reading = True
                try:
                    message = await self._pubsub.get_message(timeout=_READ_BLOCK)
                finally:
                    self._reading = False
            except (RedisError, OSError) as exc:
                self._receive_errors += 1
                self._unreachable(exc)
                await self._close_pubsub()
                await asyncio.sleep(backoff.delay())
                continue
            backoff.reset()
            self._reachable()
            if message is None or message["type"] != "pmessage":
                continue
            data = message["data"]
            if not isinstance(data, bytes | str) or len(data) < _ORIGIN_LEN:
                self._receive_errors += 1
                log.warning("Redis bridge %s skipped a message that is not an event", self.id)
                continue
            try:
                self._deliver(_text(data[:_ORIGIN_LEN]), data[_ORIGIN_LEN:])
            except BusClosedError:
                log.info("Redis bridge %s stops receiving: its bus is closed", self.id)
                return

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as exc:
                log.debug("Redis bridge %s: closing its Pub/Sub connection: %s", self.id, exc)

    async def _stop_reader(self, deadline: float) -> None:
        reader = self._reader
        assert reader is not None
        # A shared group's member lets a read in progress finish, so that what Redis handed it
        # is published here rather than left for another member to claim later; the others
        # stop at once.
        patient = self.mode == "streams" and not self._own_group
        while patient and not reader.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    async def _destroy_group(self) -> None:
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(1.0):
                await client.xgroup_destroy(self.stream, self.group)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "Redis bridge %s could not destroy its consumer group %r on %s: %s",
                self.id,
                self.group,
                self._where,
                exc,
            )

    async def _leave_group(self) -> None:
        """Removes this consumer from a shared group unless entries are still pending on it
        (deleting it would drop them; they are claimed by another member instead)."""
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(1.0):
                pending = await client.xpending_range(
                    self.stream, self.group, "-", "+", 1, consumername=self.id
                )
                if not pending:
                    await client.xgroup_delconsumer(self.stream, self.group, self.id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("Redis bridge %s could not leave group %r: %s", self.id, self.group, exc)

    async def _release_redis(self) -> None:
        await self._close_pubsub()
        if self._url is not None and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # --- outages -------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.warning(
            "Redis at %s is unreachable (%s): the bridge keeps outgoing events buffered "
            "(%d now) and retries until it is back",
            self._where,
            exc,
            self.stats().pending,
        )

    def _reachable(self) -> None:
        if self._down_since is None:
            return
        log.info(
            "Redis at %s is reachable again after %.1f s; the bridge resumes",
            self._where,
            time.monotonic() - self._down_since,
        )
        self._down_since = None


def _check_patterns(patterns: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    try:
        checked = tuple(patterns)
    except TypeError:
        raise InvalidTypeError(
            f"patterns must be an iterable of str, got {type(patterns).__name__}"
        ) from None
    if not checked:
        raise InvalidArgumentError(
            "patterns is empty: give at least one topic pattern to bridge ('>' for all)"
        )
    for pattern in checked:
        if not isinstance(pattern, str):
            raise InvalidTypeError(f"patterns must hold str, got {type(pattern).__name__}")
        try:
            _core.topic_matches(pattern, "x")
        except ValueError as exc:
            raise InvalidArgumentError(f"invalid pattern {pattern!r} in patterns: {exc}") from None
    return checked


def _client_from_url(url: str) -> aioredis.Redis:
    # One quick retry for a pooled connection that went stale; the bridge's own loops do the
    # backing off (redis-py's default would hold each command for seconds while Redis is down).
    return aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2.0, socket_timeout=5.0
    )


def _url_location(url: str) -> str:
    """Where the URL points, without user or password (for logs and messages)."""
    from redis.connection import parse_url

    try:
        kwargs = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise InvalidArgumentError(f"invalid Redis URL for the bridge: {exc}") from None
    return _kwargs_location(kwargs)


def _kwargs_location(kwargs: Mapping[str, Any]) -> str:
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"
