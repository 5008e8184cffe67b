"""helixrt.config: the `performance:` tree, its defaults, profiles, files, environment overrides
and the errors that name the key."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from helixrt.config import (
    PROFILES,
    ConfigError,
    HelixConfig,
    load_config,
    parse_duration,
)
from helixrt.errors import HelixError

EXAMPLE = Path(__file__).parent.parent / "examples" / "helixrt.toml"
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "raw_server.py")


def test_defaults_are_the_originals() -> None:
    c = load_config(env={})
    assert c == HelixConfig()
    assert c.profile is None
    assert (c.worker_pool.workers, c.worker_pool.queue_size) == (os.cpu_count(), 1000)
    assert (c.worker_pool.task_timeout, c.worker_pool.shutdown_grace) == (30.0, 5.0)
    bus = c.event_bus
    assert (bus.buffer_size, bus.publish_timeout, bus.cleanup_interval) == (1000, 0.01, 30.0)
    assert bus.max_subscribers == 100
    assert (c.async_pool.limit, c.async_pool.pending_limit) == (100, 10_000)
    assert (c.cache.l1.max_size, c.cache.l1.ttl, c.cache.l1.cleanup) == (10_000, 300.0, 60.0)
    l2 = c.cache.l2
    assert (l2.url, l2.ttl, l2.compression, l2.key_prefix) == (None, 1800.0, True, "tiered:")
    assert l2.negative_ttl == 30.0
    http = c.http_pool
    assert (http.max_idle, http.per_host, http.idle_timeout) == (100, 10, 90.0)
    assert (http.header_timeout, http.dial_timeout) == (10.0, 5.0)
    assert dataclasses.astuple(http.retry) == (3, 0.1, 5.0, 2.0)
    assert (c.mcp.connection_pool_size, c.mcp.connection_timeout, c.mcp.lazy_connect) == (
        12,
        5.0,
        True,
    )
    assert (c.mcp.config, c.mcp.warmup_servers, c.mcp.preinstall_on_startup) == (None, (), False)
    assert (c.lazy_loading.enabled, c.lazy_loading.preload_services) == (True, ())
    assert c.lazy_loading.init_timeout == 10.0
    assert (c.ops.host, c.ops.port, c.ops.token) == ("127.0.0.1", 7061, None)


def test_sections_are_frozen_and_the_token_is_never_shown() -> None:
    c = load_config(
        {"ops": {"token": "s3cret"}, "cache": {"l2": {"url": "redis://u:pw@h/0"}}}, env={}
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.worker_pool.workers = 3  # type: ignore[misc]
    assert c.ops.token == "s3cret"
    assert "s3cret" not in repr(c)
    tree = c.to_dict()
    assert tree["ops"]["token"] == "***"
    assert tree["cache"]["l2"]["url"] == "redis://***@h/0"
    json.dumps(tree)


def test_the_example_file_holds_the_defaults() -> None:
    assert load_config(EXAMPLE, env={}) == load_config(env={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.5, 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("100ms", 0.1),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("42", 42.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "m", "10x", "", "s5", True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - parse_duration's documented error
        parse_duration(text)


def test_profiles_apply_under_the_files_values(tmp_path: Path) -> None:
    dev = load_config(profile="dev", env={})
    assert (dev.worker_pool.workers, dev.worker_pool.queue_size) == (2, 100)
    assert (dev.cache.l1.max_size, dev.cache.l2.enabled) == (100, False)
    prod = load_config(profile="prod", env={})
    assert (prod.worker_pool.workers, prod.worker_pool.queue_size) == (16, 5000)
    assert (prod.cache.l1.max_size, prod.mcp.preinstall_on_startup) == (50_000, True)
    fast = load_config(profile="high-throughput", env={})
    assert (fast.worker_pool.workers, fast.worker_pool.queue_size) == (32, 10_000)
    assert (fast.event_bus.buffer_size, fast.cache.l1.max_size) == (10_000, 100_000)
    assert (fast.http_pool.max_idle, fast.http_pool.per_host) == (500, 50)
    assert set(PROFILES) == {"dev", "prod", "high-throughput"}

    path = tmp_path / "c.toml"
    path.write_text('profile = "prod"\n[worker_pool]\nworkers = 3\n')
    c = load_config(path, env={})
    assert c.profile == "prod"
    assert (c.worker_pool.workers, c.worker_pool.queue_size) == (3, 5000)  # the file wins
    # The argument beats HELIXRT_PROFILE, which beats the file's key.
    assert load_config(path, env={"HELIXRT_PROFILE": "dev"}).worker_pool.queue_size == 100
    assert load_config(path, env={"HELIXRT_PROFILE": "dev"}, profile="high-throughput").profile == (
        "high-throughput"
    )
    with pytest.raises(ConfigError, match=r"unknown profile 'production'.*did you mean 'prod'"):
        load_config(profile="production", env={})


def test_toml_with_the_performance_wrapper_durations_and_the_originals_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.toml"
    path.write_text(
        """
[server]            # the application's own section: not ours, left alone
port = 8080

[performance.worker_pool]
workers = 4
task_timeout = "1m"

[performance.cache]
negative_ttl = "10s"
enable_l2 = false
[performance.cache.l1]
cleanup_interval = "2m"

[performance.http_pool]
max_conns_per_host = 20
idle_conn_timeout = "2m"
response_header_timeout = "15s"
[performance.http_pool.retry]
max_retries = 3
initial_backoff = "50ms"
max_backoff = "2s"
backoff_multiplier = 1.5
"""
    )
    c = load_config(path, env={})
    assert (c.worker_pool.workers, c.worker_pool.task_timeout) == (4, 60.0)
    assert (c.cache.l2.negative_ttl, c.cache.l2.enabled, c.cache.l1.cleanup) == (10.0, False, 120.0)
    assert (c.http_pool.per_host, c.http_pool.idle_timeout, c.http_pool.header_timeout) == (
        20,
        120.0,
        15.0,
    )
    # max_retries counts retries; max_attempts counts the first call too.
    assert dataclasses.astuple(c.http_pool.retry) == (4, 0.05, 2.0, 1.5)


def test_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text(
        """
performance:
  worker_pool:
    workers: 8
    queue_size: 1000
    task_timeout: 30s
  event_bus:
    publish_timeout: 10ms
  mcp:
    lazy_connect: true
  lazy_loading:
    preload_services:
      - provider_registry
      - event_bus
"""
    )
    c = load_config(path, env={})
    assert (c.worker_pool.workers, c.worker_pool.task_timeout) == (8, 30.0)
    assert c.event_bus.publish_timeout == 0.01
    assert c.lazy_loading.preload_services == ("providers", "bus")
    bad = tmp_path / "bad.yml"
    bad.write_text("performance:\n  cache:\n    l1:\n      max_size: lots\n")
    with pytest.raises(ConfigError, match=r"performance\.cache\.l1\.max_size: got 'lots'"):
        load_config(bad, env={})


def test_yaml_without_pyyaml_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    path = tmp_path / "c.yaml"
    path.write_text("performance: {}\n")
    with pytest.raises(ConfigError, match="pip install pyyaml"):
        load_config(path, env={})


def test_environment_overrides_parsed_to_the_fields_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[worker_pool]\nworkers = 3\n")
    env = {
        "HELIXRT_WORKER_POOL_WORKERS": "8",
        "HELIXRT_WORKER_POOL_TASK_TIMEOUT": "250ms",
        "HELIXRT_CACHE_L2_URL": "redis://127.0.0.1:6379/0",
        "HELIXRT_CACHE_L2_COMPRESSION": "off",
        "HELIXRT_EVENT_BUS_MAX_SUBSCRIBERS": "none",
        "HELIXRT_HTTP_POOL_RETRY_MULTIPLIER": "3",
        "HELIXRT_OPS_TOKEN": "t0ken",
        "HELIXRT_LAZY_LOADING_PRELOAD_SERVICES": "mcp_pool, cache",
        "HELIXRT_UNRELATED_THING": "ignored",
    }
    c = load_config(path, env=env)
    assert (c.worker_pool.workers, c.worker_pool.task_timeout) == (8, 0.25)
    assert (c.cache.l2.url, c.cache.l2.compression) == ("redis://127.0.0.1:6379/0", False)
    assert c.event_bus.max_subscribers is None
    assert c.http_pool.retry.multiplier == 3.0
    assert c.ops.token == "t0ken"
    assert c.lazy_loading.preload_services == ("mcp", "cache")
    assert load_config(env={"HELIXRT_CACHE_L2_URL": ""}).cache.l2.url is None


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("HELIXRT_WORKER_POOL_WORKERS", "eight", "performance.worker_pool.workers"),
        ("HELIXRT_WORKER_POOL_WORKERS", "0", "performance.worker_pool.workers"),
        ("HELIXRT_CACHE_L2_COMPRESSION", "maybe", "performance.cache.l2.compression"),
        ("HELIXRT_CACHE_L1_TTL", "5 minutes", "performance.cache.l1.ttl"),
        ("HELIXRT_OPS_PORT", "70000", "performance.ops.port"),
    ],
)
def test_environment_type_errors_name_the_variable_and_the_key(
    name: str, value: str, path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={name: value})
    message = str(info.value)
    assert name in message
    assert path in message
    assert "accepted:" in message
    assert info.value.path == path
    assert isinstance(info.value, HelixError)
    assert isinstance(info.value, ValueError)


def test_an_unknown_environment_variable_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="helixrt.config"):
        load_config(env={"HELIXRT_WORKER_POOL_WORKRES": "3"})
    assert "HELIXRT_WORKER_POOL_WORKRES" in caplog.text
    assert "HELIXRT_WORKER_POOL_WORKERS" in caplog.text  # the suggestion


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        (
            {"cache": {"l1": {"max_sise": 10}}},
            "performance.cache.l1.max_sise",
            "did you mean 'max_size'",
        ),
        ({"worker_pol": {}}, "performance.worker_pol", "did you mean 'worker_pool'"),
        ({"cache": {"l1": {"max_size": -1}}}, "performance.cache.l1.max_size", "got -1"),
        ({"cache": {"l1": {"max_size": True}}}, "performance.cache.l1.max_size", "got True"),
        ({"cache": {"l1": {"ttl": "soon"}}}, "performance.cache.l1.ttl", "a duration"),
        ({"cache": {"l1": {"ttl": 0}}}, "performance.cache.l1.ttl", "more than 0"),
        ({"event_bus": {"on_full": "drop"}}, "performance.event_bus.on_full", "'drop_oldest'"),
        ({"cache": {"l1": 5}}, "performance.cache.l1", "a section"),
        (
            {"lazy_loading": {"preload_services": ["providers", "cach"]}},
            "performance.lazy_loading.preload_services",
            "did you mean 'cache'",
        ),
        (
            {"performance": {"http_pool": {"per_host": 2, "max_conns_per_host": 3}}},
            "performance.http_pool.max_conns_per_host",
            "given twice",
        ),
        ({"cache": {"enable_l1": False}}, "performance.cache.enable_l1", "always has an L1"),
        (
            {"mcp": {"warmup_servers": ["filesystem"]}},
            "performance.mcp.warmup_servers",
            "set performance.mcp.config",
        ),
    ],
)
def test_unknown_keys_and_bad_values_name_the_dotted_path(
    data: dict[str, object], path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data, env={})
    assert info.value.path == path
    assert str(info.value).startswith(path)
    assert fragment in str(info.value)


def test_an_unknown_key_lists_what_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[performance.worker_pool]\nthreads = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "performance.worker_pool.threads: unknown key" in message
    assert "accepted: queue_size, shutdown_grace, task_timeout, workers" in message
    assert str(path) in (info.value.source or "")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[worker_pool\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})
    with pytest.raises(ConfigError, match="a path"):
        load_config(42, env={})  # type: ignore[arg-type]


def test_mcp_config_is_checked_at_load_and_relative_to_the_file(tmp_path: Path) -> None:
    servers = {"mcpServers": {"fx": {"command": sys.executable, "args": [FIXTURE]}}}
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    path = tmp_path / "c.toml"
    path.write_text('[mcp]\nconfig = "servers.json"\nwarmup_servers = ["fx"]\n')
    c = load_config(path, env={})
    assert c.mcp.config == str(tmp_path / "servers.json")
    assert c.mcp.warmup_servers == ("fx",)

    path.write_text('[mcp]\nconfig = "servers.json"\nwarmup_servers = ["fz"]\n')
    with pytest.raises(ConfigError, match=r"no MCP server named 'fz' \(did you mean 'fx'\?\)"):
        load_config(path, env={})
    (tmp_path / "servers.json").write_text('{"mcpServers": {"fx": {"comand": "x"}}}')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.path == "performance.mcp.config"
    assert "comand" in str(info.value)
