"""Prometheus metrics over a Runtime's components: a custom collector that reads every
component's `stats()` snapshot at scrape time, so the hot paths keep no Prometheus objects and
pay nothing for being measured.

`register(runtime)` adds a `RuntimeCollector` to a registry (the default one unless told
otherwise); serve it with `prometheus_client`'s own exposition, or with `helixrt serve`
(`GET /metrics`). Every family is present from the first scrape, with zero values before its
component is first used; a scrape never creates a component. Names follow the original
system's documentation, prefixed `helixrt_` (`helixrt_worker_pool_active_workers`, ...).

Latencies are snapshots of recent samples (a mean and a p99), not Prometheus histograms: they
are exported as gauges with a `stat` label ("mean" or "p99").

This module does not serve HTTP (that is `helixrt.ops`) and does not keep history.
Needs `prometheus_client` (`pip install helixrt[metrics]`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from helixrt.codec import MissingDependencyError

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as _exc:
    raise MissingDependencyError(
        "helixrt.metrics needs the prometheus_client package: pip install helixrt[metrics]"
    ) from _exc

__all__ = ["RuntimeCollector", "register"]

log = logging.getLogger("helixrt.metrics")

_STATS = ("mean", "p99")
_BREAKER_STATES = ("closed", "open", "half_open")
# The states of helixrt.mcp.ServerState, listed here so that reading metrics never imports
# the MCP SDK.
_MCP_STATES = ("pending", "connecting", "connected", "failed", "closing", "closed")


class RuntimeLike(Protocol):
    """What the collector needs of a `helixrt.Runtime`."""

    def created(self, name: str) -> bool: ...
    def component(self, name: str) -> Any | None: ...


@dataclass(frozen=True, slots=True)
class _Plain:
    """A family with one unlabelled sample: `attr` of a stats snapshot (0 without one)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    attr: str


@dataclass(frozen=True, slots=True)
class _Latency:
    """A gauge family with a `stat` label, from the snapshot's mean and p99 attributes."""

    name: str
    help: str
    mean: str
    p99: str


_Spec = _Plain | _Latency


def _counter(name: str, help: str, attr: str) -> _Plain:
    return _Plain(name, "counter", help, attr)


def _gauge(name: str, help: str, attr: str) -> _Plain:
    return _Plain(name, "gauge", help, attr)


_WORKER_POOL: Sequence[_Spec] = (
    _counter(
        "helixrt_worker_pool_submitted_tasks", "Tasks accepted by the WorkerPool.", "submitted"
    ),
    _counter("helixrt_worker_pool_completed_tasks", "Tasks that returned.", "completed"),
    _counter("helixrt_worker_pool_failed_tasks", "Tasks that raised.", "failed"),
    _counter("helixrt_worker_pool_rejected_tasks", "Submits refused (queue full).", "rejected"),
    _counter("helixrt_worker_pool_dropped_tasks", "Queued tasks dropped (drop_oldest).", "dropped"),
    _counter("helixrt_worker_pool_cancelled_tasks", "Tasks cancelled before running.", "cancelled"),
    _counter("helixrt_worker_pool_timed_out_tasks", "Tasks past their timeout.", "timed_out"),
    _gauge("helixrt_worker_pool_active_workers", "Workers running a task now.", "active_workers"),
    _gauge("helixrt_worker_pool_queued_tasks", "Tasks waiting in the queue now.", "queued"),
    _gauge("helixrt_worker_pool_workers", "Worker threads started.", "workers"),
    _Latency(
        "helixrt_worker_pool_queue_wait_seconds",
        "Seconds from submit to start, over recent tasks.",
        "queue_wait_mean",
        "queue_wait_p99",
    ),
    _Latency(
        "helixrt_worker_pool_run_seconds",
        "Seconds from start to end, over recent tasks.",
        "run_time_mean",
        "run_time_p99",
    ),
)

_ASYNC_POOL: Sequence[_Spec] = (
    _counter(
        "helixrt_async_pool_submitted_jobs", "Jobs accepted by the AsyncWorkerPool.", "submitted"
    ),
    _counter("helixrt_async_pool_completed_jobs", "Jobs that returned.", "completed"),
    _counter("helixrt_async_pool_failed_jobs", "Jobs that raised.", "failed"),
    _counter("helixrt_async_pool_cancelled_jobs", "Jobs cancelled.", "cancelled"),
    _counter("helixrt_async_pool_timed_out_jobs", "Jobs cancelled by task_timeout.", "timed_out"),
    _counter("helixrt_async_pool_rejected_jobs", "Spawns refused (full or closed).", "rejected"),
    _gauge("helixrt_async_pool_active_jobs", "Jobs running now.", "active"),
    _gauge("helixrt_async_pool_pending_jobs", "Jobs not started yet.", "pending"),
    _Latency(
        "helixrt_async_pool_queue_wait_seconds",
        "Seconds from spawn to start, over recent jobs.",
        "queue_wait_seconds_mean",
        "queue_wait_seconds_p99",
    ),
    _Latency(
        "helixrt_async_pool_run_seconds",
        "Seconds from start to end, over recent jobs.",
        "run_seconds_mean",
        "run_seconds_p99",
    ),
)

_EVENT_BUS: Sequence[_Spec] = (
    _counter("helixrt_event_bus_events_published", "Events published on the bus.", "published"),
    _counter("helixrt_event_bus_events_delivered", "Events handed to subscribers.", "delivered"),
    _counter("helixrt_event_bus_events_dropped", "Events dropped by full mailboxes.", "dropped"),
    _gauge("helixrt_event_bus_subscribers_active", "Subscriptions now.", "subscribers_active"),
    _counter("helixrt_event_bus_subscribers", "Subscriptions ever made.", "subscribers_total"),
    _gauge(
        "helixrt_event_bus_lag_seconds",
        "Seconds the oldest event still pending in any mailbox has waited.",
        "lag",
    ),
)

_CACHE: Sequence[_Spec] = (
    _counter("helixrt_cache_l1_hits", "Tiered cache lookups answered by L1.", "l1_hits"),
    _counter("helixrt_cache_l1_misses", "Tiered cache lookups L1 could not answer.", "l1_misses"),
    _counter("helixrt_cache_l2_hits", "L1 misses answered by Redis.", "l2_hits"),
    _counter("helixrt_cache_l2_misses", "L1 misses Redis could not answer.", "l2_misses"),
    _gauge(
        "helixrt_cache_hit_ratio",
        "(L1 hits + L2 hits) / lookups since start; 0 before any.",
        "hit_ratio",
    ),
    _counter("helixrt_cache_l2_errors", "Redis operations that failed.", "l2_errors"),
    _counter(
        "helixrt_cache_decode_errors", "Redis values that could not be decoded.", "decode_errors"
    ),
    _counter(
        "helixrt_cache_l2_written_bytes",
        "Bytes of serialized values written to Redis, before compression.",
        "bytes_before",
    ),
    _counter(
        "helixrt_cache_l2_written_compressed_bytes",
        "Bytes of values written to Redis, after compression.",
        "bytes_after",
    ),
    _counter(
        "helixrt_cache_invalidations_sent",
        "Invalidation messages announced to other instances.",
        "invalidations_sent",
    ),
    _counter(
        "helixrt_cache_invalidations_received",
        "Invalidation messages applied from other instances.",
        "invalidations_received",
    ),
    _counter("helixrt_cache_batched_gets", "Gets that shared an MGET round trip.", "batched_gets"),
)

_L1: Sequence[_Spec] = (
    _gauge("helixrt_cache_l1_entries", "Entries in L1 now.", "size"),
    _gauge("helixrt_cache_l1_weight", "Total weight of L1's entries now.", "weight"),
    _counter("helixrt_cache_l1_inserts", "New entries put in L1.", "inserts"),
    _counter("helixrt_cache_l1_updates", "L1 entries replaced.", "updates"),
    _counter("helixrt_cache_l1_evictions", "L1 entries evicted by its bounds.", "evictions"),
    _counter("helixrt_cache_l1_expirations", "L1 entries past their TTL.", "expirations"),
    _counter(
        "helixrt_cache_l1_invalidations",
        "L1 entries removed by delete, clear or tag invalidation.",
        "invalidations",
    ),
)

_BREAKER: Sequence[_Spec] = (
    _counter("helixrt_cache_l2_breaker_calls", "Calls through the L2 circuit breaker.", "calls"),
    _counter(
        "helixrt_cache_l2_breaker_successes", "Calls the L2 breaker saw succeed.", "successes"
    ),
    _counter("helixrt_cache_l2_breaker_failures", "Calls the L2 breaker saw fail.", "failures"),
    _counter(
        "helixrt_cache_l2_breaker_rejected", "Calls refused by the open L2 breaker.", "rejected"
    ),
    _counter(
        "helixrt_cache_l2_breaker_state_changes",
        "State changes of the L2 breaker.",
        "state_changes",
    ),
)

_HTTP_POOL: Sequence[_Spec] = (
    _gauge(
        "helixrt_http_pool_connections",
        "Per-origin pooled sessions open (the original's client count).",
        "sessions",
    ),
    _counter(
        "helixrt_http_pool_requests", "HTTPPool requests (a retried one counts once).", "requests"
    ),
    _counter("helixrt_http_pool_retries", "Extra attempts made by retries.", "retries"),
    _counter(
        "helixrt_http_pool_connect_errors", "Attempts that failed to connect.", "errors_connect"
    ),
    _counter("helixrt_http_pool_timeout_errors", "Attempts that timed out.", "errors_timeout"),
    _counter("helixrt_http_pool_status_4xx", "Attempts answered with a 4xx.", "errors_status_4xx"),
    _counter("helixrt_http_pool_status_5xx", "Attempts answered with a 5xx.", "errors_status_5xx"),
    _counter("helixrt_http_pool_rejected", "Requests refused by an open breaker.", "rejected"),
    _gauge("helixrt_http_pool_in_flight_requests", "Requests under way now.", "in_flight"),
    _Latency(
        "helixrt_http_pool_latency_seconds",
        "Seconds to the final response's headers (mean over all, p99 over recent).",
        "latency_mean_seconds",
        "latency_p99_seconds",
    ),
)

# Per-origin families (label `host`), from HTTPStats.hosts.
_HTTP_HOST: Sequence[_Spec] = (
    _counter("helixrt_http_pool_host_requests", "Requests to one origin.", "requests"),
    _counter("helixrt_http_pool_host_retries", "Retries to one origin.", "retries"),
    _counter("helixrt_http_pool_host_connect_errors", "Connect failures.", "errors_connect"),
    _counter("helixrt_http_pool_host_timeout_errors", "Timeouts.", "errors_timeout"),
    _counter("helixrt_http_pool_host_status_4xx", "4xx responses.", "errors_status_4xx"),
    _counter("helixrt_http_pool_host_status_5xx", "5xx responses.", "errors_status_5xx"),
    _counter("helixrt_http_pool_host_rejected", "Requests refused by its breaker.", "rejected"),
    _gauge("helixrt_http_pool_host_in_flight_requests", "Requests under way now.", "in_flight"),
    _Latency(
        "helixrt_http_pool_host_latency_seconds",
        "Seconds to the final response's headers, per origin.",
        "latency_mean_seconds",
        "latency_p99_seconds",
    ),
)

_PREINSTALLER: Sequence[_Spec] = (
    _counter("helixrt_mcp_installs", "Package installs the Preinstaller ran.", "installs"),
    _counter("helixrt_mcp_install_seconds", "Seconds spent in those installs.", "install_seconds"),
)

_MCP_SERVER: Sequence[_Spec] = (
    _counter("helixrt_mcp_calls", "Tool calls to one MCP server.", "calls"),
    _counter("helixrt_mcp_call_failures", "Calls that failed (transport, timeout).", "failures"),
    _counter("helixrt_mcp_tool_errors", "Calls the tool answered with an error.", "tool_errors"),
    _counter("helixrt_mcp_restarts", "Restarts of the server process.", "restarts"),
    _counter(
        "helixrt_mcp_stdout_garbage", "Lines on stdout that were not JSON-RPC.", "stdout_garbage"
    ),
    _gauge("helixrt_mcp_inflight_calls", "Calls under way now.", "inflight"),
    _Latency(
        "helixrt_mcp_call_latency_seconds",
        "Seconds per tool call, over the last 1024 calls.",
        "latency_mean",
        "latency_p99",
    ),
)


def _value(stats: object | None, attr: str) -> float:
    return 0.0 if stats is None else float(getattr(stats, attr))


def _family(spec: _Spec, labels: Sequence[str] = ()) -> Metric:
    if isinstance(spec, _Latency):
        return GaugeMetricFamily(spec.name, spec.help, labels=[*labels, "stat"])
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=list(labels))
    return GaugeMetricFamily(spec.name, spec.help, labels=list(labels))


def _add(family: Metric, spec: _Spec, stats: object | None, labels: Sequence[str] = ()) -> None:
    add: Callable[[Sequence[str], float], None] = family.add_metric  # type: ignore[attr-defined]
    if isinstance(spec, _Latency):
        add([*labels, "mean"], _value(stats, spec.mean))
        add([*labels, "p99"], _value(stats, spec.p99))
    else:
        add(list(labels), _value(stats, spec.attr))


def _plain(specs: Sequence[_Spec], stats: object | None) -> Iterator[Metric]:
    """One family per spec, each with the snapshot's value (zeros without a snapshot)."""
    for spec in specs:
        family = _family(spec)
        _add(family, spec, stats)
        yield family


def _labelled(specs: Sequence[_Spec], label: str, snapshots: dict[str, Any]) -> Iterator[Metric]:
    """One family per spec, with a sample for each labelled snapshot (none before any)."""
    for spec in specs:
        family = _family(spec, [label])
        for key, stats in sorted(snapshots.items()):
            _add(family, spec, stats, [key])
        yield family


def _state_set(
    name: str,
    help: str,
    states: Sequence[str],
    current: dict[tuple[str, ...], str | None],
    labels: Sequence[str] = (),
) -> Metric:
    """A gauge with a `state` label: 1 for each key's current state, 0 for the others."""
    family = GaugeMetricFamily(name, help, labels=[*labels, "state"])
    for key, state in sorted(current.items()):
        known = list(states) if state in states or state is None else [*states, state]
        for candidate in known:
            family.add_metric([*key, candidate], 1.0 if candidate == state else 0.0)
    return family


class RuntimeCollector(Collector):
    """A `prometheus_client` collector over a `helixrt.Runtime`'s components.

    `collect()` reads the `stats()` of each component the runtime has created (zeros for the
    others: a scrape never creates one). A component whose `stats()` raises is logged and left
    out of that scrape, rather than reported as zeros that would look like counter resets.
    """

    def __init__(self, runtime: RuntimeLike) -> None:
        self._runtime = runtime

    def describe(self) -> Iterator[Metric]:
        """The families, without touching the runtime (for the registry's name checks)."""
        return self._families(lambda _name: None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._component)

    def _component(self, name: str) -> Any | None:
        if not self._runtime.created(name):
            return None
        return self._runtime.component(name)

    def _families(self, component: Callable[[str], Any | None]) -> Iterator[Metric]:
        sections: Sequence[tuple[str, Callable[[Any | None], Iterator[Metric]]]] = (
            ("worker_pool", self._worker_pool),
            ("async_pool", self._async_pool),
            ("bus", self._event_bus),
            ("cache", self._cache),
            ("http", self._http_pool),
            ("providers", self._providers),
            ("preinstaller", self._preinstaller),
            ("mcp", self._mcp),
        )
        for name, section in sections:
            # Built in full before any is yielded, so a failure leaves out the whole section.
            try:
                families = list(section(component(name)))
            except Exception:
                log.warning(
                    "reading the stats of %s failed; left out of this scrape", name, exc_info=True
                )
                continue
            yield from families

    @staticmethod
    def _stats(obj: Any | None) -> Any | None:
        return None if obj is None else obj.stats()

    def _worker_pool(self, pool: Any | None) -> Iterator[Metric]:
        return _plain(_WORKER_POOL, self._stats(pool))

    def _async_pool(self, pool: Any | None) -> Iterator[Metric]:
        return _plain(_ASYNC_POOL, self._stats(pool))

    def _event_bus(self, bus: Any | None) -> Iterator[Metric]:
        return _plain(_EVENT_BUS, self._stats(bus))

    def _cache(self, cache: Any | None) -> Iterator[Metric]:
        stats = self._stats(cache)
        l1 = getattr(cache, "l1", None)
        breaker = getattr(cache, "breaker", None)
        breaker_stats = self._stats(breaker)
        families = [
            *_plain(_CACHE, stats),
            *_plain(_L1, self._stats(l1)),
            *_plain(_BREAKER, breaker_stats),
            _state_set(
                "helixrt_cache_l2_breaker_state",
                "The L2 circuit breaker's state (1 for the current one).",
                _BREAKER_STATES,
                {(): "closed" if breaker_stats is None else breaker_stats.state},
            ),
        ]
        return iter(families)

    def _http_pool(self, pool: Any | None) -> Iterator[Metric]:
        stats = self._stats(pool)
        hosts: dict[str, Any] = {} if stats is None else dict(stats.hosts)
        breakers: dict[tuple[str, ...], str | None] = {
            (host,): s.breaker_state for host, s in hosts.items() if s.breaker_state is not None
        }
        return iter(
            [
                *_plain(_HTTP_POOL, stats),
                *_labelled(_HTTP_HOST, "host", hosts),
                _state_set(
                    "helixrt_http_pool_host_breaker_state",
                    "Each origin's circuit breaker state (1 for the current one).",
                    _BREAKER_STATES,
                    breakers,
                    ["host"],
                ),
            ]
        )

    def _providers(self, registry: Any | None) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "helixrt_providers_registered", "Providers registered in the ProviderRegistry."
        )
        family.add_metric([], 0.0 if registry is None else float(len(registry.names())))
        yield family

    def _preinstaller(self, preinstaller: Any | None) -> Iterator[Metric]:
        stats = self._stats(preinstaller)
        packages = GaugeMetricFamily(
            "helixrt_mcp_packages",
            "MCP server packages by install state now.",
            labels=["state"],
        )
        for state in ("installed", "failed", "installing", "queued"):
            packages.add_metric([state], _value(stats, state))
        return iter([packages, *_plain(_PREINSTALLER, stats)])

    def _mcp(self, pool: Any | None) -> Iterator[Metric]:
        servers: dict[str, Any] = {} if pool is None else dict(pool.stats())
        active = GaugeMetricFamily("helixrt_mcp_active_connections", "MCP servers connected now.")
        active.add_metric([], float(sum(s.state == "connected" for s in servers.values())))
        configured = GaugeMetricFamily("helixrt_mcp_servers", "MCP servers configured.")
        configured.add_metric([], float(len(servers)))
        status = _state_set(
            "helixrt_mcp_connection_status",
            "Each MCP server's state (1 for the current one).",
            _MCP_STATES,
            {(name,): str(s.state) for name, s in servers.items()},
            ["server"],
        )
        return iter([active, configured, status, *_labelled(_MCP_SERVER, "server", servers)])


def register(runtime: RuntimeLike, registry: CollectorRegistry = REGISTRY) -> RuntimeCollector:
    """Registers a `RuntimeCollector` over `runtime` with `registry` and returns it (unregister
    it with `registry.unregister(collector)`)."""
    collector = RuntimeCollector(runtime)
    registry.register(collector)
    return collector
