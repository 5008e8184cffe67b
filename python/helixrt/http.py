"""The HTTP client pool: per-host aiohttp sessions made on first use, retries, a breaker per host.

`HTTPPool` owns one `aiohttp.ClientSession` (with its own `TCPConnector`) per origin
(`scheme://host:port`), created the first time that origin is used and closed with the pool.
Every request goes through the pool-wide `limit`, the origin's `limit_per_host`, the origin's
circuit breaker and the pool's `RetryPolicy`. `stats()` gives a frozen snapshot per origin and in
total.

Bound to the event loop it is first used on (as aiohttp sessions are). Request bodies must be
replayable to be retried (bytes, str, a dict for `json=` or `data=`): a stream or an async
generator is sent once, so pass `idempotent=False` for those (the default for POST).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from helixrt._stats import p99
from helixrt.breaker import CircuitBreaker
from helixrt.errors import CircuitOpenError, InvalidArgumentError, PoolClosedError
from helixrt.retries import RetryPolicy

__all__ = ["HTTPPool", "HTTPStats", "HostStats"]

logger = logging.getLogger("helixrt.http")

_LATENCY_SAMPLES = 1024  # the p99 is computed over the last this many requests of an origin
_PARSED_URLS = 1024  # URLs whose parse is kept (see HTTPPool._parsed)
_ERROR_BODY_BYTES = 512  # how much of a refused answer's body its ClientResponseError quotes
_CONNECTION_PROBE = ConnectionError()  # asks the policy whether connection errors are retried


@dataclass(frozen=True, slots=True)
class HostStats:
    """A snapshot of one origin's counters (monotonic) and gauges.

    `requests`: `request()` calls (a retried request counts once); `retries`: the extra
    attempts; `errors_connect` / `errors_timeout`: attempts that failed to connect or were
    disconnected / timed out; `errors_status_4xx` / `errors_status_5xx`: responses with such a
    status (each attempt counts); `rejected`: requests refused by the open breaker; latency:
    seconds from the call to the final response's headers (mean over all, p99 over the last
    1024); `breaker_state`: "closed", "open", "half_open", or None without a breaker.
    """

    host: str
    requests: int
    retries: int
    errors_connect: int
    errors_timeout: int
    errors_status_4xx: int
    errors_status_5xx: int
    rejected: int
    in_flight: int
    latency_mean_seconds: float
    latency_p99_seconds: float
    breaker_state: str | None


@dataclass(frozen=True, slots=True)
class HTTPStats:
    """A snapshot of the whole pool: the totals, and `hosts` (origin -> `HostStats`)."""

    requests: int
    retries: int
    errors_connect: int
    errors_timeout: int
    errors_status_4xx: int
    errors_status_5xx: int
    rejected: int
    in_flight: int
    latency_mean_seconds: float
    latency_p99_seconds: float
    sessions: int
    hosts: Mapping[str, HostStats]


class _Counters:
    __slots__ = (
        "connect",
        "in_flight",
        "latencies",
        "latency_count",
        "latency_sum",
        "rejected",
        "requests",
        "retries",
        "status_4xx",
        "status_5xx",
        "timeout",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.connect = 0
        self.timeout = 0
        self.status_4xx = 0
        self.status_5xx = 0
        self.rejected = 0
        self.in_flight = 0
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)


def _origin(url: URL, argument: str) -> str:
    if not url.absolute or not url.host:
        raise InvalidArgumentError(
            f"{argument} must be an absolute http:// or https:// URL, got a relative one"
        )
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidArgumentError(
            f"{argument} must be an http:// or https:// URL, got scheme {scheme!r}"
        )
    host = url.host
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{url.port}"


def _number(name: str, value: object, *, minimum: float, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
        or (minimum == 0 and value == 0 and name.endswith("_timeout"))
    ):
        accepted = "a positive number of seconds" if name.endswith("timeout") else "a number"
        if not name.endswith("timeout"):
            accepted += f" >= {minimum:g}"
        raise InvalidArgumentError(
            f"{name} must be {accepted}{' or None' if optional else ''}, got {value!r}"
        )
    return float(value)


def _count(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
    return value


class HTTPPool:
    """`HTTPPool(*, limit=100, limit_per_host=10, keepalive_timeout=90.0, connect_timeout=10.0,
    read_timeout=60.0, total_timeout=None, retry=RetryPolicy(), breaker_per_host=True,
    dns_cache_ttl=300, headers=None, breaker_options=None, bus=None)`

    - `limit`: requests in flight at once over the whole pool (aiohttp's default, 100);
      `limit_per_host`: connections per origin (aiohttp's default of 0, unlimited, lets one slow
      host take every socket). A request holds its slots until its response is released.
    - `keepalive_timeout`: seconds an idle connection is kept for reuse (the original's 90 s).
    - `connect_timeout`: seconds to open a connection, not counting the wait for a free slot
      (aiohttp's `connect` counts that wait, aio-libs/aiohttp#5415: a busy pool then looks like
      a dead host). `read_timeout`: seconds between two reads of the socket, so a long stream
      that keeps sending is never cut. `total_timeout`: seconds for the whole request, body
      included, or None (the default: aiohttp's 300 s cuts streams off).
    - `retry`: the `RetryPolicy` (and nothing else: aiohttp's own silent repeat of a request on
      a stale kept-alive connection is turned off, so a server sees at most `max_attempts`
      requests; a stale connection is a `ServerDisconnectedError` the policy retries for
      idempotent methods). Connection errors (aiohttp's `ClientConnectionError`s, taken
      as `ConnectionError` by the policy's `retry_on`), timeouts and the policy's
      `retry_statuses` are retried for its `retry_methods` (POST never, unless the call says
      `idempotent=True`), after `policy.delay()`, which honours `Retry-After` up to the cap.
    - `breaker_per_host`: a `CircuitBreaker(f"http:{origin}", **breaker_options)` per origin
      (defaults: 5 failures, 30 s). Connection errors, timeouts and 5xx answers are failures,
      other answers (4xx included: the host is up) successes; while it is open `request()`
      raises `CircuitOpenError` without touching the network.
    - `dns_cache_ttl`: seconds DNS answers are cached (0: not cached; aiohttp's None caches
      forever, aio-libs/aiohttp#1914). `headers`: sent with every request.
    - `bus`: an EventBus on which the hosts' breakers announce their changes of state
      (`breaker.state.changed`): a host going down, or coming back.

    `async with HTTPPool() as pool:` closes every session (and waits for the connectors) on
    exit; `await pool.aclose()` does the same. Bad arguments raise `InvalidArgumentError`
    naming the argument. Logs go to `helixrt.http`, with origins and paths only (no query
    strings, no headers).
    """

    def __init__(
        self,
        *,
        limit: int = 100,
        limit_per_host: int = 10,
        keepalive_timeout: float = 90.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        breaker_per_host: bool = True,
        dns_cache_ttl: float = 300,
        headers: Mapping[str, str] | None = None,
        breaker_options: Mapping[str, Any] | None = None,
        bus: Any = None,
    ) -> None:
        self._limit = _count("limit", limit)
        self._limit_per_host = _count("limit_per_host", limit_per_host)
        self._keepalive_timeout = _number("keepalive_timeout", keepalive_timeout, minimum=0)
        self._connect_timeout = _number("connect_timeout", connect_timeout, minimum=0)
        self._read_timeout = _number("read_timeout", read_timeout, minimum=0)
        self._total_timeout = _number("total_timeout", total_timeout, minimum=0, optional=True)
        dns = _number("dns_cache_ttl", dns_cache_ttl, minimum=0)
        assert dns is not None
        self._dns_cache_ttl = dns
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self._retry = retry
        # Looked up on every response: sets made once, not the policy's tuples each time.
        self._retry_statuses = frozenset(retry.retry_statuses)
        self._retry_methods = frozenset(retry.retry_methods)
        if type(breaker_per_host) is not bool:
            raise InvalidArgumentError(
                f"breaker_per_host must be True or False, got {breaker_per_host!r}"
            )
        self._breaker_per_host = breaker_per_host
        if headers is not None and not isinstance(headers, Mapping):
            raise InvalidArgumentError(
                f"headers must be a mapping of str to str or None, got {type(headers).__name__}"
            )
        self._headers = dict(headers) if headers is not None else None
        if breaker_options is not None and not isinstance(breaker_options, Mapping):
            raise InvalidArgumentError(
                "breaker_options must be a mapping of CircuitBreaker keyword arguments or None, "
                f"got {type(breaker_options).__name__}"
            )
        self._breaker_options = dict(breaker_options or {})
        if bus is not None:
            self._breaker_options["bus"] = bus
        if self._breaker_options:
            try:  # checked now, not at the first request
                CircuitBreaker("http:check", **self._breaker_options)
            except TypeError as error:
                raise InvalidArgumentError(
                    f"breaker_options must be CircuitBreaker keyword arguments: {error}"
                ) from None
        self._timeout = aiohttp.ClientTimeout(
            total=self._total_timeout,
            sock_connect=self._connect_timeout,
            sock_read=self._read_timeout,
        )
        # Spelling as given (or origin) -> session; several spellings may share one session.
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._urls: dict[str, tuple[URL, str]] = {}
        self._by_origin: dict[str, aiohttp.ClientSession] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._counters: dict[str, _Counters] = {}
        self._slots = _Slots(self._limit)
        self._closed = False

    # --------------------------------------------------------------------------- sessions

    def session(self, host: str) -> aiohttp.ClientSession:
        """The session for `host` ("scheme://host:port"; the port may be left out), made on the
        first call (inside a running event loop) and the same object on every later one."""
        try:
            return self._sessions[host]
        except KeyError:
            return self._new_session(host)

    def _new_session(self, host: str) -> aiohttp.ClientSession:
        if self._closed:
            raise PoolClosedError("the HTTPPool is closed")
        if not isinstance(host, str):
            raise InvalidArgumentError(
                f"host must be a str 'scheme://host:port', got {type(host).__name__}"
            )
        url = URL(host)
        origin = _origin(url, "host")
        if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
            raise InvalidArgumentError(
                "host must be 'scheme://host:port' with no path, query or fragment"
            )
        session = self._by_origin.get(origin)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit_per_host,
                limit_per_host=self._limit_per_host,
                keepalive_timeout=self._keepalive_timeout,
                use_dns_cache=self._dns_cache_ttl > 0,
                ttl_dns_cache=math.ceil(self._dns_cache_ttl) if self._dns_cache_ttl > 0 else None,
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
            # aiohttp silently repeats an idempotent request once when a reused connection
            # turns out closed; the policy does the retrying here, so that max_attempts is what
            # the server sees.
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            self._by_origin[origin] = session
            self._counters.setdefault(origin, _Counters())
            if self._breaker_per_host:
                self._breakers[origin] = CircuitBreaker(f"http:{origin}", **self._breaker_options)
            logger.debug("opened a session to %s", origin)
        self._sessions[host] = session
        return session

    @staticmethod
    def origin(url: str | URL) -> str:
        """The origin of `url`, "scheme://host:port" with the port written out: what its
        requests share (a session, a breaker) and the key of `stats().hosts`."""
        if not isinstance(url, str | URL):
            raise InvalidArgumentError(f"url must be a str or a yarl.URL, got {url!r}")
        return _origin(URL(url) if isinstance(url, str) else url, "url")

    def breaker(self, url: str | URL) -> CircuitBreaker | None:
        """The circuit breaker of the host of `url` (any URL on it; made with its session), or
        None without breakers."""
        if not self._breaker_per_host:
            return None
        origin = self.origin(url)
        self.session(origin)
        return self._breakers[origin]

    # --------------------------------------------------------------------------- requests

    def request(
        self, method: str, url: str | URL, *, idempotent: bool = False, **kwargs: Any
    ) -> _RequestContext:
        """`async with pool.request("GET", url) as response:` the aiohttp `ClientResponse` of
        the last attempt, whatever its status (after the retries the policy allows).
        `idempotent=True` allows retrying a method outside the policy's `retry_methods` (a POST
        with an idempotency key). Other keyword arguments go to `ClientSession.request`."""
        method, parsed, origin = self._target(method, url, idempotent)
        return _RequestContext(self, method, parsed, origin, idempotent, kwargs)

    def _target(self, method: str, url: str | URL, idempotent: bool) -> tuple[str, URL, str]:
        """Checks a request's arguments: (the method in capitals, the parsed URL, its origin)."""
        if not isinstance(method, str) or not method:
            raise InvalidArgumentError(f"method must be a non-empty str, got {method!r}")
        return (method.upper(), *self._url_target(url, idempotent))

    def _url_target(self, url: str | URL, idempotent: bool) -> tuple[URL, str]:
        """Checks a request's URL and `idempotent`: (the parsed URL, its origin)."""
        if type(url) is str and idempotent is False and not self._closed:
            found = self._urls.get(url)  # the usual case: a URL called before
            if found is not None:
                return found
        if type(idempotent) is not bool:
            raise InvalidArgumentError(f"idempotent must be True or False, got {idempotent!r}")
        if self._closed:
            raise PoolClosedError("the HTTPPool is closed")
        if isinstance(url, str):
            return self._parsed(url)
        if isinstance(url, URL):
            return url, _origin(url, "url")
        raise InvalidArgumentError(f"url must be a str or a yarl.URL, got {url!r}")

    def _parsed(self, url: str) -> tuple[URL, str]:
        """The parsed URL and its origin. Services call the same few URLs over and over, and
        parsing costs more than the rest of a request's bookkeeping: the last ones are kept."""
        parsed = self._urls.get(url)
        if parsed is None:
            parsed_url = URL(url)
            parsed = (parsed_url, _origin(parsed_url, "url"))
            if len(self._urls) >= _PARSED_URLS:
                self._urls.clear()
            self._urls[url] = parsed
        return parsed

    # get_json and post_json are plain methods returning the coroutine of `_send`: every
    # coroutine between a caller and the socket is resumed on each of the request's waits, and
    # one fewer is worth about 3% of a busy client's throughput. Their arguments are checked
    # when they are called.
    def get_json(
        self, url: str | URL, *, idempotent: bool = False, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """`await pool.get_json(url)`: GET `url` and return its decoded JSON;
        `aiohttp.ClientResponseError` for an answer that is not 2xx after the retries."""
        parsed, origin = self._url_target(url, idempotent)
        return self._send("GET", parsed, origin, idempotent, kwargs, True)

    def post_json(
        self, url: str | URL, json: Any = None, *, idempotent: bool = False, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """`await pool.post_json(url, json=...)`: POST `json` to `url` and return the decoded
        JSON answer; `ClientResponseError` for an answer that is not 2xx. Retried only with
        `idempotent=True`."""
        kwargs["json"] = json
        parsed, origin = self._url_target(url, idempotent)
        return self._send("POST", parsed, origin, idempotent, kwargs, True)

    async def _send(
        self,
        method: str,
        url: URL,
        origin: str,
        idempotent: bool,
        kwargs: dict[str, Any],
        decode: bool = False,
    ) -> Any:
        """Sends with retries. Returns the last attempt's response, which holds one of the
        pool's slots until `_release`; or with `decode`, its decoded JSON (released here)."""
        session = self._sessions.get(origin) or self.session(origin)
        counters = self._counters[origin]
        breaker = self._breakers.get(origin)
        policy = self._retry
        started = time.monotonic()
        counters.requests += 1
        attempt = 1
        while True:
            permit = None
            if breaker is not None:
                try:
                    permit = breaker._acquire()
                except CircuitOpenError:
                    counters.rejected += 1
                    raise
            if not self._slots.take_now():
                try:
                    await self._slots.take()
                except BaseException as error:  # cancelled while waiting: give the permit back
                    if breaker is not None and permit is not None:
                        breaker._record(permit, error)
                    raise
            counters.in_flight += 1
            try:
                # A call without `**{}` when there is nothing to pass: it skips building the
                # arguments anew on every request.
                response = await (
                    session.request(method, url, **kwargs)
                    if kwargs
                    else session.request(method, url)
                )
            except BaseException as error:
                counters.in_flight -= 1
                self._slots.give()
                network = isinstance(error, aiohttp.ClientConnectionError | TimeoutError)
                if isinstance(error, TimeoutError):
                    counters.timeout += 1
                elif network:
                    counters.connect += 1
                if breaker is not None and permit is not None:
                    # Only the network's failures count: a caller's mistake (a bad argument)
                    # says nothing of the host. A cancellation is passed on: the breaker
                    # counts it neither way.
                    failed = network or not isinstance(error, Exception)
                    breaker._record(permit, error if failed else None)
                if not (
                    network
                    and attempt < policy.max_attempts
                    and (idempotent or method in self._retry_methods)
                    and self._exception_retryable(error)
                ):
                    raise
                delay = policy.delay(attempt)
                if self._past_deadline(started, delay):
                    raise
                reason = type(error).__name__
            else:
                status = response.status
                if status >= 500:
                    counters.status_5xx += 1
                elif status >= 400:
                    counters.status_4xx += 1
                if breaker is not None and permit is not None:
                    breaker._record(permit, _StatusError(status) if status >= 500 else None)
                delay = 0.0
                final = not (
                    status in self._retry_statuses
                    and attempt < policy.max_attempts
                    and (idempotent or method in self._retry_methods)
                )
                if not final:
                    retry_after = policy.retry_after_seconds(response.headers.get("Retry-After"))
                    delay = policy.delay(attempt, retry_after)
                    final = self._past_deadline(started, delay)
                if final:
                    elapsed = time.monotonic() - started
                    counters.latency_sum += elapsed
                    counters.latency_count += 1
                    counters.latencies.append(elapsed)
                    break
                reason = f"status {status}"
                response.release()
                counters.in_flight -= 1
                self._slots.give()
            logger.debug(
                "retrying %s %s%s in %.3f s: attempt %d of %d got %s",
                method,
                origin,
                url.raw_path,
                delay,
                attempt,
                policy.max_attempts,
                reason,
            )
            counters.retries += 1
            attempt += 1
            await asyncio.sleep(delay)
        if not decode:
            return response
        # `_release` written out: a coroutine fewer on every get_json.
        failure: BaseException | None = None
        try:
            if not 200 <= status < 300:
                raise await _status_error(response)
            return await response.json()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                if failure is not None:
                    self._count_error(origin, failure)
                response.release()
                await response.wait_for_close()
            finally:
                counters.in_flight -= 1
                self._slots.give()

    def _past_deadline(self, started: float, delay: float) -> bool:
        """Whether a retry after `delay` would end past the policy's total_timeout."""
        total = self._retry.total_timeout
        return total is not None and time.monotonic() + delay > started + total

    def _exception_retryable(self, error: BaseException) -> bool:
        policy = self._retry
        if policy.should_retry_exception(error):
            return True
        return (
            isinstance(error, aiohttp.ClientConnectionError)
            and not isinstance(error, TimeoutError)
            and policy.should_retry_exception(_CONNECTION_PROBE)
        )

    async def _release(
        self, response: aiohttp.ClientResponse, origin: str, error: BaseException | None
    ) -> None:
        """Gives a finished request's connection and slot back; counts the error it ended with."""
        try:
            self._count_error(origin, error)
            response.release()
            await response.wait_for_close()
        finally:
            self._done(origin)

    def _count_error(self, origin: str, error: BaseException | None) -> None:
        """Counts the network error a request ended with while its body was read."""
        if isinstance(error, TimeoutError):
            self._counters[origin].timeout += 1
        elif isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            self._counters[origin].connect += 1

    def _done(self, origin: str) -> None:
        self._counters[origin].in_flight -= 1
        self._slots.give()

    # --------------------------------------------------------------------------- stats, close

    def stats(self) -> HTTPStats:
        """A snapshot per origin and in total (cheap: no locks, a sort of at most 1024 samples
        per origin)."""
        hosts: dict[str, HostStats] = {}
        every: list[float] = []
        for origin, c in self._counters.items():
            samples = list(c.latencies)
            every.extend(samples)
            breaker = self._breakers.get(origin)
            hosts[origin] = HostStats(
                host=origin,
                requests=c.requests,
                retries=c.retries,
                errors_connect=c.connect,
                errors_timeout=c.timeout,
                errors_status_4xx=c.status_4xx,
                errors_status_5xx=c.status_5xx,
                rejected=c.rejected,
                in_flight=c.in_flight,
                latency_mean_seconds=c.latency_sum / c.latency_count if c.latency_count else 0.0,
                latency_p99_seconds=p99(samples),
                breaker_state=None if breaker is None else breaker.state,
            )
        values = list(self._counters.values())
        count = sum(c.latency_count for c in values)
        return HTTPStats(
            requests=sum(c.requests for c in values),
            retries=sum(c.retries for c in values),
            errors_connect=sum(c.connect for c in values),
            errors_timeout=sum(c.timeout for c in values),
            errors_status_4xx=sum(c.status_4xx for c in values),
            errors_status_5xx=sum(c.status_5xx for c in values),
            rejected=sum(c.rejected for c in values),
            in_flight=sum(c.in_flight for c in values),
            latency_mean_seconds=sum(c.latency_sum for c in values) / count if count else 0.0,
            latency_p99_seconds=p99(every),
            sessions=len(self._by_origin),
            hosts=hosts,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Closes every session and waits for their connectors to close; idempotent. Later
        requests raise `PoolClosedError`."""
        self._closed = True
        sessions = list(self._by_origin.values())
        self._sessions.clear()
        self._by_origin.clear()
        for session in sessions:
            await session.close()
        if sessions:
            logger.debug("closed %d sessions", len(sessions))

    async def __aenter__(self) -> HTTPPool:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._by_origin)} sessions"
        return f"<HTTPPool {state}, limit={self._limit}, limit_per_host={self._limit_per_host}>"


class _StatusError(Exception):
    """What a 5xx answer counts as in the breaker (never raised)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Slots:
    """The pool-wide limit on requests in flight. Taking a free slot costs no await (an
    asyncio.Semaphore's acquire is a coroutine even then); a released slot goes straight to
    the longest waiter."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as this waiter was cancelled: pass it on
            raise

    def give(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # a cancelled waiter is done already
                waiter.set_result(None)
                return
        self.free += 1


class _RequestContext:
    """`async with pool.request(...) as response`: sends on entry, releases on exit."""

    __slots__ = ("_idempotent", "_kwargs", "_method", "_origin", "_pool", "_response", "_url")

    def __init__(
        self,
        pool: HTTPPool,
        method: str,
        url: URL,
        origin: str,
        idempotent: bool,
        kwargs: dict[str, Any],
    ) -> None:
        self._pool = pool
        self._method = method
        self._url = url
        self._origin = origin
        self._idempotent = idempotent
        self._kwargs = kwargs
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._response = await self._pool._send(
            self._method, self._url, self._origin, self._idempotent, self._kwargs
        )
        return self._response

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        response = self._response
        if response is None:
            return
        self._response = None
        await self._pool._release(response, self._origin, error)


async def _status_error(response: aiohttp.ClientResponse) -> aiohttp.ClientResponseError:
    """The error for an answer that is not 2xx, its message ending with the start of the body:
    an API says there why it refused (`{"error": {"message": "model not found"}}`)."""
    try:
        body = await response.content.read(_ERROR_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    said = " ".join(body.decode("utf-8", "replace").split())
    reason = response.reason or ""
    return aiohttp.ClientResponseError(
        response.request_info,
        response.history,
        status=response.status,
        message=f"{reason}: {said}" if said else reason,
        headers=response.headers,
    )
