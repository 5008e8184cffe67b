"""The runtime's configuration: the original system's `performance:` tree, checked at load.

`load_config(source=None, *, env=None, profile=None)` reads a TOML file (or YAML, with PyYAML),
a mapping, or nothing, and returns a frozen `HelixConfig`. Values come, lowest first, from the
defaults (the original's CONFIGURATION.md where they make sense), the profile ("dev", "prod",
"high-throughput": the original's), the file, then `HELIXRT_<SECTION>_<KEY>` environment
variables. Every key and value is checked: an unknown key or a bad value raises `ConfigError`
naming its dotted path (`performance.cache.l1.max_size`) and what is accepted.

The original's key names are accepted as aliases of helixrt's (`max_conns_per_host` for
`per_host`, `cleanup_interval` for `cleanup`, `max_retries`, `initial_backoff`, ...), so its
documented file loads as is. This module builds no component: `helixrt.Runtime` does.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from helixrt.errors import HelixError

__all__ = [
    "PROFILES",
    "AsyncPoolConfig",
    "CacheConfig",
    "ConfigError",
    "EventBusConfig",
    "HTTPPoolConfig",
    "HelixConfig",
    "L1Config",
    "L2Config",
    "LazyLoadingConfig",
    "MCPConfig",
    "OpsConfig",
    "RetryConfig",
    "WorkerPoolConfig",
    "load_config",
    "parse_duration",
]

ENV_PREFIX = "HELIXRT_"
ROOT = "performance"

# The Runtime's components, and the original's names for them (in `preload_services`).
COMPONENT_NAMES = (
    "bus",
    "worker_pool",
    "async_pool",
    "cache",
    "http",
    "providers",
    "preinstaller",
    "mcp",
)
COMPONENT_ALIASES = {
    "event_bus": "bus",
    "http_pool": "http",
    "provider_registry": "providers",
    "mcp_pool": "mcp",
    "mcp_preinstaller": "preinstaller",
}


class ConfigError(HelixError, ValueError):
    """A configuration key is unknown or its value is bad. `path` is the key's dotted path
    (`performance.cache.l1.max_size`, or "" for the document itself); `source` says where the
    value came from (a file, an environment variable, a mapping, a profile)."""

    def __init__(self, message: str, *, path: str = "", source: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.source = source


# --- value kinds ----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null", ""})


class _Bad(Exception):
    """A value a kind refuses; the loader adds where it was."""


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a Go-style string: "30s", "5m", "100ms", "1h30m",
    "1.5s", "250us"; a bare number in a string is seconds. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"a duration, not a bool ({value!r})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos or not match.group(1):
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"not a duration: {value!r}") from None
    else:
        raise ValueError(f"a duration, not a {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    return seconds


class _Kind:
    accepted = "a value"

    def parse(self, value: object) -> Any:
        raise NotImplementedError

    def env(self, text: str) -> Any:
        """The value of an environment variable (always a string)."""
        return self.parse(text)


class _Int(_Kind):
    def __init__(self, least: int, *, most: int | None = None, none: str | None = None) -> None:
        self.least, self.most, self.none = least, most, none
        top = f" and <= {most}" if most is not None else ""
        self.accepted = f"an integer >= {least}{top}" + (f", or {none}" if none else "")

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | None):
            raise _Bad(f"got {value!r}")
        if self.none is not None and (value is None or value == 0):
            return None
        if value is None:
            raise _Bad("got None")
        if value < self.least or (self.most is not None and value > self.most):
            raise _Bad(f"got {value}")
        return value

    def env(self, text: str) -> Any:
        if self.none is not None and text.strip().lower() in _NONE:
            return None
        try:
            return self.parse(int(text.strip()))
        except ValueError:
            raise _Bad(f"got {text!r}") from None


class _Float(_Kind):
    def __init__(self, least: float) -> None:
        self.least = least
        self.accepted = f"a number >= {least:g}"

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(f"got {value!r}")
        if not math.isfinite(value) or value < self.least:
            raise _Bad(f"got {value!r}")
        return float(value)

    def env(self, text: str) -> Any:
        try:
            return self.parse(float(text.strip()))
        except ValueError:
            raise _Bad(f"got {text!r}") from None


class _Duration(_Kind):
    """Seconds. `zero` says what 0 means: "none" (no limit: None), "ok" (0.0), or None (refused)."""

    def __init__(self, *, zero: str | None = None) -> None:
        self.zero = zero
        base = 'a duration: seconds as a number, or a string such as "30s", "5m", "100ms"'
        self.accepted = (
            base
            + {
                None: " (more than 0)",
                "ok": " (0 or more)",
                "none": " (0 for no limit)",
            }[zero]
        )

    def parse(self, value: object) -> Any:
        if value is None and self.zero == "none":
            return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _Bad(f"got {value!r}") from None
        if seconds < 0 or (seconds == 0 and self.zero is None):
            raise _Bad(f"got {value!r}")
        if seconds == 0 and self.zero == "none":
            return None
        return seconds

    def env(self, text: str) -> Any:
        if self.zero == "none" and text.strip().lower() in _NONE:
            return None
        return self.parse(text)


class _Bool(_Kind):
    accepted = "true or false"

    def parse(self, value: object) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Bad(f"got {value!r}")


class _Str(_Kind):
    def __init__(self, *, choices: tuple[str, ...] = (), optional: bool = False) -> None:
        self.choices, self.optional = choices, optional
        if choices:
            self.accepted = "one of " + ", ".join(repr(c) for c in choices)
        else:
            self.accepted = "a non-empty string" + (" (or none)" if optional else "")

    def parse(self, value: object) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value:
            raise _Bad(f"got {value!r}")
        if self.choices and value not in self.choices:
            raise _Bad(f"got {value!r}{_suggest(value, self.choices)}")
        return value

    def env(self, text: str) -> Any:
        if self.optional and not text.strip():
            return None
        return self.parse(text.strip())


class _Names(_Kind):
    """A list of names: a list in a file, comma-separated in the environment. With `known`,
    each name must be one of them (after `aliases`)."""

    def __init__(
        self, known: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None
    ) -> None:
        self.known, self.aliases = known, dict(aliases or {})
        every = ", ".join(repr(n) for n in (*known, *self.aliases))
        self.accepted = "a list of names" + (f" among {every}" if known else "")

    def parse(self, value: object) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise _Bad(f"got {value!r}")
        names: list[str] = []
        for item in value:
            if not isinstance(item, str) or not item:
                raise _Bad(f"got the item {item!r}")
            name = self.aliases.get(item, item)
            if self.known and name not in self.known:
                raise _Bad(f"got {item!r}{_suggest(item, (*self.known, *self.aliases))}")
            if name not in names:
                names.append(name)
        return tuple(names)


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cpus() -> int:
    return os.cpu_count() or 1


def _leaf(
    kind: _Kind, default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **extra: Any
) -> Any:
    metadata = {"kind": kind, **extra}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --- the sections ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPoolConfig:
    """The thread `WorkerPool` (the original's defaults). `task_timeout` 0 means no limit;
    `shutdown_grace` bounds how long closing the runtime waits for queued tasks."""

    workers: int = _leaf(_Int(1), factory=_cpus)
    queue_size: int = _leaf(_Int(1), 1000)
    task_timeout: float | None = _leaf(_Duration(zero="none"), 30.0)
    shutdown_grace: float = _leaf(_Duration(zero="ok"), 5.0)


@dataclass(frozen=True, slots=True)
class EventBusConfig:
    """The `EventBus`. `publish_timeout` and `cleanup_interval` are the original's and are
    accepted but unused: helixrt's publish never waits (except with `on_full = "block"`) and
    ended subscriptions are removed at once. `max_subscribers` 0 means no limit."""

    buffer_size: int = _leaf(_Int(1), 1000)
    publish_timeout: float = _leaf(_Duration(zero="ok"), 0.01)
    cleanup_interval: float = _leaf(_Duration(zero="ok"), 30.0)
    max_subscribers: int | None = _leaf(_Int(1, none="0 for no limit"), 100)
    on_full: str = _leaf(_Str(choices=("drop_oldest", "drop_newest", "block")), "drop_oldest")
    history: int = _leaf(_Int(0), 0)


@dataclass(frozen=True, slots=True)
class AsyncPoolConfig:
    """The `AsyncWorkerPool` (helixrt's own; aiojobs' defaults). `task_timeout` 0: no limit."""

    limit: int = _leaf(_Int(1), 100)
    pending_limit: int = _leaf(_Int(0), 10_000)
    task_timeout: float | None = _leaf(_Duration(zero="none"), None)
    close_timeout: float | None = _leaf(_Duration(zero="none"), 60.0)


@dataclass(frozen=True, slots=True)
class L1Config:
    """The in-memory tier. `cleanup` is accepted but unused: one shared thread reclaims
    expired entries of every L1 cache twice a second."""

    max_size: int = _leaf(_Int(1), 10_000)
    ttl: float = _leaf(_Duration(), 300.0)
    cleanup: float = _leaf(_Duration(zero="ok"), 60.0, aliases=("cleanup_interval",))


@dataclass(frozen=True, slots=True)
class L2Config:
    """The Redis tier: used when `enabled` and a `url` is set (L1 only otherwise).
    `compression` is lz4 above 512 bytes; `negative_ttl` keeps a loader's None (0: never)."""

    enabled: bool = _leaf(_Bool(), True)
    url: str | None = _leaf(_Str(optional=True), None, secret=True)
    ttl: float = _leaf(_Duration(), 1800.0)
    compression: bool = _leaf(_Bool(), True)
    key_prefix: str = _leaf(_Str(), "tiered:")
    negative_ttl: float | None = _leaf(_Duration(zero="none"), 30.0)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The `TieredCache`. The original's `cache.negative_ttl` and `cache.enable_l2` are read
    as `cache.l2.negative_ttl` and `cache.l2.enabled`; `cache.enable_l1` must be true."""

    l1: L1Config = field(default_factory=L1Config, metadata={"section": L1Config})
    l2: L2Config = field(default_factory=L2Config, metadata={"section": L2Config})


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """The HTTP pool's `RetryPolicy`. `max_attempts` counts the first call; the original's
    `max_retries` counts retries only (`max_retries = 3` is `max_attempts = 4`)."""

    max_attempts: int = _leaf(_Int(1), 3)
    base_delay: float = _leaf(_Duration(zero="ok"), 0.1, aliases=("initial_backoff",))
    max_delay: float = _leaf(_Duration(zero="ok"), 5.0, aliases=("max_backoff",))
    multiplier: float = _leaf(_Float(1.0), 2.0, aliases=("backoff_multiplier",))


@dataclass(frozen=True, slots=True)
class HTTPPoolConfig:
    """The `HTTPPool`: `max_idle` is its `limit` (requests in flight over the pool),
    `per_host` its `limit_per_host`, `idle_timeout` its keep-alive, `header_timeout` its read
    timeout (seconds between two reads, the first being the response's headers), and
    `dial_timeout` its connect timeout."""

    max_idle: int = _leaf(_Int(1), 100, aliases=("max_idle_conns",))
    per_host: int = _leaf(_Int(1), 10, aliases=("max_conns_per_host",))
    idle_timeout: float = _leaf(_Duration(), 90.0, aliases=("idle_conn_timeout",))
    header_timeout: float = _leaf(_Duration(), 10.0, aliases=("response_header_timeout",))
    dial_timeout: float = _leaf(_Duration(), 5.0)
    retry: RetryConfig = field(default_factory=RetryConfig, metadata={"section": RetryConfig})


@dataclass(frozen=True, slots=True)
class MCPConfig:
    """The `Preinstaller` and the `MCPConnectionPool`.

    - `config`: an `mcpServers` JSON file (relative paths are taken from the configuration
      file's folder); without one the pool has no servers and the Preinstaller installs the
      original's six packages.
    - `preinstall_on_startup`: `Runtime.start()` queues the installs in the background (false
      by default, unlike the original: only the prod profile turns it on).
    - `root`: where packages are installed (default `$HELIXRT_MCP_ROOT`, else the user cache).
    - `connection_pool_size`: servers running at once; `connection_timeout`: the connect
      timeout of servers that do not set their own (`timeouts.connect`).
    - `lazy_connect`: false starts every server in `start()`; `warmup_servers` start there
      in any case.
    """

    preinstall_on_startup: bool = _leaf(_Bool(), False)
    config: str | None = _leaf(_Str(optional=True), None, path=True)
    root: str | None = _leaf(_Str(optional=True), None, path=True)
    connection_pool_size: int = _leaf(_Int(1), 12)
    connection_timeout: float = _leaf(_Duration(), 5.0)
    lazy_connect: bool = _leaf(_Bool(), True)
    warmup_servers: tuple[str, ...] = _leaf(_Names(), ())


@dataclass(frozen=True, slots=True)
class LazyLoadingConfig:
    """`enabled = false` creates every component in `Runtime.start()`; otherwise only those in
    `preload_services` (component names, or the original's `provider_registry`, `mcp_pool`,
    `event_bus`, `http_pool`) are, and the rest on first use. `init_timeout` bounds each
    startup step (cache connection, provider prewarm, MCP warmup)."""

    enabled: bool = _leaf(_Bool(), True)
    preload_services: tuple[str, ...] = _leaf(_Names(COMPONENT_NAMES, COMPONENT_ALIASES), ())
    init_timeout: float = _leaf(_Duration(), 10.0)


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """The ops HTTP surface (`helixrt serve`): loopback by default; anything else needs a
    `token` (never shown in reprs or `to_dict()`)."""

    host: str = _leaf(_Str(), "127.0.0.1")
    port: int = _leaf(_Int(0, most=65535), 7061)
    token: str | None = field(
        default=None, repr=False, metadata={"kind": _Str(optional=True), "secret": True}
    )


PROFILE_NAMES = ("dev", "prod", "high-throughput")


@dataclass(frozen=True, slots=True)
class HelixConfig:
    """The whole configuration; every section is a frozen dataclass. `to_dict()` gives the
    JSON-able tree (durations in seconds, secrets redacted)."""

    profile: str | None = _leaf(_Str(choices=PROFILE_NAMES, optional=True), None)
    worker_pool: WorkerPoolConfig = field(
        default_factory=WorkerPoolConfig, metadata={"section": WorkerPoolConfig}
    )
    event_bus: EventBusConfig = field(
        default_factory=EventBusConfig, metadata={"section": EventBusConfig}
    )
    async_pool: AsyncPoolConfig = field(
        default_factory=AsyncPoolConfig, metadata={"section": AsyncPoolConfig}
    )
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"section": CacheConfig})
    http_pool: HTTPPoolConfig = field(
        default_factory=HTTPPoolConfig, metadata={"section": HTTPPoolConfig}
    )
    mcp: MCPConfig = field(default_factory=MCPConfig, metadata={"section": MCPConfig})
    lazy_loading: LazyLoadingConfig = field(
        default_factory=LazyLoadingConfig, metadata={"section": LazyLoadingConfig}
    )
    ops: OpsConfig = field(default_factory=OpsConfig, metadata={"section": OpsConfig})

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            out[f.name] = _as_dict(value)
        elif f.metadata.get("secret") and value is not None:
            out[f.name] = _redact(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _redact(value: str) -> str:
    # A URL keeps its scheme and host (useful to see), never its password.
    return re.sub(r"//[^/@]*@", "//***@", value) if "://" in value else "***"


# The original's profiles (its CONFIGURATION.md), as dotted paths under `performance`.
PROFILES: Mapping[str, Mapping[str, Any]] = {
    "dev": {
        "worker_pool.workers": 2,
        "worker_pool.queue_size": 100,
        "cache.l1.max_size": 100,
        "cache.l2.enabled": False,
        "mcp.preinstall_on_startup": False,
        "mcp.lazy_connect": True,
    },
    "prod": {
        "worker_pool.workers": 16,
        "worker_pool.queue_size": 5000,
        "cache.l1.max_size": 50_000,
        "cache.l2.compression": True,
        "mcp.preinstall_on_startup": True,
        "mcp.lazy_connect": True,
    },
    "high-throughput": {
        "worker_pool.workers": 32,
        "worker_pool.queue_size": 10_000,
        "event_bus.buffer_size": 10_000,
        "cache.l1.max_size": 100_000,
        "http_pool.max_idle": 500,
        "http_pool.per_host": 50,
    },
}


def _retries_to_attempts(value: Any) -> Any:
    return value + 1 if type(value) is int else value


# The original's keys that helixrt reads elsewhere in its tree (or counts differently):
# section -> key -> (helixrt's path, conversion of the value).
_MOVED: Mapping[str, Mapping[str, tuple[str, Callable[[Any], Any] | None]]] = {
    "cache": {
        "negative_ttl": ("cache.l2.negative_ttl", None),
        "enable_l2": ("cache.l2.enabled", None),
    },
    "http_pool.retry": {"max_retries": ("http_pool.retry.max_attempts", _retries_to_attempts)},
}


# --- loading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Value:
    raw: Any
    where: str  # for messages: the dotted path as written, or the variable's name
    source: str
    from_env: bool = False
    base_dir: Path | None = None


def _leaves(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> dataclass field, for every leaf under `cls`."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if "section" in f.metadata:
            out.update(_leaves(f.metadata["section"], path + "."))
        else:
            out[path] = f
    return out


_LEAVES = _leaves(HelixConfig)
_ENV_NAMES = {ENV_PREFIX + path.replace(".", "_").upper(): path for path in _LEAVES}
_SECTION_ENV_PREFIXES = tuple(
    ENV_PREFIX + f.name.upper() + "_" for f in fields(HelixConfig) if "section" in f.metadata
)


def _error(message: str, path: str, source: str | None) -> ConfigError:
    return ConfigError(message, path=path, source=source)


def _flatten(
    cls: type,
    data: Mapping[str, Any],
    prefix: str,
    source: str,
    base_dir: Path | None,
    out: dict[str, _Value],
) -> None:
    """Checks `data` (a section written as `cls`) key by key and records its leaves."""
    by_name: dict[str, Any] = {}
    for f in fields(cls):
        by_name[f.name] = f
        for alias in f.metadata.get("aliases", ()):
            by_name[alias] = f
    section = prefix.removeprefix(ROOT + ".").rstrip(".")
    moved = _MOVED.get(section, {})
    for key, value in data.items():
        where = f"{prefix}{key}"
        if not isinstance(key, str):
            raise _error(f"{where}: keys are strings, got {key!r}", where, source)
        if key == "enable_l1" and section == "cache":
            if _Bool().parse(value) is not True:
                raise _error(f"{where}: helixrt's tiered cache always has an L1", where, source)
            continue
        if key in moved:
            path, convert = moved[key]
            if convert is not None:
                value = convert(value)
        elif key in by_name:
            f = by_name[key]
            path = f"{prefix}{f.name}".removeprefix(ROOT + ".")
            if "section" in f.metadata:
                if not isinstance(value, Mapping):
                    raise _error(
                        f"{where}: a section (a table of keys), got {value!r}", where, source
                    )
                _flatten(f.metadata["section"], value, f"{where}.", source, base_dir, out)
                continue
        else:
            accepted = sorted(name for name in by_name if name not in _alias_names(cls))
            accepted += sorted(moved)
            raise _error(
                f"{where}: unknown key{_suggest(key, by_name.keys() | moved.keys())}; "
                f"accepted: {', '.join(accepted)}",
                where,
                source,
            )
        if path in out and out[path].source == source:
            raise _error(
                f"{where}: given twice in {source} (as {out[path].where} too)", where, source
            )
        out[path] = _Value(value, where, source, base_dir=base_dir)


def _alias_names(cls: type) -> set[str]:
    return {alias for f in fields(cls) for alias in f.metadata.get("aliases", ())}


def _read_file(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}", source=str(path)) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise ConfigError(
                f"{path} is YAML, and reading YAML needs PyYAML: pip install pyyaml "
                "(or write the configuration as TOML)",
                source=str(path),
            ) from None
        try:
            return yaml.safe_load(raw) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}", source=str(path)) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        hint = " (YAML files need a .yaml or .yml suffix)" if path.suffix.lower() != ".toml" else ""
        raise ConfigError(f"{path} is not valid TOML: {err}{hint}", source=str(path)) from None


def _document(data: Any, source: str, base_dir: Path | None) -> tuple[dict[str, _Value], Any]:
    """The leaves of a whole document, and its `profile` (or None)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: a configuration is a table of sections, got {type(data).__name__}",
            source=source,
        )
    out: dict[str, _Value] = {}
    profile: Any = None
    if ROOT in data:
        # The application's other top-level sections are its own business.
        body = data[ROOT]
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise _error(f"{ROOT}: a section (a table of keys), got {body!r}", ROOT, source)
        profile = data.get("profile")
    else:
        body = data
    body = dict(body)
    if "profile" in body:
        profile = body.pop("profile")
    _flatten_root(body, source, base_dir, out)
    return out, profile


def _flatten_root(
    body: Mapping[str, Any], source: str, base_dir: Path | None, out: dict[str, _Value]
) -> None:
    sections = {f.name for f in fields(HelixConfig) if "section" in f.metadata}
    for key in body:
        if key not in sections:
            where = f"{ROOT}.{key}"
            raise _error(
                f"{where}: unknown section{_suggest(str(key), [*sections, ROOT, 'profile'])}; "
                f"accepted: {', '.join(sorted(sections))}, profile"
                + ("" if key == ROOT else f" (optionally under a top-level {ROOT!r})"),
                where,
                source,
            )
    _flatten(HelixConfig, body, f"{ROOT}.", source, base_dir, out)


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, _Value], str | None]:
    import logging

    out: dict[str, _Value] = {}
    for name, text in env.items():
        path = _ENV_NAMES.get(name)
        if path is not None and path != "profile":
            out[path] = _Value(text, name, f"environment variable {name}", from_env=True)
        elif name.startswith(_SECTION_ENV_PREFIXES) and path is None:
            # Other tools (and tests) use HELIXRT_ variables too: a warning, not an error.
            logging.getLogger("helixrt.config").warning(
                "ignoring %s: not a configuration variable%s", name, _suggest(name, _ENV_NAMES)
            )
    return out, env.get(ENV_PREFIX + "PROFILE")


def _convert(path: str, value: _Value) -> Any:
    f = _LEAVES[path]
    kind: _Kind = f.metadata["kind"]
    full = f"{ROOT}.{path}"
    try:
        result = kind.env(value.raw) if value.from_env else kind.parse(value.raw)
    except _Bad as bad:
        where = f"{value.where} ({full})" if value.from_env else value.where
        raise _error(
            f"{where}: {bad}; accepted: {kind.accepted} (from {value.source})", full, value.source
        ) from None
    if f.metadata.get("path") and isinstance(result, str):
        candidate = Path(result).expanduser()
        if not candidate.is_absolute() and value.base_dir is not None:
            candidate = value.base_dir / candidate
        result = str(candidate)
    return result


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if "section" in f.metadata:
            kwargs[f.name] = _build(f.metadata["section"], values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def _profile_name(value: Any, source: str) -> str:
    if value not in PROFILE_NAMES:
        raise _error(
            f"profile: unknown profile {value!r}{_suggest(str(value), PROFILE_NAMES)}; "
            f"accepted: {', '.join(PROFILE_NAMES)}",
            "profile",
            source,
        )
    return str(value)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    profile: str | None = None,
) -> HelixConfig:
    """The configuration from `source` (a TOML file, a YAML file with PyYAML, a mapping, or
    None for the defaults), `profile`, and the environment.

    - The document is the `performance:` tree, at the top (`[worker_pool]`, `[cache.l1]`, ...)
      or under a top-level `performance` key (then the document's other top-level keys are
      left alone).
    - `profile` ("dev", "prod", "high-throughput") comes from the argument, else
      `HELIXRT_PROFILE`, else the document's top-level `profile`; its values sit under the
      document's.
    - `env` (default `os.environ`; `{}` for none): `HELIXRT_<SECTION>_<KEY>` overrides the
      document, parsed as the key's type (lists comma-separated; "none" or "" for an optional
      value). An unknown variable under a section's prefix is logged, not an error.
    - Durations: seconds (numbers), or strings such as "30s", "5m", "100ms", "1h30m".

    Raises `ConfigError` (a ValueError) naming the key's dotted path and what it accepts.
    """
    base_dir: Path | None = None
    if source is None:
        data: Any = {}
        where = "the defaults"
    elif isinstance(source, Mapping):
        data, where = source, "the configuration mapping"
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        data, where, base_dir = _read_file(path), str(path), path.absolute().parent
    else:
        raise ConfigError(
            "a configuration source is a path (TOML, or YAML with PyYAML), a mapping or None, "
            f"got {type(source).__name__}"
        )
    values, file_profile = _document(data, where, base_dir)
    env_values, env_profile = _from_env(os.environ if env is None else env)
    if profile is not None:
        chosen: str | None = _profile_name(profile, "the profile argument")
    elif env_profile:
        chosen = _profile_name(env_profile, "environment variable HELIXRT_PROFILE")
    elif file_profile is not None:
        chosen = _profile_name(file_profile, where)
    else:
        chosen = None
    layered: dict[str, _Value] = {}
    if chosen is not None:
        for key, value in PROFILES[chosen].items():
            layered[key] = _Value(value, f"{ROOT}.{key}", f"profile {chosen!r}")
    layered.update(values)
    layered.update(env_values)
    converted = {path: _convert(path, value) for path, value in layered.items()}
    converted["profile"] = chosen
    config: HelixConfig = _build(HelixConfig, converted)
    _check_mcp(config.mcp, layered)
    return config


def _check_mcp(mcp: MCPConfig, given: Mapping[str, _Value]) -> None:
    """The `mcpServers` file loads, and the servers to warm up are in it."""
    path = f"{ROOT}.mcp.config"
    servers: list[str] = []
    if mcp.config is not None:
        from helixrt.mcp.config import ConfigError as MCPConfigError
        from helixrt.mcp.config import load_config as load_mcp

        source = given["mcp.config"].source
        try:
            servers = list(load_mcp(mcp.config))
        except MCPConfigError as err:
            raise _error(f"{path}: {mcp.config}: {err} (from {source})", path, source) from None
    for name in mcp.warmup_servers:
        if name not in servers:
            where = f"{ROOT}.mcp.warmup_servers"
            value = given["mcp.warmup_servers"]
            known = ", ".join(servers) if servers else f"none: set {path} to an mcpServers file"
            raise _error(
                f"{where}: no MCP server named {name!r}{_suggest(name, servers)}; "
                f"configured servers: {known} (from {value.source})",
                where,
                value.source,
            )
