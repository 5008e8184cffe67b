"""The tiered cache: a Rust L1Cache in front of Redis, coherent across processes.

`TieredCache` (asyncio, on `redis.asyncio`) and `SyncTieredCache` (threads, on redis-py's sync
client) share everything but their I/O: the value format (`helixrt.codec`: a versioned header,
msgpack, lz4 above a size), the key layout, the circuit breaker that keeps a failing Redis from
slowing callers down, the stats, and the invalidation protocol.

Key layout under `namespace` (default "tiered:", the original's prefix):
- `{ns}{key}`: a value;
- `{ns}__tag__:{tag}`: a set of the keys set with that tag, kept alive at least as long as them;
- `{ns}__lock__:{key}`: the lease of a `get_or_set(..., lock=True)` loader;
- channel `{ns}__invalidate__`: every set, delete, clear and tag invalidation is announced there,
  and every TieredCache on that Redis drops the named entries from its L1.
"""

from __future__ import annotations

import asyncio
import builtins
import collections.abc
import contextlib
import inspect
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from helixrt import _core, topics
from helixrt.breaker import CircuitBreaker
from helixrt.cache import L1Cache
from helixrt.codec import Codec, DecodeError
from helixrt.errors import (
    CircuitOpenError,
    HelixError,
    InvalidArgumentError,
    InvalidTypeError,
)

__all__ = ["SyncTieredCache", "TieredCache", "TieredStats"]

log = logging.getLogger("helixrt.tiered")

_MISS: Any = object()
_TAG = "__tag__:"
_LOCK = "__lock__:"
_CHANNEL = "__invalidate__"

# How long a Redis command may take before it counts as failed, for clients the cache makes.
DEFAULT_TIMEOUT = 1.0
# A cache miss is cheap, so a tripped breaker tries Redis again sooner than a service call would.
BREAKER_RESET = 5.0
# A get_or_set(lock=True) loader's lease, and how often the others look for its result.
LOCK_LEASE = 30.0
LOCK_POLL = 0.02


class L2Error(HelixError, ConnectionError):
    """Redis failed (or the breaker in front of it is open) and the cache is `strict`."""


@dataclass(frozen=True, slots=True)
class TieredStats:
    """A snapshot of a tiered cache. An L1 miss that hits L2 counts once, as a hit."""

    l1_hits: int
    l1_misses: int
    l2_hits: int
    l2_misses: int
    hit_ratio: float
    """(l1_hits + l2_hits) / lookups; 0.0 before any."""
    l2_errors: int
    decode_errors: int
    bytes_before: int
    """Bytes of the serialized values written, before compression."""
    bytes_after: int
    invalidations_sent: int
    invalidations_received: int
    batched_gets: int
    """Gets sent in an MGET with the others issued after the first get of their loop turn."""
    breaker_state: str


def _check_ttl(name: str, value: float | None, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise InvalidArgumentError(f"{name} must be a positive number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not value > 0:
        raise InvalidArgumentError(
            f"{name} must be a positive number of seconds, got {value!r} (None: the default)"
        )
    return float(value)


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidTypeError(f"TieredCache keys must be str, got {type(key).__name__}")
    return key


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise InvalidTypeError("tags must be a collection of str, not a str (wrap it: tags=[tag])")
    checked = tuple(tags)
    for tag in checked:
        if not isinstance(tag, str) or not tag:
            raise InvalidArgumentError(f"every tag must be a non-empty str, got {tag!r}")
    return checked


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Redis's glob (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\\x`) as a regex, so that L1 and
    Redis match the same keys."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidArgumentError(f"pattern must be a non-empty str, got {pattern!r}")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("^", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                escaped = "".join("\\" + ch if ch in "\\]^[" else ch for ch in body)
                out.append(f"[{'^' if negate else ''}{escaped}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


# An L1 hit's `get` returns a finished awaitable, not a coroutine. Registered as a Coroutine, so
# that `asyncio.create_task` and `asyncio.run` take a hit's result as they take a miss's.
collections.abc.Coroutine.register(_core.Ready)

# Keys under the namespace that are the cache's own, not entries.
_INTERNAL = (_TAG, _LOCK, _CHANNEL)
# Keys one pipeline of a pattern invalidation deletes.
_PATTERN_BATCH = 500


class _Core:
    """What the async and the sync cache share: settings, L1, codec, breaker, stats, keys."""

    def __init__(
        self,
        redis: Any = None,
        *,
        l1: L1Cache | None = None,
        l1_ttl: float = 300.0,
        l2_ttl: float = 1800.0,
        namespace: str = "tiered:",
        serializer: Any = "msgpack",
        compression: Literal["lz4", "gzip"] | None = "lz4",
        compress_min_bytes: int = 512,
        negative_ttl: float | None = None,
        bus: Any = None,
        strict: bool = False,
        signing_key: bytes | str | None = None,
        breaker: CircuitBreaker | None = None,
        events: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._l1_ttl = _check_ttl("l1_ttl", l1_ttl, allow_none=False) or 0.0
        self._l2_ttl = _check_ttl("l2_ttl", l2_ttl, allow_none=False) or 0.0
        self._negative_ttl = _check_ttl("negative_ttl", negative_ttl, allow_none=True)
        self._timeout = _check_ttl("timeout", timeout, allow_none=False) or 0.0
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgumentError(f"namespace must be a non-empty str, got {namespace!r}")
        if l1 is not None and not isinstance(l1, L1Cache):
            raise InvalidTypeError(f"l1 must be an L1Cache or None, got {type(l1).__name__}")
        self._ns = namespace
        self._channel = namespace + _CHANNEL
        self._l1 = l1 if l1 is not None else L1Cache(maxsize=10_000, ttl=self._l1_ttl)
        # Bound once: the L1 hit is the hot path, and each attribute lookup is a tenth of it.
        self._l1_lookup = self._l1.get
        self._codec = Codec(serializer, compression, compress_min_bytes, signing_key=signing_key)
        self._breaker = breaker or CircuitBreaker(
            f"tiered-cache:{namespace}", reset_timeout=BREAKER_RESET
        )
        self._bus = bus
        self._strict = bool(strict)
        self._events = bool(events)
        self._origin = uuid.uuid4().hex
        # Bumped on every invalidation received: a get that read Redis before one arrived must
        # not put what it read into L1 (it may be the value the invalidation was about).
        self._epoch = 0
        # Makes the epoch check and the L1 write of a promotion one step, as seen by the thread
        # that applies invalidations (SyncTieredCache's listener).
        self._coherence = threading.Lock()
        self._l1_hits = self._l1_misses = self._l2_hits = self._l2_misses = 0
        self._l2_errors = self._decode_errors = self._batched = 0
        self._sent = self._received = 0
        self._closed = False
        self._owns_redis = isinstance(redis, str)
        self._redis = self._client(redis, self._timeout) if isinstance(redis, str) else redis
        self._cluster = _is_cluster(self._redis)
        self._setup()

    @staticmethod
    def _client(url: str, timeout: float) -> Any:
        """The Redis client for `url` (async or sync)."""
        raise NotImplementedError

    def _setup(self) -> None:
        """What the async or the sync cache adds to the shared state."""

    # -- keys and values -----------------------------------------------------------------------

    def _rkey(self, key: str) -> str:
        return self._ns + key

    def _tag_key(self, tag: str) -> str:
        return self._ns + _TAG + tag

    def _ttls(self, ttl: float | None) -> tuple[float, float]:
        """(L1 ttl, L2 ttl) for a set with `ttl`."""
        l2 = self._l2_ttl if ttl is None else _check_ttl("ttl", ttl, allow_none=False) or 0.0
        return min(l2, self._l1_ttl), l2

    def _encode_all(self, mapping: Mapping[str, Any], l2_ttl: float) -> dict[str, bytes]:
        """The values as stored in Redis (none without a Redis). Encoding before anything is
        written refuses a value the serializer cannot take, instead of losing it later."""
        if self._redis is None:
            for key in mapping:
                _check_key(key)
            return {}
        expires_at = time.time() + l2_ttl
        return {_check_key(k): self._codec.encode(v, expires_at) for k, v in mapping.items()}

    def _decode(self, raw: bytes | None) -> tuple[Any, float | None]:
        """(value, L1 ttl to promote with), or (_MISS, None) for a miss or a bad value."""
        if raw is None:
            return _MISS, None
        try:
            value, expires_at = self._codec.decode(raw)
        except DecodeError as exc:
            self._decode_errors += 1
            log.warning("undecodable value in Redis, treated as a miss: %s", exc)
            return _MISS, None
        ttl = self._l1_ttl
        if expires_at is not None:
            ttl = min(ttl, expires_at - time.time())
        return value, ttl if ttl > 0 else None

    def _l1_get(self, key: str) -> Any:
        value = self._l1_lookup(key, _MISS)
        if value is _MISS:
            self._l1_misses += 1
        else:
            self._l1_hits += 1
            if self._events:
                self._publish(topics.CACHE_HIT, {"key": key, "tier": "l1"})
        return value

    def _found_l2(self, key: str, raw: bytes | None, epoch: int) -> Any:
        value, ttl = self._decode(raw)
        if value is _MISS:
            self._l2_misses += 1
            if self._events:
                self._publish(topics.CACHE_MISS, {"key": key})
            return _MISS
        self._l2_hits += 1
        if ttl is not None:
            with self._coherence:  # no invalidation lands between the check and the write
                if epoch == self._epoch:
                    self._l1.set(key, value, ttl=ttl)
        if self._events:
            self._publish(topics.CACHE_HIT, {"key": key, "tier": "l2"})
        return value

    def _from_l1(self, keys: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
        """(what L1 has of `keys`, the keys it lacks)."""
        found: dict[str, Any] = {}
        missing: list[str] = []
        for key in keys:
            value = self._l1_get(_check_key(key))
            if value is _MISS:
                missing.append(key)
            else:
                found[key] = value
        return found, missing

    def _from_l2(
        self, found: dict[str, Any], missing: list[str], raws: list[bytes | None], epoch: int
    ) -> dict[str, Any]:
        for key, raw in zip(missing, raws, strict=True):
            value = self._found_l2(key, raw, epoch)
            if value is not _MISS:
                found[key] = value
        return found

    def _queue_write(
        self, pipe: Any, encoded: dict[str, bytes], l2_ttl: float, tags: tuple[str, ...]
    ) -> str:
        """Queues a write of `encoded` (and its tags) on `pipe`; returns its announcement."""
        px = max(1, int(l2_ttl * 1000))
        for key, data in encoded.items():
            pipe.set(self._rkey(key), data, px=px)
        for tag in tags:
            tag_key = self._tag_key(tag)
            pipe.sadd(tag_key, *encoded)
            # A new set has no expiry (NX sets one); an older one only ever lengthens (GT).
            pipe.pexpire(tag_key, px, nx=True)
            pipe.pexpire(tag_key, px, gt=True)
        return self._message(k=list(encoded))

    def _queue_delete(self, pipe: Any, keys: list[str], **announce: Any) -> str:
        for key in keys:
            pipe.delete(self._rkey(key))
        return self._message(k=keys, **announce)

    def _prepare_set(
        self, mapping: Mapping[str, Any], ttl: float | None, tags: Iterable[str]
    ) -> tuple[dict[str, bytes], float, tuple[str, ...]]:
        """Checks and encodes a set, writes L1; returns what Redis is to get (nothing when
        there is no Redis or it is not used now)."""
        l1_ttl, l2_ttl = self._ttls(ttl)
        checked_tags = _check_tags(tags)
        encoded = self._encode_all(mapping, l2_ttl)
        for key, value in mapping.items():
            self._l1.set(key, value, ttl=l1_ttl, tags=checked_tags)
        if encoded and not self._l2_usable():
            self._refused()
            encoded = {}
        return encoded, l2_ttl, checked_tags

    def _drop_local_matches(self, matcher: re.Pattern[str]) -> set[str]:
        """Drops the L1 entries whose keys `matcher` matches; returns their keys."""
        keys = {k for k in list(self._l1.keys()) if isinstance(k, str) and matcher.fullmatch(k)}
        for key in keys:
            self._l1.delete(key)
        return keys

    def _entry_key(self, name: bytes | str) -> str | None:
        """The cache key of a Redis key found by SCAN, or None for the cache's own keys."""
        key = (name.decode() if isinstance(name, bytes) else name)[len(self._ns) :]
        return None if key.startswith(_INTERNAL) else key

    def _l2_usable(self) -> bool:
        return self._redis is not None and self._breaker.state != "open"

    def _failed(self, what: str, exc: BaseException) -> None:
        """A Redis operation failed: count it, and raise it if the cache is strict."""
        self._l2_errors += 1
        log.debug("redis %s failed: %r", what, exc)
        if self._strict:
            raise L2Error(f"redis {what} failed: {exc}") from exc

    def _refused(self) -> None:
        if self._strict and self._redis is not None:
            raise L2Error(
                f"redis is not used while the circuit breaker {self._breaker.name!r} is open"
            )

    # -- invalidation messages -----------------------------------------------------------------

    def _message(self, **what: Any) -> str:
        self._sent += 1
        return json.dumps({"o": self._origin, **what}, separators=(",", ":"))

    def _apply(self, raw: bytes | str) -> None:
        """An invalidation from the channel: drop what it names from L1."""
        try:
            message = json.loads(raw)
            if message.get("o") == self._origin:
                return
        except (ValueError, AttributeError):
            log.warning("ignored a malformed invalidation message: %r", raw[:100])
            return
        with self._coherence:
            self._epoch += 1
            self._received += 1
            if message.get("c"):
                self._l1.clear()
            for key in message.get("k", ()):
                self._l1.delete(key)
            if message.get("t"):
                self._l1.invalidate_tag(message["t"])

    def _drop_own_copies(self, keys: list[str]) -> None:
        """After a tag invalidation of ours: L1 entries read from Redis carry no tags, and this
        instance ignores its own announcement, so drop them here (and keep a get that read
        Redis before the deletion from putting its value back)."""
        with self._coherence:
            self._epoch += 1
            for key in keys:
                self._l1.delete(key)

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self._bus is None:
            return
        try:
            self._bus.publish(topic, payload, source="tiered_cache")
        except Exception:
            log.exception("publishing %s failed", topic)

    def _invalidated(self, **payload: Any) -> None:
        self._publish(topics.CACHE_INVALIDATED, payload)

    # -- introspection -------------------------------------------------------------------------

    @property
    def l1(self) -> L1Cache:
        return self._l1

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def namespace(self) -> str:
        return self._ns

    def stats(self) -> TieredStats:
        hits = self._l1_hits + self._l2_hits
        lookups = hits + self._l2_misses
        return TieredStats(
            l1_hits=self._l1_hits,
            l1_misses=self._l1_misses,
            l2_hits=self._l2_hits,
            l2_misses=self._l2_misses,
            hit_ratio=hits / lookups if lookups else 0.0,
            l2_errors=self._l2_errors,
            decode_errors=self._decode_errors,
            bytes_before=self._codec.bytes_before,
            bytes_after=self._codec.bytes_after,
            invalidations_sent=self._sent,
            invalidations_received=self._received,
            batched_gets=self._batched,
            breaker_state=self._breaker.state,
        )

    _redis: Any


_SETTINGS_DOC = """
    - `redis`: a URL (the cache makes the client, with `timeout`-second socket timeouts and no
      retries of its own: the breaker decides; `redis+cluster://host:port` for a Redis
      Cluster), a client (`Redis` or `RedisCluster`; the caller keeps and closes it), or None
      for L1 only.
    - `l1`: the L1Cache to use (default: 10 000 entries, `l1_ttl`); `l1_ttl` (5 min) and
      `l2_ttl` (30 min) are the original's defaults. A set keeps an entry `min(ttl, l1_ttl)` in
      L1 and `ttl` (or `l2_ttl`) in Redis; an entry read from Redis stays in L1 for at most
      what the Redis key had left.
    - `serializer` ("msgpack", "json", or an object with dumps/loads; "pickle" only with a
      `signing_key`), `compression` ("lz4", "gzip", None) above `compress_min_bytes`: see
      `helixrt.codec`. A value Redis returns that cannot be decoded is a miss, counted.
    - `negative_ttl`: how long `get_or_set` keeps a loader's None (not at all by default).
    - `strict`: raise L2Error when Redis fails (by default a failing Redis is a miss on get
      and an L1-only write on set; the breaker keeps it from costing every call a timeout).
      A write made while Redis was unreachable lived in L1 only: when the invalidation
      channel comes back the cache clears its L1 (it may have missed announcements), and a
      value Redis kept from before the outage is served again.
    - `bus`: an EventBus for `cache.invalidated` events (and `cache.hit` / `cache.miss` with
      `events=True`).
"""


class TieredCache(_Core, _core.TieredCache):
    """An L1Cache in front of Redis, for asyncio services.

    `TieredCache(redis=None, *, l1=None, l1_ttl=300.0, l2_ttl=1800.0, namespace="tiered:",
    serializer="msgpack", compression="lz4", compress_min_bytes=512, negative_ttl=None,
    bus=None, strict=False, signing_key=None, breaker=None, events=False, timeout=1.0)`
    """

    __doc__ = (
        (__doc__ or "")
        + _SETTINGS_DOC
        + """
    The first get of an event-loop turn to miss L1 is sent at once; the gets issued after it
    in the same turn share one MGET. The cache is bound to the event loop it is first used on
    (its Redis connections are). Close it with `await aclose()` or `async with`.
    """
    )

    @staticmethod
    def _client(url: str, timeout: float) -> Any:
        return _async_client(url, timeout)

    def _setup(self) -> None:
        self._bind(self._l1, self._events)
        self._batch: _Batch | None = None
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[None] | None = None

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribes to the invalidation channel (the first operation does it if needed)."""
        if self._redis is None or self._closed:
            return
        if self._listening is None:
            loop = asyncio.get_running_loop()
            self._listening = loop.create_future()
            self._listener = loop.create_task(self._listen(self._listening))
        await asyncio.shield(self._listening)

    def _started(self) -> bool:
        listening = self._listening
        return listening is not None and listening.done()

    async def _ready(self) -> None:
        if not self._started():
            await self.start()

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """Applies other instances' invalidations to L1 until closed; resubscribes after a
        failure (and then clears L1: invalidations may have been missed meanwhile)."""
        delay = 0.05
        outage = False
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                if self._cluster:
                    # An async RedisCluster learns the slots on its first command, and its
                    # pubsub needs them to pick the node for the channel (KeyError otherwise).
                    await self._redis.initialize()
                await pubsub.subscribe(self._channel)
                # The subscription is confirmed once its reply is read.
                while await pubsub.get_message(timeout=self._timeout) is None:
                    pass
                if outage:
                    self._l1.clear()
                    log.warning("invalidation channel back: L1 cleared")
                outage, delay = False, 0.05
                if not ready.done():
                    ready.set_result(None)
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    # The first subscription failed: operations go on without coherence
                    # messages until it is back (and the breaker handles the rest).
                    ready.set_result(None)
                if not outage:
                    log.warning("invalidation channel lost (%r); retrying", exc)
                outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        """Stops the invalidation listener and closes the Redis client the cache made."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- reads ---------------------------------------------------------------------------------

    # `get(key, default=None)` comes from the Rust base: an L1 hit returns a finished
    # awaitable there, without the cost of a coroutine; a miss returns `_get_l2`'s.

    async def _get_l2(self, key: str, default: Any) -> Any:
        """`get` after an L1 miss: Redis (the value then kept in L1), else `default`."""
        _check_key(key)
        self._l1_misses += 1
        if not self._l2_usable():
            self._refused()
            self._l2_misses += 1
            return default
        if not self._started():  # `_ready()` without its coroutine: this is every L1 miss
            await self.start()
        epoch = self._epoch
        try:
            raw = await self._fetch(key)
        except Exception as exc:
            self._failed("GET", exc)
            self._l2_misses += 1
            return default
        value = self._found_l2(key, raw, epoch)
        return default if value is _MISS else value

    def _hit_event(self, key: str) -> None:
        """Called by `get` on an L1 hit when the cache publishes its hits."""
        self._publish(topics.CACHE_HIT, {"key": key, "tier": "l1"})

    async def _fetch(self, key: str) -> bytes | None:
        """GET `key`. The first get of a loop turn goes out at once, so a lone get waits for
        nothing; the gets issued after it in the same turn share one MGET, sent when the loop
        comes round (waiting a turn before every lone GET cost a tenth of its CPU)."""
        batch = self._batch
        if batch is not None:
            self._batched += 1
            joined: bytes | None = await batch.join(key)
            return joined
        self._batch = _Batch()
        asyncio.get_running_loop().call_soon(self._flush)
        # The breaker around the GET written out, as `_guarded` does it: two coroutines fewer.
        breaker = self._breaker
        permit = breaker._acquire()
        try:
            alone: bytes | None = await self._redis.get(self._ns + key)
        except BaseException as exc:
            breaker._record(permit, exc)
            raise
        breaker._record(permit, None)
        return alone

    def _flush(self) -> None:
        """Sends the MGET of the gets that joined this turn's batch, if any did."""
        batch, self._batch = self._batch, None
        if batch is None or not batch.keys:
            return
        task = asyncio.ensure_future(self._guarded(self._mget(batch.keys)))
        task.add_done_callback(batch.resolve)

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        rkeys = [self._rkey(k) for k in keys]
        if self._cluster:
            return list(await self._redis.mget_nonatomic(rkeys))
        return list(await self._redis.mget(rkeys))

    async def _guarded(self, operation: Awaitable[Any]) -> Any:
        """Runs a Redis operation through the breaker."""
        try:
            permit = self._breaker._acquire()
        except CircuitOpenError:
            if inspect.iscoroutine(operation):
                operation.close()
            raise
        try:
            result = await operation
        except BaseException as exc:
            self._breaker._record(permit, exc)
            raise
        self._breaker._record(permit, None)
        return result

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values found for `keys` (absent ones left out), with one MGET for L1 misses."""
        found, missing = self._from_l1(keys)
        if not missing:
            return found
        if not self._l2_usable():
            self._refused()
            self._l2_misses += len(missing)
            return found
        await self._ready()
        epoch = self._epoch
        try:
            raws = await self._guarded(self._mget(missing))
        except Exception as exc:
            self._failed("MGET", exc)
            self._l2_misses += len(missing)
            return found
        return self._from_l2(found, missing, raws, epoch)

    # -- writes --------------------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Writes L1 (`min(ttl, l1_ttl)`) and Redis (`ttl`, else `l2_ttl`), and tells the other
        instances to drop their L1 copy."""
        await self.set_many({_check_key(key): value}, ttl=ttl, tags=tags)

    async def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """`set` for several keys in one round trip."""
        encoded, l2_ttl, checked_tags = self._prepare_set(mapping, ttl, tags)
        if not encoded:
            return
        await self._ready()
        try:
            await self._guarded(self._write(encoded, l2_ttl, checked_tags))
        except Exception as exc:
            self._failed("SET", exc)

    async def _write(self, encoded: dict[str, bytes], l2_ttl: float, tags: tuple[str, ...]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        await self._execute_announced(pipe, self._queue_write(pipe, encoded, l2_ttl, tags))

    async def delete(self, key: str) -> bool:
        """Removes `key` from both tiers (and from every instance's L1); True if it was there."""
        in_l1 = self._l1.delete(_check_key(key))
        in_l2 = False
        if self._l2_usable():
            await self._ready()
            try:
                in_l2 = bool(await self._guarded(self._delete([key])))
            except Exception as exc:
                self._failed("DEL", exc)
        else:
            self._refused()
        self._invalidated(keys=[key])
        return in_l1 or in_l2

    async def _delete(self, keys: list[str], **announce: Any) -> int:
        pipe = self._redis.pipeline(transaction=False)
        results = await self._execute_announced(pipe, self._queue_delete(pipe, keys, **announce))
        return sum(results)

    async def _execute_announced(self, pipe: Any, message: str) -> list[Any]:
        """Runs `pipe`, then publishes `message` (in the same round trip, except on a cluster,
        whose pipelines refuse PUBLISH); returns the pipeline's results."""
        if self._cluster:
            results = list(await pipe.execute())
            await self._redis.publish(self._channel, message)
            return results
        pipe.publish(self._channel, message)
        return list(await pipe.execute())[:-1]

    async def invalidate_tag(self, tag: str) -> int:
        """Drops every entry set with `tag`, from Redis and from every instance's L1; returns
        how many (the Redis count when there is a Redis, else L1's)."""
        (tag,) = _check_tags([tag])
        dropped = self._l1.invalidate_tag(tag)
        if self._l2_usable():
            await self._ready()
            try:
                dropped = await self._guarded(self._drop_tag(tag))
            except Exception as exc:
                self._failed("tag invalidation", exc)
        else:
            self._refused()
        self._invalidated(tag=tag)
        return dropped

    async def _drop_tag(self, tag: str) -> int:
        tag_key = self._tag_key(tag)
        members = sorted(
            m.decode() if isinstance(m, bytes) else m for m in await self._redis.smembers(tag_key)
        )
        dropped = await self._delete(members, t=tag)
        await self._redis.delete(tag_key)
        self._drop_own_copies(members)
        return dropped

    async def invalidate_pattern(self, pattern: str) -> int:
        """Drops every key matching the Redis glob `pattern` (`*`, `?`, `[a-z]`), from Redis
        (SCAN within the namespace, never KEYS) and from every instance's L1; returns how many
        keys were dropped."""
        matcher = _glob_regex(pattern)
        dropped = self._drop_local_matches(matcher)
        if self._l2_usable():
            await self._ready()
            try:
                dropped |= await self._guarded(self._drop_matching(pattern))
            except Exception as exc:
                self._failed("pattern invalidation", exc)
        else:
            self._refused()
        self._invalidated(pattern=pattern, count=len(dropped))
        return len(dropped)

    async def _drop_matching(self, pattern: str) -> builtins.set[str]:
        found: builtins.set[str] = builtins.set()  # (the method `set` shadows the builtin here)
        batch: list[str] = []
        async for name in self._redis.scan_iter(match=_glob_escape(self._ns) + pattern, count=1000):
            key = self._entry_key(name)
            if key is not None and key not in found:
                found.add(key)
                batch.append(key)
                if len(batch) >= _PATTERN_BATCH:
                    await self._delete(batch)
                    batch = []
        if batch:
            await self._delete(batch)
        return found

    async def clear(self) -> None:
        """Empties this namespace, in Redis (SCAN and UNLINK: never KEYS or FLUSHDB) and in
        every instance's L1."""
        self._l1.clear()
        if self._l2_usable():
            await self._ready()
            try:
                await self._guarded(self._clear())
            except Exception as exc:
                self._failed("clear", exc)
        else:
            self._refused()
        self._invalidated(clear=True)

    async def _clear(self) -> None:
        batch: list[Any] = []
        async for name in self._redis.scan_iter(match=_glob_escape(self._ns) + "*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                await self._unlink(batch)
                batch = []
        if batch:
            await self._unlink(batch)
        await self._redis.publish(self._channel, self._message(c=1))

    async def _unlink(self, names: list[Any]) -> None:
        # Not a pipeline of UNLINKs: redis.asyncio's cluster pipeline makes `unlink` a coroutine
        # that queues nothing. The client's UNLINK sends one command (one per slot on a cluster).
        await self._redis.unlink(*names)

    # -- loaders -------------------------------------------------------------------------------

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        lock: bool = False,
        lock_timeout: float = LOCK_LEASE,
    ) -> Any:
        """The cached value, or `loader()`'s (a function or a coroutine function), cached.

        Concurrent callers of the same key in this process share one call of the loader (its
        exception reaches them all, and nothing is cached). With `lock=True`, processes share
        it too: a Redis lease (expiring after `lock_timeout`) lets one load while the others
        wait for its value, for at most `lock_timeout` seconds.
        """
        value = await self.get(key, _MISS)
        if value is not _MISS:
            return value
        while True:
            running = self._inflight.get(key)
            if running is None:
                break
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # this caller was cancelled
                # the loading caller was cancelled: try again (maybe as the loader)
        # A load that ended while this caller's read of Redis was out left its value in L1.
        value = self._l1_lookup(key, _MISS)
        if value is not _MISS:
            return value
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            if lock and self._l2_usable():
                value = await self._load_leased(key, loader, ttl, tags, lock_timeout)
            else:
                value = await self._load(key, loader, ttl, tags)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: a failed load nobody else awaited is not news
            raise
        else:
            future.set_result(value)
        finally:
            del self._inflight[key]
        return value

    async def _load(
        self, key: str, loader: Callable[[], Any], ttl: float | None, tags: Iterable[str]
    ) -> Any:
        value = loader()
        if inspect.isawaitable(value):
            value = await value
        if value is None:
            if self._negative_ttl is not None:
                await self.set(key, None, ttl=self._negative_ttl, tags=tags)
        else:
            await self.set(key, value, ttl=ttl, tags=tags)
        return value

    async def _load_leased(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: Iterable[str],
        lock_timeout: float,
    ) -> Any:
        lease_key = self._ns + _LOCK + key
        token = uuid.uuid4().hex
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                leased = await self._guarded(
                    self._redis.set(lease_key, token, nx=True, px=int(lock_timeout * 1000))
                )
            except Exception as exc:
                self._failed("SET NX (lease)", exc)
                return await self._load(key, loader, ttl, tags)
            if leased:
                try:
                    return await self._load(key, loader, ttl, tags)
                finally:
                    with contextlib.suppress(Exception):
                        await self._redis.eval(_RELEASE, 1, lease_key, token)
            # Another process loads: wait for its value, or for its lease to go.
            while time.monotonic() < deadline:
                await asyncio.sleep(LOCK_POLL)
                value = await self.get(key, _MISS)
                if value is not _MISS:
                    return value
                if not await self._redis.exists(lease_key):
                    break
            else:
                raise TimeoutError(
                    f"another process held the lease on {key!r} for {lock_timeout} s "
                    "without storing a value"
                )


# Deletes the lease only if it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class _Batch:
    """The keys of the gets that joined a loop turn's batch, and their futures."""

    __slots__ = ("joiners", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.joiners: list[tuple[int, asyncio.Future[bytes | None]]] = []

    def join(self, key: str) -> asyncio.Future[bytes | None]:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        try:
            index = self.keys.index(key)
        except ValueError:
            index = len(self.keys)
            self.keys.append(key)
        self.joiners.append((index, future))
        return future

    def resolve(self, task: asyncio.Task[list[bytes | None]]) -> None:
        if task.cancelled():
            for _, future in self.joiners:
                future.cancel()
            return
        error = task.exception()
        for index, future in self.joiners:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(task.result()[index])


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


# A URL with this scheme names a node of a Redis Cluster.
_CLUSTER_SCHEME = "redis+cluster://"


def _async_client(url: str, timeout: float) -> Any:
    try:
        import redis.asyncio as async_redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:  # pragma: no cover - depends on the installation
        raise HelixError("TieredCache needs redis-py: pip install helixrt[redis]") from None
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.startswith(_CLUSTER_SCHEME):
        url = "redis://" + url.removeprefix(_CLUSTER_SCHEME)
        return async_redis.RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return async_redis.Redis.from_url(url, **options)


def _sync_client(url: str, timeout: float) -> Any:
    try:
        import redis as sync_redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:  # pragma: no cover - depends on the installation
        raise HelixError("SyncTieredCache needs redis-py: pip install helixrt[redis]") from None
    if url.startswith(_CLUSTER_SCHEME):
        url = "redis://" + url.removeprefix(_CLUSTER_SCHEME)
        return sync_redis.RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return sync_redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


class SyncTieredCache(_Core):
    """The tiered cache for threaded code: the same as TieredCache, with plain methods on
    redis-py's sync client. Safe to share between threads; a background thread applies other
    instances' invalidations. Close it with `close()` or `with`.
    """

    __doc__ = (__doc__ or "") + _SETTINGS_DOC

    @staticmethod
    def _client(url: str, timeout: float) -> Any:
        return _sync_client(url, timeout)

    def _setup(self) -> None:
        self._inflight_lock = threading.Lock()
        self._inflight: dict[str, _Flight] = {}
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None
        if self._redis is not None:
            self._listener = threading.Thread(
                target=self._listen, name=f"helixrt-tiered-{self._ns}", daemon=True
            )
            self._listener.start()
            self._listening.wait(self._timeout * 2)

    def _listen(self) -> None:
        delay = 0.05
        outage = False
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                pubsub.subscribe(self._channel)
                while pubsub.get_message(timeout=self._timeout) is None:
                    if self._closed:
                        return
                if outage:
                    self._l1.clear()
                    log.warning("invalidation channel back: L1 cleared")
                outage, delay = False, 0.05
                self._listening.set()
                while not self._closed:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is not None and message["type"] == "message":
                        self._apply(message["data"])
            except Exception as exc:
                self._listening.set()
                if not outage:
                    log.warning("invalidation channel lost (%r); retrying", exc)
                outage = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def close(self) -> None:
        """Stops the invalidation thread and closes the Redis client the cache made."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.join()
        if self._owns_redis and self._redis is not None:
            self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _guarded(self, operation: Callable[[], Any]) -> Any:
        permit = self._breaker._acquire()
        try:
            result = operation()
        except BaseException as exc:
            self._breaker._record(permit, exc)
            raise
        self._breaker._record(permit, None)
        return result

    def get(self, key: str, default: Any = None) -> Any:
        value = self._l1_lookup(key, _MISS)
        if value is not _MISS:
            self._l1_hits += 1
            if self._events:
                self._publish(topics.CACHE_HIT, {"key": key, "tier": "l1"})
            return value
        self._l1_misses += 1
        _check_key(key)
        if not self._l2_usable():
            self._refused()
            self._l2_misses += 1
            return default
        epoch = self._epoch
        try:
            raw = self._guarded(lambda: self._redis.get(self._rkey(key)))
        except Exception as exc:
            self._failed("GET", exc)
            self._l2_misses += 1
            return default
        value = self._found_l2(key, raw, epoch)
        return default if value is _MISS else value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found, missing = self._from_l1(keys)
        if not missing:
            return found
        if not self._l2_usable():
            self._refused()
            self._l2_misses += len(missing)
            return found
        epoch = self._epoch
        rkeys = [self._rkey(k) for k in missing]
        mget = self._redis.mget_nonatomic if self._cluster else self._redis.mget
        try:
            raws = self._guarded(lambda: mget(rkeys))
        except Exception as exc:
            self._failed("MGET", exc)
            self._l2_misses += len(missing)
            return found
        return self._from_l2(found, missing, raws, epoch)

    def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        self.set_many({_check_key(key): value}, ttl=ttl, tags=tags)

    def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        encoded, l2_ttl, checked_tags = self._prepare_set(mapping, ttl, tags)
        if not encoded:
            return

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            self._execute_announced(pipe, self._queue_write(pipe, encoded, l2_ttl, checked_tags))

        try:
            self._guarded(write)
        except Exception as exc:
            self._failed("SET", exc)

    def _delete(self, keys: list[str], **announce: Any) -> int:
        pipe = self._redis.pipeline(transaction=False)
        results = self._execute_announced(pipe, self._queue_delete(pipe, keys, **announce))
        return int(sum(results))

    def _execute_announced(self, pipe: Any, message: str) -> list[Any]:
        """As TieredCache._execute_announced."""
        if self._cluster:
            results = list(pipe.execute())
            self._redis.publish(self._channel, message)
            return results
        pipe.publish(self._channel, message)
        return list(pipe.execute())[:-1]

    def delete(self, key: str) -> bool:
        in_l1 = self._l1.delete(_check_key(key))
        in_l2 = False
        if self._l2_usable():
            try:
                in_l2 = bool(self._guarded(lambda: self._delete([key])))
            except Exception as exc:
                self._failed("DEL", exc)
        else:
            self._refused()
        self._invalidated(keys=[key])
        return in_l1 or in_l2

    def invalidate_tag(self, tag: str) -> int:
        (tag,) = _check_tags([tag])
        dropped = self._l1.invalidate_tag(tag)

        def drop() -> int:
            tag_key = self._tag_key(tag)
            members = sorted(
                m.decode() if isinstance(m, bytes) else m for m in self._redis.smembers(tag_key)
            )
            count = self._delete(members, t=tag)
            self._redis.delete(tag_key)
            self._drop_own_copies(members)
            return count

        if self._l2_usable():
            try:
                dropped = self._guarded(drop)
            except Exception as exc:
                self._failed("tag invalidation", exc)
        else:
            self._refused()
        self._invalidated(tag=tag)
        return dropped

    def invalidate_pattern(self, pattern: str) -> int:
        """As TieredCache.invalidate_pattern."""
        matcher = _glob_regex(pattern)
        dropped = self._drop_local_matches(matcher)

        def drop() -> set[str]:
            found: set[str] = set()
            batch: list[str] = []
            match = _glob_escape(self._ns) + pattern
            for name in self._redis.scan_iter(match=match, count=1000):
                key = self._entry_key(name)
                if key is not None and key not in found:
                    found.add(key)
                    batch.append(key)
                    if len(batch) >= _PATTERN_BATCH:
                        self._delete(batch)
                        batch = []
            if batch:
                self._delete(batch)
            return found

        if self._l2_usable():
            try:
                dropped |= self._guarded(drop)
            except Exception as exc:
                self._failed("pattern invalidation", exc)
        else:
            self._refused()
        self._invalidated(pattern=pattern, count=len(dropped))
        return len(dropped)

    def clear(self) -> None:
        self._l1.clear()

        def clear() -> None:
            batch: list[Any] = []
            for name in self._redis.scan_iter(match=_glob_escape(self._ns) + "*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._unlink(batch)
                    batch = []
            if batch:
                self._unlink(batch)
            self._redis.publish(self._channel, self._message(c=1))

        if self._l2_usable():
            try:
                self._guarded(clear)
            except Exception as exc:
                self._failed("clear", exc)
        else:
            self._refused()
        self._invalidated(clear=True)

    def _unlink(self, names: list[Any]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.unlink(name)
        pipe.execute()

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        lock: bool = False,
        lock_timeout: float = LOCK_LEASE,
    ) -> Any:
        """As TieredCache.get_or_set, for threads: one loader call per key at a time in this
        process (and across processes with `lock=True`)."""
        value = self.get(key, _MISS)
        if value is not _MISS:
            return value
        with self._inflight_lock:
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = _Flight()
        if not leader:
            return flight.wait()
        try:
            if lock and self._l2_usable():
                value = self._load_leased(key, loader, ttl, tags, lock_timeout)
            else:
                value = self._load(key, loader, ttl, tags)
        except BaseException as exc:
            flight.fail(exc)
            raise
        else:
            flight.succeed(value)
        finally:
            with self._inflight_lock:
                del self._inflight[key]
        return value

    def _load(
        self, key: str, loader: Callable[[], Any], ttl: float | None, tags: Iterable[str]
    ) -> Any:
        value = loader()
        if value is None:
            if self._negative_ttl is not None:
                self.set(key, None, ttl=self._negative_ttl, tags=tags)
        else:
            self.set(key, value, ttl=ttl, tags=tags)
        return value

    def _load_leased(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: Iterable[str],
        lock_timeout: float,
    ) -> Any:
        lease_key = self._ns + _LOCK + key
        token = uuid.uuid4().hex
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                leased = self._guarded(
                    lambda: self._redis.set(lease_key, token, nx=True, px=int(lock_timeout * 1000))
                )
            except Exception as exc:
                self._failed("SET NX (lease)", exc)
                return self._load(key, loader, ttl, tags)
            if leased:
                try:
                    return self._load(key, loader, ttl, tags)
                finally:
                    with contextlib.suppress(Exception):
                        self._redis.eval(_RELEASE, 1, lease_key, token)
            while time.monotonic() < deadline:
                time.sleep(LOCK_POLL)
                value = self.get(key, _MISS)
                if value is not _MISS:
                    return value
                if not self._redis.exists(lease_key):
                    break
            else:
                raise TimeoutError(
                    f"another process held the lease on {key!r} for {lock_timeout} s "
                    "without storing a value"
                )


class _Flight:
    """One in-process loader call that other threads wait for."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def wait(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value
