"""MCP server configuration: `load_config` reads the `mcpServers` JSON that desktop MCP clients
use (and VS Code's `servers` form) into frozen `ServerConfig`s.

It expands `${VAR}`, `${VAR:-default}` (and Cursor's `${env:VAR}`) in `command`, `args`, `env`,
`cwd`, `url` and `headers`, checks every field (an unknown or malformed one is a `ConfigError`
naming the server and the field), reads helixrt's own optional settings (`install`, `timeouts`,
`eager`, `maxConcurrency`, `restart`), and recognises a pinned `npx -y PKG@VERSION ...` or
`uvx PKG==VERSION ...` launch as a package the Preinstaller can install. It neither installs
nor starts anything.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from helixrt.errors import HelixError

__all__ = [
    "ConfigError",
    "PackageSpec",
    "RestartPolicy",
    "ServerConfig",
    "Timeouts",
    "load_config",
    "parse_package",
]


class ConfigError(HelixError, ValueError):
    """A server entry (or the file) is malformed: `server` and `field` name where (None when the
    error is not about one server or one field), the message says what is accepted."""

    def __init__(self, message: str, *, server: str | None = None, field: str | None = None):
        where = []
        if server is not None:
            where.append(f"server {server!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.server = server
        self.field = field


class _FrozenMap(Mapping[str, str]):
    """A read-only, hashable str -> str mapping (the env and headers of a frozen ServerConfig)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data or {})

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._data == dict(other)

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: `connect` (spawn + initialize), `call` (one tool call), `idle` (an unused
    connection is closed back to pending after this long)."""

    connect: float = 30.0
    call: float = 60.0
    idle: float = 300.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """At most `max_restarts` restarts of a crashed server within `window_seconds`."""

    max_restarts: int = 5
    window_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """A package pinned to an exact version: `spec` is what the installer is given
    ("@scope/pkg@1.2.3" for npm, "pkg==1.2.3" for PyPI).

    `allow_scripts` lets npm run the package's lifecycle scripts (off by default); `requires`
    are extra requirements installed with a PyPI package (such as "mcp<2").
    """

    ecosystem: Literal["npm", "pypi"]
    name: str
    version: str
    spec: str
    allow_scripts: bool = False
    requires: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """ "npm:@scope/pkg@1.2.3" / "pypi:pkg==1.2.3": the package's identity."""
        return f"{self.ecosystem}:{self.spec}"

    def __str__(self) -> str:
        return self.key


_EMPTY = _FrozenMap()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One MCP server: how to start it (stdio: `command`, `args`, `env`, `cwd`) or reach it
    (http: `url`, `headers`), and helixrt's settings for it.

    `install` is the package the Preinstaller installs for it (from an `install` field, or
    recognised from a pinned `npx -y PKG@VERSION ...` / `uvx PKG==VERSION ...` launch), and
    `package_args` the arguments the installed copy is run with (those after the package).
    `env` and `headers` are read-only mappings.
    """

    name: str
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default=_EMPTY)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default=_EMPTY)
    install: PackageSpec | None = None
    package_args: tuple[str, ...] = ()
    timeouts: Timeouts = field(default=Timeouts())
    eager: bool = False
    max_concurrency: int | None = None
    restart: RestartPolicy = field(default=RestartPolicy())

    def __post_init__(self) -> None:
        # Built by hand (not by load_config): take lists and dicts, keep the object frozen.
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "package_args", tuple(self.package_args))
        if not isinstance(self.env, _FrozenMap):
            object.__setattr__(self, "env", _FrozenMap(self.env))
        if not isinstance(self.headers, _FrozenMap):
            object.__setattr__(self, "headers", _FrozenMap(self.headers))
        if self.transport == "stdio" and not self.command:
            raise ConfigError("a stdio server needs a command", server=self.name, field="command")
        if self.transport == "http" and not self.url:
            raise ConfigError("an http server needs a url", server=self.name, field="url")
        if self.transport not in ("stdio", "http"):
            raise ConfigError(
                f"must be 'stdio' or 'http', got {self.transport!r}",
                server=self.name,
                field="transport",
            )


# --- package specs ---------------------------------------------------------------------------

_NPM_NAME = re.compile(r"^(?:@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PEP440 = re.compile(
    r"^(?:\d+!)?\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?(?:\+[a-z0-9.]+)?$",
    re.IGNORECASE,
)


def _split_npm(text: str) -> tuple[str, str | None]:
    """ "@scope/pkg@1.2.3" -> ("@scope/pkg", "1.2.3"); no version -> (name, None)."""
    at = text.rfind("@")
    if at <= 0:  # no "@", or only a scope's leading "@"
        return text, None
    return text[:at], text[at + 1 :]


def _npm_spec(text: str) -> PackageSpec:
    name, version = _split_npm(text)
    if not _NPM_NAME.match(name):
        raise ValueError(f"{name!r} is not an npm package name")
    if version is None or not _SEMVER.match(version):
        raise ValueError(
            f"npm package {text!r} is not pinned to an exact version (write {name}@X.Y.Z)"
        )
    return PackageSpec("npm", name, version, f"{name}@{version}")


def _pypi_spec(text: str) -> PackageSpec:
    name, sep, version = text.partition("==")
    if not sep:  # uv also accepts "pkg@1.2.3"
        name, sep, version = text.partition("@")
    name, version = name.strip(), version.strip()
    bare = re.split(r"[<>=!~@\s]", name, maxsplit=1)[0]
    if bare != name and _PYPI_NAME.match(bare):  # "pkg>=1", "pkg~=1.0": a range
        raise ValueError(
            f"PyPI package {text!r} is not pinned to an exact version (write {bare}==X.Y.Z)"
        )
    if not _PYPI_NAME.match(name):
        raise ValueError(f"{name!r} is not a PyPI package name")
    if not sep or not _PEP440.match(version):
        raise ValueError(
            f"PyPI package {text!r} is not pinned to an exact version (write {name}==X.Y.Z)"
        )
    return PackageSpec("pypi", name, version, f"{name}=={version}")


def parse_package(text: str) -> PackageSpec:
    """ "npm:@scope/pkg@1.2.3" or "pypi:pkg==1.2.3" -> PackageSpec; ValueError (a ConfigError)
    when the ecosystem is missing or the version is not exact."""
    ecosystem, sep, rest = text.partition(":")
    try:
        if sep and ecosystem == "npm":
            return _npm_spec(rest)
        if sep and ecosystem == "pypi":
            return _pypi_spec(rest)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    raise ConfigError(
        f"package {text!r}: write 'npm:NAME@VERSION' or 'pypi:NAME==VERSION' (exact versions)"
    )


# --- npx / uvx recognition --------------------------------------------------------------------

# Options that may come before the package and change nothing about what runs.
_NPX_FLAGS = frozenset({"-y", "--yes", "-q", "--quiet", "--prefer-offline", "--prefer-online"})
_UVX_FLAGS = frozenset({"-q", "--quiet", "--offline", "--no-progress", "--isolated"})


def _launcher(command: str) -> str:
    base = os.path.basename(command).lower()
    for suffix in (".cmd", ".exe"):
        base = base.removesuffix(suffix)
    return base


def _recognise(command: str, args: tuple[str, ...]) -> tuple[PackageSpec, tuple[str, ...]] | None:
    """A pinned `npx -y PKG@VERSION ARGS` / `uvx PKG==VERSION ARGS`: (the package, ARGS);
    None for anything else (an unpinned package, options we do not know)."""
    launcher = _launcher(command)
    if launcher not in ("npx", "uvx"):
        return None
    flags = _NPX_FLAGS if launcher == "npx" else _UVX_FLAGS
    for i, arg in enumerate(args):
        if arg in flags:
            continue
        if arg.startswith("-"):
            return None  # --package, --from, -c...: a different shape, run as written
        try:
            spec = _npm_spec(arg) if launcher == "npx" else _pypi_spec(arg)
        except ValueError:
            return None
        return spec, args[i + 1 :]
    return None


# --- ${VAR} expansion -------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(text: str, server: str, where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is not None and (value or default is None):
            return value
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set (give a default: ${{{name}:-VALUE}})",
            server=server,
            field=where,
        )

    return _VAR.sub(substitute, text)


# --- one server entry -------------------------------------------------------------------------

_TRANSPORTS = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamablehttp": "http",
}
_STDIO_FIELDS = frozenset({"command", "args", "env", "cwd", "envFile"})
_HTTP_FIELDS = frozenset({"url", "headers"})
_COMMON_FIELDS = frozenset(
    {
        "type",
        "transport",
        "transportType",
        "install",
        "timeouts",
        "eager",
        "maxConcurrency",
        "restart",
        "disabled",
        "enabled",
    }
)
# Written by client UIs (Cline, Roo, Claude Desktop extensions): accepted and ignored.
_IGNORED_FIELDS = frozenset({"description", "autoApprove", "alwaysAllow"})
_KNOWN_FIELDS = _STDIO_FIELDS | _HTTP_FIELDS | _COMMON_FIELDS | _IGNORED_FIELDS


class _Entry:
    """Reads the fields of one server's JSON object, raising ConfigError with its name."""

    def __init__(self, name: str, raw: Mapping[str, Any], base_dir: Path | None) -> None:
        self.name = name
        self.raw = raw
        self.base_dir = base_dir

    def error(self, message: str, field: str | None = None) -> ConfigError:
        return ConfigError(message, server=self.name, field=field)

    def string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(f"must be a non-empty string, got {value!r}", key)
        return _expand(value, self.name, key)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"must be a list of strings, got {value!r}", key)
        return tuple(_expand(v, self.name, f"{key}[{i}]") for i, v in enumerate(value))

    def mapping(self, key: str) -> dict[str, str]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error("must be an object of string values", key)
        return {k: _expand(v, self.name, f"{key}.{k}") for k, v in value.items()}

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key)
        return value

    def number(self, obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(f"must be a positive number of seconds, got {value!r}", where)
        return float(value)

    def integer(self, value: Any, where: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"must be an integer >= {minimum}, got {value!r}", where)
        return value

    def section(self, key: str, fields: frozenset[str]) -> Mapping[str, Any]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"must be an object with {sorted(fields)}, got {value!r}", key)
        for sub in value:
            if sub not in fields:
                raise self.error(
                    f"unknown field; accepted: {', '.join(sorted(fields))}", key + "." + sub
                )
        return value

    def transport(self) -> Literal["stdio", "http"]:
        given = [k for k in ("type", "transport", "transportType") if k in self.raw]
        if len(given) > 1:
            raise self.error(f"give one of {given}, not several", given[1])
        if not given:
            has_command, has_url = "command" in self.raw, "url" in self.raw
            if has_command == has_url:
                raise self.error(
                    "needs either a 'command' (a stdio server) or a 'url' (an http server)",
                    "url" if has_command else "command",
                )
            return "stdio" if has_command else "http"
        key = given[0]
        value = self.raw[key]
        found = _TRANSPORTS.get(value.lower()) if isinstance(value, str) else None
        if found == "stdio":
            return "stdio"
        if found == "http":
            return "http"
        hint = " (legacy SSE is not supported: use the server's streamable HTTP endpoint)"
        raise self.error(
            f"must be 'stdio' or 'http', got {value!r}" + (hint if value == "sse" else ""), key
        )

    def env_file(self) -> dict[str, str]:
        path_text = self.string("envFile")
        if path_text is None:
            return {}
        path = Path(path_text).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise self.error(f"cannot read {path}: {err.strerror}", "envFile") from None
        env = {}
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.removeprefix("export ").partition("=")
            if not sep:
                raise self.error(f"{path}: expected KEY=VALUE lines, got {line!r}", "envFile")
            env[key.strip()] = value.strip().strip("'\"")
        return env

    def install(self) -> PackageSpec | None:
        section = self.section("install", frozenset({"npm", "pypi", "allowScripts", "with"}))
        if not section:
            if "install" in self.raw:
                raise self.error("must name a package: {'npm': ...} or {'pypi': ...}", "install")
            return None
        ecosystems = [k for k in ("npm", "pypi") if k in section]
        if len(ecosystems) != 1:
            raise self.error("give exactly one of 'npm' or 'pypi'", "install")
        ecosystem = ecosystems[0]
        text = section[ecosystem]
        where = f"install.{ecosystem}"
        if not isinstance(text, str):
            raise self.error(f"must be a package spec string, got {text!r}", where)
        try:
            spec = _npm_spec(text) if ecosystem == "npm" else _pypi_spec(text)
        except ValueError as err:
            raise self.error(str(err), where) from None
        allow = section.get("allowScripts", False)
        if not isinstance(allow, bool):
            raise self.error(f"must be true or false, got {allow!r}", "install.allowScripts")
        requires = section.get("with", [])
        if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
            raise self.error(
                f"must be a list of requirement strings, got {requires!r}", "install.with"
            )
        if requires and ecosystem != "pypi":
            raise self.error("applies to PyPI packages only", "install.with")
        return PackageSpec(
            spec.ecosystem, spec.name, spec.version, spec.spec, allow, tuple(requires)
        )

    def timeouts(self) -> Timeouts:
        section = self.section("timeouts", frozenset({"connect", "call", "idle"}))
        default = Timeouts()
        return Timeouts(
            connect=self.number(section, "connect", "timeouts.connect", default.connect),
            call=self.number(section, "call", "timeouts.call", default.call),
            idle=self.number(section, "idle", "timeouts.idle", default.idle),
        )

    def restart(self) -> RestartPolicy:
        section = self.section("restart", frozenset({"maxRestarts", "windowSeconds"}))
        default = RestartPolicy()
        return RestartPolicy(
            max_restarts=self.integer(
                section.get("maxRestarts", default.max_restarts), "restart.maxRestarts", 0
            ),
            window_seconds=self.number(
                section, "windowSeconds", "restart.windowSeconds", default.window_seconds
            ),
        )

    def max_concurrency(self) -> int | None:
        value = self.raw.get("maxConcurrency")
        return None if value is None else self.integer(value, "maxConcurrency", 1)

    def build(self) -> ServerConfig:
        for key in self.raw:
            if key not in _KNOWN_FIELDS:
                raise self.error(
                    "unknown field; accepted: "
                    + ", ".join(sorted(_KNOWN_FIELDS - _IGNORED_FIELDS)),
                    key,
                )
        transport = self.transport()
        wrong = (_HTTP_FIELDS if transport == "stdio" else _STDIO_FIELDS) & self.raw.keys()
        if wrong:
            raise self.error(f"does not apply to a {transport} server", sorted(wrong)[0])
        common: dict[str, Any] = {
            "timeouts": self.timeouts(),
            "eager": self.flag("eager", False),
            "max_concurrency": self.max_concurrency(),
            "restart": self.restart(),
        }
        install = self.install()
        if transport == "http":
            if install is not None:
                raise self.error("applies to stdio servers only", "install")
            url = self.string("url")
            if url is None or not re.match(r"^https?://[^/\s]+", url):
                raise self.error(f"must be an http:// or https:// URL, got {url!r}", "url")
            return ServerConfig(
                self.name, "http", url=url, headers=self.mapping("headers"), **common
            )
        command = self.string("command")
        if command is None:
            raise self.error("a stdio server needs a command", "command")
        args = self.strings("args")
        recognised = _recognise(command, args)
        if install is None and recognised is not None:
            install, package_args = recognised
        elif install is not None and recognised is not None and recognised[0].name == install.name:
            package_args = recognised[1]
        else:
            package_args = args  # the command is the installed package's own program
        return ServerConfig(
            self.name,
            "stdio",
            command=command,
            args=args,
            env={**self.env_file(), **self.mapping("env")},
            cwd=self.string("cwd"),
            install=install,
            package_args=package_args if install is not None else (),
            **common,
        )


# --- the file ---------------------------------------------------------------------------------

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _read(source: str | os.PathLike[str]) -> tuple[Any, Path | None]:
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text, where, base = source, "the configuration text", None
    else:
        path = Path(source).expanduser()
        where, base = str(path), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read MCP configuration {path}: {err.strerror}") from None
    try:
        return json.loads(text), base
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{where} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, ServerConfig]:
    """The servers of an MCP configuration, by name, in file order.

    `source` is a path to a JSON file (a `str` starting with "{" is taken as the JSON text
    itself) or the already-parsed dict. Accepted shapes: `{"mcpServers": {NAME: ENTRY}}`
    (Claude Desktop, Claude Code, Cursor, Inspector) and `{"servers": {NAME: ENTRY}}` (VS Code;
    its `inputs` are ignored); other top-level keys are ignored. An entry with `"disabled":
    true` (or `"enabled": false`) is left out. Raises ConfigError naming the server and the
    field of the first problem.
    """
    if isinstance(source, Mapping):
        data: Any = source
        base_dir = None
    elif not isinstance(source, str | os.PathLike):
        raise ConfigError(
            "an MCP configuration is a JSON object (a dict, or the path to a JSON file), "
            f"got {type(source).__name__}"
        )
    else:
        data, base_dir = _read(source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"an MCP configuration is a JSON object, got {type(data).__name__}")
    keys = [k for k in ("mcpServers", "servers") if k in data]
    if len(keys) != 1:
        raise ConfigError(
            "expected one top-level 'mcpServers' object (or VS Code's 'servers')"
            + (", not both" if len(keys) > 1 else ""),
            field="servers" if keys else "mcpServers",
        )
    servers = data[keys[0]]
    if not isinstance(servers, Mapping):
        raise ConfigError(
            f"must map server names to entries, got {type(servers).__name__}", field=keys[0]
        )
    result: dict[str, ServerConfig] = {}
    for name, raw in servers.items():
        if not isinstance(name, str) or not _SERVER_NAME.match(name):
            raise ConfigError(
                "a server name is letters, digits, '_', '.' and '-', starting with a letter or "
                f"digit, got {name!r}",
                server=str(name),
            )
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an entry is a JSON object, got {raw!r}", server=name)
        entry = _Entry(name, raw, base_dir)
        if not entry.flag("enabled", True) or entry.flag("disabled", False):
            continue
        result[name] = entry.build()
    return result
