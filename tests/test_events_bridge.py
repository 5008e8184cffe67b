"""RedisBridge: events between the buses of two real processes through a real redis-server, in
both modes; refusal of what cannot be encoded; shared consumer groups; an outage of Redis;
claiming what a dead consumer left; shutdown and bad arguments."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

import msgpack  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from helixrt._redis_server import free_port, redis_server
from helixrt.errors import (
    BusClosedError,
    HelixError,
    InvalidArgumentError,
    InvalidTypeError,
)
from helixrt.events import Event, EventBus, trace_context
from helixrt.events.bridge import ORIGIN_KEY, BridgeStats, RedisBridge, RedisUnavailableError

pytestmark = pytest.mark.integration

T = TypeVar("T")

HANG = 10.0  # seconds: a bound that only a hang exceeds
PEER = Path(__file__).with_name("bridge_peer.py")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(main()), failing if the loop's exception handler was called, then or when
    the garbage collector finalizes what the loop left behind."""
    reported: list[dict[str, Any]] = []

    async def watched() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        return await asyncio.wait_for(main(), HANG * 4)

    result = asyncio.run(watched())
    gc.collect()
    assert reported == []
    return result


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    """Polls `predicate` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def prefix() -> str:
    """A stream prefix of its own for each test: they share one redis-server."""
    return f"test-{uuid.uuid4().hex[:8]}:"


def bare(event: dict[str, Any]) -> dict[str, Any]:
    """An event's dict without the bridge's mark (which the sender's copy does not have)."""
    return {**event, "metadata": {k: v for k, v in event["metadata"].items() if k != ORIGIN_KEY}}


class Peer:
    """tests/bridge_peer.py running in another process, spoken to over stdin/stdout."""

    def __init__(self, url: str, mode: str, serializer: str, stream_prefix: str) -> None:
        self.args = (url, mode, serializer, stream_prefix)
        self.messages: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.id = ""

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PEER),
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        self.id = (await self.next("ready"))["ready"]
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.messages.append(json.loads(line))

    async def next(self, kind: str, after: int = 0) -> dict[str, Any]:
        """The first message of `kind` from the `after`-th message on."""

        def found() -> dict[str, Any] | None:
            return next((m for m in self.messages[after:] if kind in m), None)

        await eventually(lambda: found() is not None or self._exited(), f"peer says {kind}")
        message = found()
        assert message is not None, f"the peer exited without saying {kind}"
        return message

    def _exited(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def command(self, *words: object) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.process.stdin.drain()

    async def publish(self, topic_prefix: str, count: int, trace: str) -> list[dict[str, Any]]:
        mark = len(self.messages)
        await self.command("publish", topic_prefix, count, trace)
        published: list[dict[str, Any]] = (await self.next("published", mark))["published"]
        return published

    @property
    def received(self) -> list[dict[str, Any]]:
        return [m["received"] for m in self.messages if "received" in m]

    async def quit(self) -> dict[str, Any]:
        """Closes the peer's bridge; its final stats."""
        await self.command("quit")
        closed: dict[str, Any] = (await self.next("closed"))["closed"]
        return closed

    async def __aexit__(self, *exc_info: object) -> None:
        process = self.process
        assert process is not None
        if process.returncode is None and exc_info[0] is not None:
            process.kill()
        assert process.stdin is not None
        process.stdin.close()
        if self._reader is not None:
            await self._reader
        await asyncio.wait_for(process.wait(), HANG)
        if exc_info[0] is None:
            assert process.returncode == 0


def remote(events: list[Event]) -> list[Event]:
    return [e for e in events if ORIGIN_KEY in e.metadata]


# --- two processes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "serializer"), [("streams", "msgpack"), ("pubsub", "json"), ("streams", "json")]
)
def test_events_cross_between_two_processes_once_each_way(
    redis_url: str, mode: str, serializer: str
) -> None:
    stream_prefix = prefix()

    async def main() -> None:
        async with EventBus() as bus:
            seen: list[Event] = []
            bus.subscribe(">", seen.append)  # one subscriber: its events arrive in order
            bridge = RedisBridge(
                bus,
                redis_url,
                mode=mode,  # type: ignore[arg-type]
                serializer=serializer,  # type: ignore[arg-type]
                patterns=("test.>",),
                stream_prefix=stream_prefix,
            )
            async with bridge, Peer(redis_url, mode, serializer, stream_prefix) as peer:
                with trace_context("trace-a"):
                    mine = [
                        bus.publish(
                            f"test.a.{i}", {"i": i, "list": [1, 2.5, None, "x"]}, source="a"
                        )
                        for i in range(25)
                    ]
                    mine.append(bus.publish("elsewhere.a", "not bridged"))
                theirs = await peer.publish("test.b", 25, "trace-b")
                await eventually(lambda: len(peer.received) >= 25, "the peer has A's events")
                await eventually(lambda: len(remote(seen)) >= 25, "A has the peer's events")
                # Each side publishes a last event once it has all of the other's: an echo of
                # an earlier event would reach the other side before it.
                mine.append(bus.publish("test.a.last", "last", metadata={"k": "v"}))
                theirs += await peer.publish("test.b.last", 1, "trace-b")
                await eventually(lambda: len(peer.received) >= 26, "the peer has A's last")
                await eventually(lambda: len(remote(seen)) >= 26, "A has the peer's last")
                await eventually(lambda: bridge.stats().sent == 26, "A counts what it sent")
                assert bridge.stats() == BridgeStats(
                    sent=26, received=26, send_errors=0, receive_errors=0, pending=0
                )
                peer_stats = await peer.quit()

            assert peer_stats == {
                "sent": 26,
                "received": 26,
                "send_errors": 0,
                "receive_errors": 0,
                "pending": 0,
            }
            # The peer received A's bridged events, in order, each once, with everything intact.
            bridged = [e for e in mine if e.topic.startswith("test.")]
            assert [bare(e) for e in peer.received] == [e.to_dict() for e in bridged]
            assert {e["metadata"][ORIGIN_KEY] for e in peer.received} == {bridge.id}
            assert peer.received[0]["trace_id"] == "trace-a"
            assert peer.received[-1]["metadata"]["k"] == "v"
            # A saw its own events once (locally), and the peer's once each, in order.
            came = remote(seen)
            assert [bare(e.to_dict()) for e in came] == theirs
            assert {e.metadata[ORIGIN_KEY] for e in came} == {peer.id}
            assert came[0].trace_id == "trace-b"
            assert came[0].payload == {"i": 0, "from": "peer", "list": [1, 2.5, None, "x"]}
            assert [e.id for e in seen if ORIGIN_KEY not in e.metadata] == [e.id for e in mine]

    run(main)


# --- what cannot be encoded -------------------------------------------------------------------


def test_an_event_the_serializer_cannot_encode_is_refused_at_publish(redis_url: str) -> None:
    stream_prefix = prefix()

    async def main() -> None:
        async with EventBus() as a, EventBus() as b, EventBus() as c:
            local: list[Event] = []
            a.subscribe(">", local.append)
            there = b.subscribe("test.>")
            common = {"patterns": ("test.>",), "stream_prefix": stream_prefix}
            async with (
                RedisBridge(a, redis_url, **common) as bridge,  # type: ignore[arg-type]
                RedisBridge(b, redis_url, **common),  # type: ignore[arg-type]
                RedisBridge(c, redis_url, serializer="json", stream_prefix=prefix()),
            ):
                with pytest.raises(TypeError, match=r"'test\.bad'.*msgpack.*type object") as info:
                    a.publish("test.bad", {"nested": [object()]})
                assert isinstance(info.value, InvalidTypeError)
                with pytest.raises(InvalidTypeError, match=r"'test\.big'.*msgpack"):
                    a.publish("test.big", 2**70)
                with pytest.raises(InvalidTypeError, match=r"'test\.meta'.*type set"):
                    a.publish("test.meta", 1, metadata={"tags": {1, 2}})
                with pytest.raises(InvalidTypeError, match=r"'test\.raw'.*json.*type bytes"):
                    c.publish("test.raw", b"\x00")

                unbridged = a.publish("other.x", object())  # not bridged: anything goes
                good = a.publish("test.good", {"raw": b"\x00\xff", "pair": (1, 2)})
                await eventually(lambda: len(local) == 2, "A delivers its two good events")
                assert [e.id for e in local] == [unbridged.id, good.id]

                first = await there.get(timeout=HANG)
                assert first.id == good.id
                assert first.payload == {"raw": b"\x00\xff", "pair": [1, 2]}
                after = a.publish("test.after", None)
                assert (await there.get(timeout=HANG)).id == after.id
                await eventually(lambda: bridge.stats().sent == 2, "A counts what it sent")
                assert bridge.stats().send_errors == 0

    run(main)


# --- shared consumer groups -------------------------------------------------------------------


def test_bridges_sharing_a_group_split_the_events(redis_url: str) -> None:
    stream_prefix = prefix()

    async def main() -> None:
        async with EventBus() as source, EventBus() as one, EventBus() as two:
            got_one: list[Event] = []
            got_two: list[Event] = []
            one.subscribe("test.>", got_one.append)
            two.subscribe("test.>", got_two.append)
            async with (
                RedisBridge(source, redis_url, stream_prefix=stream_prefix) as sender,
                RedisBridge(one, redis_url, stream_prefix=stream_prefix, group="shared"),
                RedisBridge(two, redis_url, stream_prefix=stream_prefix, group="shared"),
            ):
                published = []
                for i in range(20):  # one at a time: blocked readers are served in turn
                    published.append(source.publish(f"test.s.{i}", i))
                    await eventually(
                        lambda n=i + 1: len(got_one) + len(got_two) == n,  # type: ignore[misc]
                        f"event {i} arrived",
                    )
                published += [source.publish(f"test.burst.{i}", i) for i in range(300)]
                await eventually(lambda: len(got_one) + len(got_two) == 320, "all arrived")
                await eventually(lambda: sender.stats().sent == 320, "the sender counts them")

            ids_one = [e.id for e in got_one]
            ids_two = [e.id for e in got_two]
            assert ids_one
            assert ids_two
            assert sorted(ids_one + ids_two) == sorted(e.id for e in published)
            assert not set(ids_one) & set(ids_two)
            # The shared group outlives its members, who left it with nothing pending.
            async with aioredis.Redis.from_url(redis_url) as client:
                groups = await client.xinfo_groups(f"{stream_prefix}stream")
            assert [(g["name"], g["consumers"], g["pending"]) for g in groups] == [
                (b"shared", 0, 0)
            ]

    run(main)


# --- Redis goes away --------------------------------------------------------------------------


def test_streams_keep_what_is_published_while_redis_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream_prefix = prefix()
    caplog.set_level(logging.INFO, logger="helixrt.events")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "helixrt.events"]

    async def main() -> None:
        first = redis_server()
        url = first.__enter__()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        second = redis_server(port=port)
        try:
            async with (
                EventBus() as bus,
                RedisBridge(bus, url, stream_prefix=stream_prefix, buffer_size=100) as bridge,
                Peer(url, "streams", "msgpack", stream_prefix) as peer,
            ):
                before = [bus.publish(f"test.before.{i}", i) for i in range(5)]
                await eventually(lambda: len(peer.received) == 5, "the peer has the first five")

                await asyncio.to_thread(first.__exit__, None, None, None)
                during = [bus.publish(f"test.during.{i}", {"i": i}) for i in range(30)]
                await eventually(lambda: bridge.stats().send_errors >= 2, "the sender retries")
                stats = bridge.stats()
                assert stats.pending == 30
                assert stats.sent == 5
                assert stats.receive_errors >= 1

                await asyncio.to_thread(second.__enter__)
                await eventually(lambda: len(peer.received) == 35, "the peer has them all")
                await eventually(lambda: bridge.stats().pending == 0, "A's buffer is empty")
                assert bridge.stats().sent == 35
                # A's receiver finds its group gone once its retry comes round, which may be
                # after the peer has everything.
                await eventually(
                    lambda: any("lost the bridge's consumer group" in m for m in logged()),
                    "A's receiver making its consumer group again",
                )
                closed = await peer.quit()

            assert [e["id"] for e in peer.received] == [e.id for e in before + during]
            assert peer.received[-1]["payload"] == {"i": 29}
            assert closed["receive_errors"] >= 1
            assert closed["received"] == 35
        finally:
            second.__exit__(None, None, None)

    run(main)
    messages = logged()
    assert len([m for m in messages if "is unreachable" in m]) == 1, messages
    assert len([m for m in messages if "reachable again" in m]) == 1, messages


def test_entries_a_dead_member_left_are_claimed(redis_url: str) -> None:
    stream_prefix = prefix()
    stream = f"{stream_prefix}stream"

    async def main() -> None:
        stuck = Event("test.stuck", {"n": 1}, source="dead", metadata={"m": 1})
        async with aioredis.Redis.from_url(redis_url) as client, EventBus() as bus:
            await client.xgroup_create(stream, "workers", id="$", mkstream=True)
            data = msgpack.packb(stuck.to_dict(), use_bin_type=True)
            await client.xadd(stream, {"origin": "d" * 32, "data": b"not msgpack \xc1"})
            await client.xadd(stream, {"origin": "d" * 32, "data": data})
            taken: Any = await client.xreadgroup("workers", "dead", {stream: ">"}, count=10)
            assert len(taken[0][1]) == 2  # delivered to "dead", which never acknowledges
            sub = bus.subscribe("test.>")
            async with RedisBridge(
                bus, client, group="workers", claim_after=0.2, stream_prefix=stream_prefix
            ) as bridge:
                got = await sub.get(timeout=HANG)
                assert (got.id, got.payload, got.source) == (stuck.id, {"n": 1}, "dead")
                assert dict(got.metadata) == {"m": 1, ORIGIN_KEY: "d" * 32}
                await eventually(lambda: bridge.stats().receive_errors == 1, "garbage counted")

                async def acknowledged() -> bool:
                    pending: int = (await client.xpending(stream, "workers"))["pending"]
                    return pending == 0

                await eventually_async(acknowledged, "the claimed entries are acknowledged")
                assert bridge.stats().received == 1
            assert await client.ping()  # the caller's client is left open

    run(main)


async def eventually_async(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + HANG
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {HANG} s: {what}")
        await asyncio.sleep(0.01)


# --- lifetime ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["streams", "pubsub"])
def test_aclose_stops_everything_and_destroys_an_own_group(redis_url: str, mode: str) -> None:
    stream_prefix = prefix()

    async def main() -> None:
        before = asyncio.all_tasks()
        async with aioredis.Redis.from_url(redis_url) as client, EventBus() as bus:
            bridge = RedisBridge(bus, redis_url, mode=mode, stream_prefix=stream_prefix)  # type: ignore[arg-type]
            await bridge.aclose()  # never started: nothing to do
            bridge = RedisBridge(bus, redis_url, mode=mode, stream_prefix=stream_prefix)  # type: ignore[arg-type]
            await bridge.start()
            await bridge.start()  # idempotent
            assert len(asyncio.all_tasks() - before) == 2
            if mode == "streams":
                groups = await client.xinfo_groups(bridge.stream)
                assert [g["name"] for g in groups] == [bridge.group.encode()]
            else:
                assert await client.pubsub_numpat() == 1
            sent = [bus.publish(f"t.{i}", i) for i in range(50)]  # sent before aclose returns
            await bridge.aclose()
            await bridge.aclose()  # idempotent
            assert asyncio.all_tasks() == before
            assert bridge.stats().sent == len(sent)
            assert bridge.stats().pending == 0
            assert bus.stats().subscribers_active == 0
            if mode == "streams":
                assert await client.xlen(bridge.stream) == 50
                assert await client.xinfo_groups(bridge.stream) == []
            else:
                assert await client.pubsub_numpat() == 0
            bus.publish("t.after", object())  # no bridge any more: nothing refuses it
            with pytest.raises(BusClosedError, match="closed"):
                await bridge.start()

    run(main)


def test_aclose_gives_up_on_what_redis_does_not_take(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        async with EventBus() as bus:
            with redis_server() as url:
                bridge = RedisBridge(bus, url, stream_prefix=prefix())
                await bridge.start()
            bus.publish("t.lost", 1)  # Redis is gone
            await bridge.aclose(timeout=0.3)
            assert bridge.stats().pending == 1
            assert asyncio.all_tasks() == before

    caplog.set_level(logging.WARNING, logger="helixrt.events")
    run(main)
    assert any("closed with 1 events not sent" in r.getMessage() for r in caplog.records)


def test_a_bridge_that_cannot_reach_redis_does_not_start() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            bridge = RedisBridge(bus, f"redis://127.0.0.1:{free_port()}/0")
            with pytest.raises(
                RedisUnavailableError, match=r"could not reach Redis at redis://127\.0\.0\.1"
            ) as info:
                await bridge.start()
            assert isinstance(info.value, ConnectionError)
            assert bus.stats().subscribers_active == 0

    run(main)


def test_bad_arguments_are_refused_with_what_was_wrong() -> None:
    async def main() -> None:
        url = "redis://127.0.0.1:1/0"
        async with EventBus() as bus, aioredis.Redis(decode_responses=True) as decoding:
            cases: list[tuple[dict[str, Any], type[HelixError], str]] = [
                (
                    {"mode": "kafka"},
                    InvalidArgumentError,
                    "mode must be 'streams' or 'pubsub', got 'kafka'",
                ),
                (
                    {"serializer": "pickle"},
                    InvalidArgumentError,
                    "serializer must be 'msgpack' or 'json', got 'pickle'",
                ),
                ({"patterns": ()}, InvalidArgumentError, "patterns is empty"),
                (
                    {"patterns": ("a..b",)},
                    InvalidArgumentError,
                    "invalid pattern 'a..b' in patterns: .*empty token",
                ),
                ({"patterns": [1]}, InvalidTypeError, "patterns must hold str, got int"),
                ({"buffer_size": 0}, InvalidArgumentError, "buffer_size must be at least 1, got 0"),
                (
                    {"claim_after": 0},
                    InvalidArgumentError,
                    "claim_after must be a positive number of seconds, got 0",
                ),
                ({"claim_after": -1.5}, InvalidArgumentError, "claim_after must be a positive"),
                ({"maxlen": 0}, InvalidArgumentError, "maxlen must be at least 1 or None, got 0"),
                (
                    {"stream_prefix": ""},
                    InvalidArgumentError,
                    "stream_prefix must be a non-empty str",
                ),
                ({"group": ""}, InvalidArgumentError, "group must be a non-empty str or None"),
                (
                    {"mode": "pubsub", "group": "g"},
                    InvalidArgumentError,
                    "group applies to mode='streams' only",
                ),
            ]
            for kwargs, error, message in cases:
                with pytest.raises(error, match=message):
                    RedisBridge(bus, url, **kwargs)
            with pytest.raises(InvalidTypeError, match=r"redis must be a URL .* got int"):
                RedisBridge(bus, 42)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match=r"invalid Redis URL.*redis://"):
                RedisBridge(bus, "http://localhost")
            with pytest.raises(InvalidArgumentError, match="decode_responses=True"):
                RedisBridge(bus, decoding)
            RedisBridge(bus, decoding, serializer="json")  # JSON is text: fine
            with pytest.raises(InvalidTypeError, match="bus must be a helixrt EventBus"):
                RedisBridge(object(), url)  # type: ignore[arg-type]

    run(main)
