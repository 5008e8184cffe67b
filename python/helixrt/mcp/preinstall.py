"""The Preinstaller: MCP server packages installed in the background, before they are needed, so
that a server starts as `node <its bin js>` or `<venv>/bin/<script>` with no `npx`/`uvx`
resolution and no registry access at launch.

npm packages go into one prefix each (`npm install --prefix`, lifecycle scripts off unless the
package is allowed them), PyPI packages into one virtual environment each (`uv` when it is on
PATH, else `python -m venv` and pip), both pinned to exact versions, under a root directory:

    <root>/npm/<name>@<version>/      node_modules/<name>/... (name's "/" written "+")
    <root>/pypi/<name>@<version>/     a venv
    <root>/logs/<dir name>.log        the installer's output, one file per package
    <root>/manifest.json              what is installed: spec, version, path, bin, installed_at
    <root>/.locks/, <root>/.tmp/      per-package file locks; installs in progress

An install runs in `.tmp` and is renamed into place when complete, so an interrupted one leaves
nothing half-made; a file lock per package makes processes sharing a root take turns (the second
finds the first's result). It does not start servers (the connection pool does) and never
upgrades: a new version is a new directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from helixrt import topics
from helixrt.errors import HelixError, InvalidArgumentError
from helixrt.mcp.config import PackageSpec, ServerConfig, parse_package

__all__ = [
    "DEFAULT_PACKAGES",
    "InstallError",
    "PackageStatus",
    "PreinstallStats",
    "Preinstaller",
    "default_root",
]

logger = logging.getLogger("helixrt.mcp")

State = Literal["absent", "queued", "installing", "installed", "failed"]

MIN_NODE = 18
# A failed package is tried again by `ensure()` once its failure is this old (seconds).
RETRY_AFTER = 30.0
_MANIFEST_FORMAT = 1


class InstallError(HelixError, RuntimeError):
    """A package could not be installed (or is not installed): the message says which, why,
    and where its log is."""


def _npm(spec: str) -> PackageSpec:
    return parse_package(f"npm:{spec}")


def _pypi(spec: str, *requires: str) -> PackageSpec:
    return dataclasses.replace(parse_package(f"pypi:{spec}"), requires=requires)


# The original system's six servers, with their current names and the versions last published
# (November 2026). github, puppeteer and sqlite are archived upstream; puppeteer's browser is
# downloaded by a lifecycle script, which stays off unless allowed (`allow_scripts`); sqlite
# predates the mcp 2 SDK and gets `mcp<2` beside it.
DEFAULT_PACKAGES: Mapping[str, PackageSpec] = {
    "filesystem": _npm("@modelcontextprotocol/server-filesystem@2026.8.31"),
    "github": _npm("@modelcontextprotocol/server-github@2025.4.8"),
    "memory": _npm("@modelcontextprotocol/server-memory@2026.8.31"),
    "fetch": _pypi("mcp-server-fetch==2026.10.24"),
    "puppeteer": _npm("@modelcontextprotocol/server-puppeteer@2025.5.12"),
    "sqlite": _pypi("mcp-server-sqlite==2025.4.25", "mcp<2"),
}


def default_root() -> Path:
    """`$HELIXRT_MCP_ROOT`, else `$XDG_CACHE_HOME/helixrt/mcp` (`~/.cache/helixrt/mcp`)."""
    explicit = os.environ.get("HELIXRT_MCP_ROOT")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "helixrt" / "mcp"


@dataclass(frozen=True, slots=True)
class PackageStatus:
    """Where one package stands. `name` is the server (or default-set) name it was given under,
    `package` its spec ("npm:@scope/pkg@1.2.3"); `duration` is the install's seconds (that of
    the recorded install for one found installed); `path` is its directory once installed."""

    name: str
    package: str
    ecosystem: str
    version: str
    state: State
    duration: float | None = None
    error: str | None = None
    log_path: str | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class PreinstallStats:
    """Counters: `installs` this Preinstaller ran and their `install_seconds`; gauges: packages
    `installed`, `failed`, `installing` and `queued` now."""

    installed: int
    failed: int
    installing: int
    queued: int
    installs: int
    install_seconds: float


def _dir_name(spec: PackageSpec) -> str:
    name = spec.name.replace("/", "+") if spec.ecosystem == "npm" else _normalise(spec.name)
    base = f"{name}@{spec.version}"
    if spec.requires:  # the extra requirements change what is installed: another directory
        digest = hashlib.sha256("\n".join(sorted(spec.requires)).encode()).hexdigest()[:8]
        base += f"+{digest}"
    return base


def _ident(spec: PackageSpec) -> str:
    """The manifest key: the package key, with its extra requirements."""
    return spec.key + (f" with {','.join(sorted(spec.requires))}" if spec.requires else "")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Package:
    """One package's state in this process, and the labels (server names) it serves."""

    __slots__ = (
        "duration",
        "entry",
        "error",
        "failed_at",
        "label",
        "log_path",
        "spec",
        "state",
        "task",
    )

    def __init__(self, spec: PackageSpec, label: str) -> None:
        self.spec = spec
        self.label = label
        self.state: State = "absent"
        self.duration: float | None = None
        self.error: str | None = None
        self.failed_at = 0.0
        self.log_path: Path | None = None
        self.entry: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None


class Preinstaller:
    """`Preinstaller(root=None, packages=None, *, concurrency=2, timeout=600.0, offline=False,
    bus=None, allow_scripts=())`

    - `root`: where packages go; default `$HELIXRT_MCP_ROOT`, else `$XDG_CACHE_HOME/helixrt/mcp`.
    - `packages`: specs ("npm:@scope/pkg@1.2.3", "pypi:pkg==1.2.3" or `PackageSpec`s) or the
      servers of `load_config` (a dict or an iterable of `ServerConfig`; servers that need no
      install are remembered as such); None is the original system's six (`DEFAULT_PACKAGES`).
      Each is known by a name: the server's, the default set's, or the package's.
    - `concurrency` installs at once; `timeout` seconds per install (waiting for another
      process's install of the same package counts); `offline=True` installs from the npm/uv
      caches only (`npm --offline`; pip gets `--no-index` and fails); `allow_scripts`: npm
      package names whose lifecycle scripts (and their dependencies') may run.
    - `bus`: anything with `publish(topic, payload, *, source=...)`; gets
      `mcp.package.installed` / `mcp.package.failed`.

    `await start()` queues every package not installed yet and returns; `await ensure(name)`
    waits for one (a server name, a package name or spec; a name that needs no install, or
    that this Preinstaller does not know, returns at once); `await wait_all()`; `status()`,
    `resolve(name)` and `launch(server)` read what is installed; `await aclose()` (or
    `async with`) cancels installs in progress, leaving nothing half-made. A failed package is
    installed again by `start()`, or by `ensure()` once the failure is `RETRY_AFTER` seconds
    old. The async methods belong to one event loop; `status`, `resolve`, `launch` and `stats`
    may be called from any thread.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        packages: Any = None,
        *,
        concurrency: int = 2,
        timeout: float = 600.0,
        offline: bool = False,
        bus: Any = None,
        allow_scripts: Iterable[str] = (),
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be at least 1, got {concurrency!r}")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgumentError(f"timeout must be a positive number, got {timeout!r}")
        self.root = Path(root).expanduser().absolute() if root is not None else default_root()
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.offline = offline
        self.allow_scripts = frozenset(allow_scripts)
        self._bus = bus
        self._packages: dict[str, _Package] = {}  # by _ident
        self._labels: dict[str, _Package | None] = {}  # name -> package (None: needs none)
        self._semaphore: asyncio.Semaphore | None = None
        self._tools: dict[str, tuple[str, ...]] = {}
        self._installs = 0
        self._install_seconds = 0.0
        self._closed = False
        for label, item in self._items(DEFAULT_PACKAGES if packages is None else packages):
            self._add(label, item)
        manifest = self._read_manifest()
        for package in self._packages.values():
            self._adopt(package, manifest)

    # --- the package set ---------------------------------------------------------------------

    @staticmethod
    def _items(packages: Any) -> Iterable[tuple[str, PackageSpec | None]]:
        if isinstance(packages, str | PackageSpec | ServerConfig):
            packages = [packages]
        elif isinstance(packages, Mapping):
            packages = list(packages.items())
        for item in packages:
            label: str | None = None
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                label, item = item
            if isinstance(item, str):
                item = parse_package(item)
            if isinstance(item, ServerConfig):
                yield label or item.name, item.install
            elif isinstance(item, PackageSpec):
                yield label or item.name, item
            else:
                raise InvalidArgumentError(
                    "packages are specs ('npm:NAME@VERSION', 'pypi:NAME==VERSION'), "
                    f"PackageSpecs or ServerConfigs, got {item!r}"
                )

    def _add(self, label: str, spec: PackageSpec | None) -> _Package | None:
        if spec is not None and spec.ecosystem == "npm" and spec.name in self.allow_scripts:
            spec = dataclasses.replace(spec, allow_scripts=True)
        package = None
        if spec is not None:
            package = self._packages.get(_ident(spec))
            if package is None:
                package = self._packages[_ident(spec)] = _Package(spec, label)
        known = self._labels.get(label, package)
        if known is not package:
            raise InvalidArgumentError(f"two different packages are named {label!r}")
        self._labels[label] = package
        return package

    def _find(self, name: str | ServerConfig | PackageSpec) -> _Package | None:
        if isinstance(name, ServerConfig | PackageSpec):
            label = name.name
            spec = name.install if isinstance(name, ServerConfig) else name
            if spec is not None and _ident(spec) not in self._packages:
                return self._adopt_new(label, spec)
            return self._packages[_ident(spec)] if spec is not None else None
        if name in self._labels:
            return self._labels[name]
        for package in self._packages.values():
            if name in (
                package.spec.name,
                package.spec.key,
                package.spec.spec,
                _ident(package.spec),
            ):
                return package
        with contextlib.suppress(ValueError):
            return self._adopt_new(name, parse_package(name))
        return None

    def _adopt_new(self, label: str, spec: PackageSpec) -> _Package:
        if label in self._labels:
            label = spec.key
        package = self._add(label, spec)
        assert package is not None
        self._adopt(package, self._read_manifest())
        return package

    # --- the manifest ------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def _read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable MCP manifest %s: %s", self.manifest_path, err)
            return {}
        packages = data.get("packages") if isinstance(data, dict) else None
        return packages if isinstance(packages, dict) else {}

    def _write_manifest_entry(self, spec: PackageSpec, entry: dict[str, Any]) -> None:
        """Adds one entry, under the manifest's own lock (read, modify, write, rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".manifest.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few milliseconds by anyone
            packages = self._read_manifest()
            packages[_ident(spec)] = entry
            tmp = self.manifest_path.with_name(f".manifest.{os.getpid()}.tmp")
            data = {"format": _MANIFEST_FORMAT, "packages": packages}
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.manifest_path)
        finally:
            os.close(fd)

    def _valid(self, entry: Any) -> bool:
        if not isinstance(entry, dict):
            return False
        paths = [entry.get("path"), entry.get("bin"), entry.get("python", entry.get("bin"))]
        return all(isinstance(p, str) and (self.root / p).exists() for p in paths)

    def _adopt(self, package: _Package, manifest: dict[str, Any]) -> bool:
        """Marks `package` installed if the manifest records it and its files are there."""
        entry = manifest.get(_ident(package.spec))
        if entry is None or not self._valid(entry):
            return False
        package.entry = entry
        package.state = "installed"
        package.error = None
        duration = entry.get("duration")
        package.duration = float(duration) if isinstance(duration, int | float) else None
        package.log_path = self.root / "logs" / f"{_dir_name(package.spec)}.log"
        return True

    # --- running -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Queues every package not installed yet (failed ones again) and returns at once."""
        self._check_open()
        for package in self._packages.values():
            if package.state in ("absent", "failed"):
                self._schedule(package)

    async def ensure(self, name: str | ServerConfig | PackageSpec) -> None:
        """Waits until the package for `name` (a server name, a package name or spec, or a
        ServerConfig) is installed, installing it if nobody has started to; raises InstallError
        if it failed. Returns at once for a name that needs no install or that this
        Preinstaller does not know. Cancelling the caller does not cancel the install."""
        self._check_open()
        package = self._find(name)
        if package is None or package.state == "installed":
            return
        if package.state == "failed" and time.monotonic() - package.failed_at < RETRY_AFTER:
            raise InstallError(package.error)
        await asyncio.shield(self._schedule(package))
        if not self._installed(package):
            raise InstallError(package.error or f"{package.spec.key} was not installed")

    async def wait_all(self) -> dict[str, PackageStatus]:
        """Starts what is not started, waits for every package, and returns `status()` (a
        failure is reported there, not raised)."""
        await self.start()
        tasks = [p.task for p in self._packages.values() if p.task is not None]
        if tasks:
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
        return self.status()

    @staticmethod
    def _installed(package: _Package) -> bool:
        # A method, not an inline comparison: mypy would narrow `state` across the await.
        return package.state == "installed"

    def _schedule(self, package: _Package) -> asyncio.Task[None]:
        if package.task is None or package.task.done():
            package.state = "queued"
            package.error = None
            package.task = asyncio.get_running_loop().create_task(
                self._run(package), name=f"helixrt.mcp install {package.spec.key}"
            )
        return package.task

    async def _run(self, package: _Package) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        try:
            async with self._semaphore:
                package.state = "installing"
                started = time.monotonic()
                ran = await self._install(package)
                if ran:
                    package.duration = time.monotonic() - started
                    self._installs += 1
                    self._install_seconds += package.duration
        except asyncio.CancelledError:
            package.state = "absent"
            raise
        except Exception as err:
            package.state = "failed"
            package.failed_at = time.monotonic()
            if isinstance(err, InstallError):
                package.error = str(err)
            else:
                logger.exception("installing %s failed", package.spec.key)
                package.error = f"installing {package.spec.key} failed: {err!r}"
            self._publish(topics.MCP_PACKAGE_FAILED, package)
        else:
            package.state = "installed"
            self._publish(topics.MCP_PACKAGE_INSTALLED, package)

    async def _install(self, package: _Package) -> bool:
        """Installs `package` under its file lock; False if it turned out installed already
        (by another process while this one waited)."""
        spec = package.spec
        deadline = time.monotonic() + self.timeout
        name = _dir_name(spec)
        final = self.root / spec.ecosystem / name
        log_path = self.root / "logs" / f"{name}.log"
        async with _FileLock(self.root / ".locks" / f"{name}.lock", deadline, spec):
            if self._adopt(package, self._read_manifest()):
                return False
            try:
                tool = await self._tool(spec.ecosystem)
            except InstallError as err:
                raise InstallError(f"cannot install {spec.key}: {err}") from None
            package.log_path = log_path
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale(name)
            tmp_parent = self.root / ".tmp"
            tmp_parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_parent / f"{name}.{os.getpid()}.{os.urandom(4).hex()}"
            try:
                with log_path.open("w", encoding="utf-8") as log:
                    log.write(f"# helixrt: installing {_ident(spec)} at {_now()}\n")
                    log.flush()
                    if spec.ecosystem == "npm":
                        entry = await self._install_npm(spec, tool, tmp, final, log, deadline)
                    else:
                        entry = await self._install_pypi(spec, tool, tmp, final, log, deadline)
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # left by a removed manifest entry, or damaged: replace it
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            entry["installed_at"] = _now()
            entry["duration"] = round(time.monotonic() - (deadline - self.timeout), 3)
            self._write_manifest_entry(spec, entry)
            package.entry = entry
            return True

    def _remove_stale(self, name: str) -> None:
        # Holding the package's lock: a temporary directory of it is a dead process's.
        for stale in (self.root / ".tmp").glob(f"{name}.*"):
            shutil.rmtree(stale, ignore_errors=True)

    # --- npm ---------------------------------------------------------------------------------

    async def _install_npm(
        self,
        spec: PackageSpec,
        tool: tuple[str, ...],
        tmp: Path,
        final: Path,
        log: IO[str],
        deadline: float,
    ) -> dict[str, Any]:
        node, npm = tool
        tmp.mkdir()
        # Our own package.json, so npm treats tmp as the project and never walks upwards.
        (tmp / "package.json").write_text('{"private": true}\n', encoding="utf-8")
        argv = [npm, "install", "--prefix", str(tmp), "--no-audit", "--no-fund", "--save-exact"]
        argv += ["--no-update-notifier", "--loglevel=warn"]
        if not spec.allow_scripts:
            argv.append("--ignore-scripts")
        if self.offline:
            argv.append("--offline")
        argv.append(spec.spec)
        env = {**os.environ, "npm_config_progress": "false"}
        await self._run_logged(spec, argv, log, env, deadline)
        package_dir = tmp / "node_modules" / spec.name
        bin_rel = _npm_bin(spec, package_dir)
        relative = final.relative_to(self.root)
        return {
            "ecosystem": "npm",
            "name": spec.name,
            "version": spec.version,
            "spec": spec.spec,
            "path": str(relative),
            "bin": str(relative / "node_modules" / spec.name / bin_rel),
            "node": node,
        }

    # --- PyPI --------------------------------------------------------------------------------

    async def _install_pypi(
        self,
        spec: PackageSpec,
        tool: tuple[str, ...],
        tmp: Path,
        final: Path,
        log: IO[str],
        deadline: float,
    ) -> dict[str, Any]:
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
        env.pop("VIRTUAL_ENV", None)
        python = tmp / "bin" / "python"
        requirements = [spec.spec, *spec.requires]
        if tool[0] == "uv":
            uv = tool[1]
            venv = [uv, "venv", "--quiet", "--python", sys.executable, str(tmp)]
            await self._run_logged(spec, venv, log, env, deadline)
            argv = [uv, "pip", "install", "--python", str(python)]
            argv += ["--offline"] if self.offline else []
        else:
            venv = [sys.executable, "-m", "venv", "--without-pip", str(tmp)]
            await self._run_logged(spec, venv, log, env, deadline)
            argv = [sys.executable, "-m", "pip", "--python", str(python), "install"]
            argv += ["--no-warn-script-location", "--progress-bar", "off"]
            argv += ["--no-index"] if self.offline else []
        await self._run_logged(spec, [*argv, *requirements], log, env, deadline)
        script = _console_script(spec, tmp)
        relative = final.relative_to(self.root)
        return {
            "ecosystem": "pypi",
            "name": spec.name,
            "version": spec.version,
            "spec": spec.spec,
            "requires": list(spec.requires),
            "path": str(relative),
            "bin": str(relative / "bin" / script),
            "python": str(relative / "bin" / "python"),
        }

    # --- tools and processes -----------------------------------------------------------------

    async def _tool(self, ecosystem: str) -> tuple[str, ...]:
        """Checks (once) what installing from `ecosystem` needs; InstallError says what is
        missing."""
        found = self._tools.get(ecosystem)
        if found is None:
            check = _check_node if ecosystem == "npm" else _check_python
            found = self._tools[ecosystem] = await asyncio.to_thread(check)
        return found

    async def _run_logged(
        self,
        spec: PackageSpec,
        argv: list[str],
        log: IO[str],
        env: Mapping[str, str],
        deadline: float,
    ) -> None:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group: killed whole on timeout/cancel
        )
        try:
            code = await asyncio.wait_for(process.wait(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            await _kill(process)
            raise InstallError(
                f"installing {spec.key} timed out after {self.timeout:g} s (log: {log.name})"
            ) from None
        except BaseException:
            await _kill(process)
            raise
        if code != 0:
            log.flush()
            tool = Path(argv[0]).name + (f" {argv[1]}" if argv[1:2] != ["-m"] else f" -m {argv[2]}")
            raise InstallError(
                f"installing {spec.key} failed: {tool} exited with status {code}"
                f"{_explain(Path(log.name), self.offline)} (log: {log.name})"
            )

    # --- reading what is installed -----------------------------------------------------------

    def status(self) -> dict[str, PackageStatus]:
        """Every package, by the name it was given under (a server name, a default-set name, or
        the package name)."""
        result = {}
        for label, package in self._labels.items():
            if package is None:
                continue
            spec = package.spec
            path = None
            if package.state == "installed" and package.entry is not None:
                path = str(self.root / package.entry["path"])
            result[label] = PackageStatus(
                name=label,
                package=spec.key,
                ecosystem=spec.ecosystem,
                version=spec.version,
                state=package.state,
                duration=package.duration,
                error=package.error,
                log_path=str(package.log_path) if package.log_path is not None else None,
                path=path,
            )
        return result

    def resolve(self, name: str | ServerConfig | PackageSpec) -> tuple[str, list[str]]:
        """(command, args) that start the installed copy: node and the absolute path of the
        package's bin js (npm), or the venv's python and its console script (PyPI).
        InstallError if it is not installed (yet)."""
        package = self._find(name)
        if package is None:
            raise InstallError(f"{name!r} names no package this Preinstaller installs")
        if package.state != "installed" and not self._adopt(package, self._read_manifest()):
            detail = f": {package.error}" if package.state == "failed" else ""
            raise InstallError(
                f"{package.spec.key} is not installed (state {package.state}; await "
                f"ensure({package.label!r}) first){detail}"
            )
        entry = package.entry
        assert entry is not None
        bin_path = str(self.root / entry["bin"])
        if package.spec.ecosystem == "pypi":
            return str(self.root / entry["python"]), [bin_path]
        node = shutil.which("node")
        if node is None:
            raise InstallError(_node_missing("`node` is not on PATH"))
        return node, [bin_path]

    def launch(self, server: ServerConfig) -> ServerConfig:
        """`server` rewritten to run its installed copy (the resolved command, then its
        `package_args`); `server` itself when it has nothing to install."""
        if server.install is None:
            return server
        command, args = self.resolve(server)
        return dataclasses.replace(server, command=command, args=(*args, *server.package_args))

    def stats(self) -> PreinstallStats:
        states = [p.state for p in self._packages.values()]
        return PreinstallStats(
            installed=states.count("installed"),
            failed=states.count("failed"),
            installing=states.count("installing"),
            queued=states.count("queued"),
            installs=self._installs,
            install_seconds=self._install_seconds,
        )

    # --- lifetime ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancels the installs in progress (their processes are killed and their temporary
        directories removed) and waits for them to end."""
        self._closed = True
        tasks = [p.task for p in self._packages.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Preinstaller:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise InstallError("the Preinstaller is closed")

    def _publish(self, topic: str, package: _Package) -> None:
        if self._bus is None:
            return
        payload: dict[str, Any] = {
            "name": package.label,
            "package": package.spec.key,
            "ecosystem": package.spec.ecosystem,
            "version": package.spec.version,
            "duration": package.duration,
            "log_path": str(package.log_path) if package.log_path is not None else None,
        }
        if package.error is not None:
            payload["error"] = package.error
        try:
            self._bus.publish(topic, payload, source="mcp_preinstaller")
        except Exception:
            logger.exception("publishing %s failed", topic)

    def __repr__(self) -> str:
        return f"<Preinstaller {self.root} packages={len(self._packages)}>"


class _FileLock:
    """An exclusive `flock` on `path`, polled so that waiting stays cancellable and bounded."""

    def __init__(self, path: Path, deadline: float, spec: PackageSpec) -> None:
        self.path = path
        self.deadline = deadline
        self.spec = spec
        self.fd = -1

    async def __aenter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= self.deadline:
                        raise InstallError(
                            f"installing {self.spec.key}: timed out waiting for another process "
                            f"installing it (lock {self.path})"
                        ) from None
                    await asyncio.sleep(0.1)
        except BaseException:
            os.close(self.fd)
            raise

    async def __aexit__(self, *_exc: object) -> None:
        os.close(self.fd)  # releases the lock


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await asyncio.shield(process.wait())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# What an installer's log says, in a sentence.
_DIAGNOSES = (
    ("ENOTCACHED", "it is not in the npm cache, and installs are offline"),
    ("E404", "the registry has no such package"),
    ("ETARGET", "the registry has no such version of it"),
    ("EAI_AGAIN", "the registry could not be reached (no network?)"),
    ("ENOTFOUND", "the registry could not be reached (no network?)"),
    ("ECONNREFUSED", "the registry could not be reached"),
    ("No matching distribution found", "the index has no such package or version"),
    ("Could not find a version that satisfies", "the index has no such package or version"),
    ("not found in the package registry", "the index has no such package or version"),
    ("No solution found", "the index has no such package or version"),
)


def _explain(log_path: Path, offline: bool) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for marker, meaning in _DIAGNOSES:
        if marker in text:
            return f": {meaning}"
    if offline and ("--no-index" in text or "--offline" in text):
        return ": it cannot be installed offline (pip has no cache-only mode; use uv)"
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    return f": {lines[-1].strip()}" if lines else ""


def _npm_bin(spec: PackageSpec, package_dir: Path) -> str:
    """The package's executable as npx would pick it, relative to its directory."""
    try:
        manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InstallError(f"installing {spec.key}: no readable package.json ({err})") from None
    if manifest.get("version") != spec.version:
        raise InstallError(
            f"installing {spec.key}: npm installed version {manifest.get('version')!r}"
        )
    bins = manifest.get("bin")
    unscoped = spec.name.rsplit("/", 1)[-1]
    path: Any = None
    if isinstance(bins, str):
        path = bins
    elif isinstance(bins, dict) and bins:
        targets = set(bins.values())
        path = next(iter(bins.values())) if len(targets) == 1 else bins.get(unscoped)
    if not isinstance(path, str) or not (package_dir / path).is_file():
        raise InstallError(
            f"installing {spec.key}: the package declares no executable to run (package.json "
            f"'bin' is {bins!r})"
        )
    return os.path.normpath(path)


def _console_script(spec: PackageSpec, venv: Path) -> str:
    """The venv's console script for `spec`: the one named like the package, else its only
    one (read from the dist-info's entry_points.txt, without running anything)."""
    wanted = _normalise(spec.name)
    scripts: list[str] = []
    for info in (venv / "lib").glob("python*/site-packages/*.dist-info"):
        if _normalise(info.name.split("-", 1)[0]) != wanted:
            continue
        entry_points = info / "entry_points.txt"
        if entry_points.is_file():
            section = ""
            for line in entry_points.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line
                elif section == "[console_scripts]" and "=" in line:
                    scripts.append(line.split("=", 1)[0].strip())
    chosen = next((s for s in scripts if _normalise(s) == wanted), None)
    if chosen is None and len(scripts) == 1:
        chosen = scripts[0]
    if chosen is None or not (venv / "bin" / chosen).is_file():
        raise InstallError(
            f"installing {spec.key}: the package has no console script to run "
            f"(found {scripts or 'none'})"
        )
    return chosen


def _node_missing(what: str) -> str:
    return (
        f"installing npm MCP servers needs Node.js >= {MIN_NODE} with npm: {what} "
        "(install Node.js 18 or newer with npm, e.g. `apt-get install nodejs npm`, "
        "or from https://nodejs.org)"
    )


def _check_node() -> tuple[str, str]:
    node = shutil.which("node")
    if node is None:
        raise InstallError(_node_missing("`node` is not on PATH"))
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise InstallError(_node_missing(f"`{node} --version` failed ({err})")) from None
    match = re.match(r"v?(\d+)", out)
    if match is None or int(match.group(1)) < MIN_NODE:
        raise InstallError(_node_missing(f"{node} is Node.js {out or 'of unknown version'}"))
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(_node_missing(f"found Node.js {out}, but `npm` is not on PATH"))
    return node, npm


def _check_python() -> tuple[str, str]:
    """("uv", path) when uv is on PATH (or beside this Python), else ("pip", python)."""
    uv = shutil.which("uv") or shutil.which("uv", path=sysconfig.get_path("scripts"))
    if uv is not None:
        return "uv", uv
    hint = "install uv (https://docs.astral.sh/uv/) or pip >= 22.3 into this Python"
    try:
        import venv  # noqa: F401
    except ImportError:
        raise InstallError(
            f"installing PyPI MCP servers needs the venv module, missing from {sys.executable} "
            f"(Debian: apt-get install python3-venv), or uv; {hint}"
        ) from None
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        raise InstallError(
            f"installing PyPI MCP servers needs uv on PATH, or pip in {sys.executable}: neither "
            f"was found; {hint}"
        ) from None
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < (22, 3):
        raise InstallError(
            f"installing PyPI MCP servers needs pip >= 22.3 (for --python), found pip {version} "
            f"in {sys.executable}; {hint}"
        )
    return "pip", sys.executable
