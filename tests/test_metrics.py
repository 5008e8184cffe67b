"""helixrt.metrics: the Prometheus collector over a Runtime's components, scraped for real."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helixrt.metrics import RuntimeCollector, register
from helixrt.runtime import Runtime

# The families the issue names, each with the sample a scrape must show (counters with _total).
LISTED = [
    "helixrt_worker_pool_active_workers",
    "helixrt_worker_pool_queued_tasks",
    "helixrt_worker_pool_completed_tasks_total",
    "helixrt_event_bus_events_published_total",
    "helixrt_event_bus_events_delivered_total",
    "helixrt_event_bus_events_dropped_total",
    "helixrt_cache_l1_hits_total",
    "helixrt_cache_l1_misses_total",
    "helixrt_cache_l2_hits_total",
    "helixrt_cache_l2_misses_total",
    "helixrt_cache_hit_ratio",
    "helixrt_http_pool_connections",
    "helixrt_mcp_active_connections",
]


def runtime_with_redis(tmp_path: Path, redis_url: str) -> Runtime:
    config = tmp_path / "helixrt.toml"
    config.write_text("")
    env = {"HELIXRT_CACHE_L2_URL": redis_url, "HELIXRT_CACHE_L2_KEY_PREFIX": f"{tmp_path.name}:"}
    return Runtime.from_file(config, env=env)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of a scrape, by name and labels: `name{a="b"}` -> value."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def families(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_every_family_is_there_with_zeros_before_use_and_scrapes_create_nothing() -> None:
    rt = Runtime()
    registry = CollectorRegistry()
    register(rt, registry)
    samples = scrape(registry)
    for name in LISTED:
        assert samples[name] == 0.0, name
    kinds = families(registry)
    # Per-server families are there (with no samples) before MCP is used.
    assert kinds["helixrt_mcp_connection_status"] == "gauge"
    assert kinds["helixrt_mcp_calls"] == "counter"
    assert kinds["helixrt_http_pool_host_requests"] == "counter"
    # The rest of each component's stats, zero too.
    for name in (
        "helixrt_worker_pool_failed_tasks_total",
        "helixrt_async_pool_submitted_jobs_total",
        "helixrt_async_pool_pending_jobs",
        "helixrt_event_bus_subscribers_active",
        "helixrt_event_bus_lag_seconds",
        "helixrt_cache_l1_entries",
        "helixrt_cache_l1_evictions_total",
        "helixrt_cache_l2_errors_total",
        "helixrt_http_pool_requests_total",
        "helixrt_http_pool_in_flight_requests",
        "helixrt_providers_registered",
        "helixrt_mcp_installs_total",
        "helixrt_mcp_servers",
        'helixrt_worker_pool_run_seconds{stat="p99"}',
        'helixrt_http_pool_latency_seconds{stat="mean"}',
        'helixrt_mcp_packages{state="installed"}',
    ):
        assert samples[name] == 0.0, name
    assert samples['helixrt_cache_l2_breaker_state{state="closed"}'] == 1.0
    for _ in range(3):
        scrape(registry)
    assert [name for name in Runtime.COMPONENTS if rt.created(name)] == []


@pytest.mark.integration
def test_values_move_after_use(tmp_path: Path, redis_url: str) -> None:
    async def main() -> tuple[dict[str, float], dict[str, float]]:
        async with runtime_with_redis(tmp_path, redis_url) as rt:
            registry = CollectorRegistry()
            register(rt, registry)
            before = scrape(registry)

            futures = [rt.worker_pool.submit(pow, 2, n) for n in range(10)]
            assert [f.result(timeout=10) for f in futures] == [2**n for n in range(10)]
            assert await rt.async_pool.run(asyncio.sleep(0, "done")) == "done"

            sub = rt.bus.subscribe("metrics.test")
            for n in range(5):
                rt.bus.publish("metrics.test", n)
            assert [(await sub.get(timeout=5)).payload for _ in range(5)] == list(range(5))
            sub.unsubscribe()

            key = f"metrics:{uuid.uuid4().hex}"
            await rt.cache.set(key, {"v": 1})
            assert await rt.cache.get(key) == {"v": 1}  # an L1 hit
            rt.cache.l1.clear()
            assert await rt.cache.get(key) == {"v": 1}  # an L2 hit
            assert await rt.cache.get(key + ":absent") is None  # misses in both
            return before, scrape(registry)

    before, after = asyncio.run(main())
    assert after["helixrt_worker_pool_completed_tasks_total"] == 10
    assert after["helixrt_worker_pool_submitted_tasks_total"] == 10
    assert after["helixrt_worker_pool_workers"] >= 1
    assert after["helixrt_async_pool_completed_jobs_total"] == 1
    assert after["helixrt_event_bus_events_published_total"] >= 5
    assert after["helixrt_event_bus_events_delivered_total"] >= 5
    assert after["helixrt_event_bus_subscribers_total"] >= 1
    assert after["helixrt_cache_l1_hits_total"] == 1
    assert after["helixrt_cache_l2_hits_total"] == 1
    assert after["helixrt_cache_l2_misses_total"] == 1
    assert after["helixrt_cache_l1_misses_total"] == 2
    assert after["helixrt_cache_hit_ratio"] == pytest.approx(2 / 3)
    assert after["helixrt_cache_l2_written_bytes_total"] > 0
    assert after["helixrt_cache_l1_entries"] == 1  # promoted back by the L2 hit
    for name in LISTED:
        assert name in before
    moved = {name for name in LISTED if after[name] != before[name]}
    assert moved >= {
        "helixrt_worker_pool_completed_tasks_total",
        "helixrt_event_bus_events_published_total",
        "helixrt_event_bus_events_delivered_total",
        "helixrt_cache_l1_hits_total",
        "helixrt_cache_l1_misses_total",
        "helixrt_cache_l2_hits_total",
        "helixrt_cache_l2_misses_total",
        "helixrt_cache_hit_ratio",
    }


class _Broken:
    def stats(self) -> Any:
        raise RuntimeError("stats failed")


class _Stub:
    """A runtime whose event bus's stats() raises, and nothing else created."""

    def created(self, name: str) -> bool:
        return name == "bus"

    def component(self, name: str) -> Any:
        assert name == "bus"
        return _Broken()


def test_a_failing_component_sits_out_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(_Stub()))
    samples = scrape(registry)
    assert "helixrt_event_bus_events_published_total" not in samples
    assert samples["helixrt_worker_pool_completed_tasks_total"] == 0.0
    assert "reading the stats of bus failed" in caplog.text


def test_register_refuses_a_second_collector_on_the_same_registry() -> None:
    rt = Runtime()
    registry = CollectorRegistry()
    register(rt, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(rt, registry)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            "helixrt.metrics",
            "helixrt.metrics needs the prometheus_client package: pip install helixrt[metrics]",
        ),
        (
            "helixrt.ops",
            "helixrt.ops needs the prometheus_client package: pip install helixrt[ops]",
        ),
    ],
)
def test_without_prometheus_client_the_import_says_what_to_install(
    module: str, message: str
) -> None:
    code = f"import sys\nsys.modules['prometheus_client'] = None\nimport {module}\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"helixrt.codec.MissingDependencyError: {message}"
    )
