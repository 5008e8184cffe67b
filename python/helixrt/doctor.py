"""`helixrt doctor`: is this machine ready for helixrt?

Checks the Rust core's build, whether Redis at `REDIS_URL` answers, and whether the tools MCP
servers are installed with (node and npm for npm packages, uv or pip for PyPI packages) are on
PATH. Each check prints one line, and a hint when something is missing. It changes nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import unquote, urlsplit

__all__ = ["Check", "check_redis", "run_checks", "run_doctor"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = False


def check_core() -> Check:
    try:
        from helixrt import _core

        info = _core.build_info()
    except Exception as err:  # any failure to load the extension is the finding itself
        return Check(
            "rust core",
            False,
            f"cannot load helixrt._core: {err}",
            "reinstall helixrt for this Python (pip install --force-reinstall helixrt)",
            required=True,
        )
    return Check(
        "rust core",
        True,
        f"helixrt {info['version']}, {info['profile']} build, {info['rustc']}, pyo3 {info['pyo3']}",
        "" if info["profile"] == "release" else "a debug build is slow: build with --release",
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{host}{port}").geturl()


def _resp(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(sock: socket.socket) -> bytes:
    """One RESP reply; enough of the protocol for PING, AUTH, SELECT and INFO."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n")
    if head.startswith(b"-"):
        raise ConnectionError(head[1:].decode(errors="replace"))
    if head.startswith(b"$"):
        size = int(head[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            rest += chunk
        return rest[:size]
    return head[1:]


def _connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(parts.path)
        return sock
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"REDIS_URL scheme {parts.scheme!r}: expected redis://, rediss:// or unix://"
        )
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    sock = socket.create_connection((host, port), timeout=timeout)
    if parts.scheme == "rediss":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    return sock


def check_redis(url: str | None = None, timeout: float = 1.0) -> Check:
    """PING the Redis server at `url` (default: `REDIS_URL`, else the local default port)."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    shown = _redacted(url)
    hint = (
        "start redis-server, or point REDIS_URL at a running Redis "
        "(TieredCache's L2 and the event bus bridge need one)"
    )
    parts = urlsplit(url)
    try:
        started = time.perf_counter()
        with _connect(url, timeout) as sock:
            if parts.password is not None:
                user = [unquote(parts.username)] if parts.username else []
                sock.sendall(_resp("AUTH", *user, unquote(parts.password)))
                _read_reply(sock)
            sock.sendall(_resp("PING"))
            pong = _read_reply(sock)
            elapsed_ms = (time.perf_counter() - started) * 1000
            sock.sendall(_resp("INFO", "server"))
            info = _read_reply(sock).decode(errors="replace")
    except (OSError, ConnectionError, ValueError) as err:
        return Check("redis", False, f"nothing answers at {shown} ({err})", hint)
    if pong != b"PONG":
        return Check("redis", False, f"{shown} answered PING with {pong!r}", hint)
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    version = fields.get("redis_version", "unknown version").strip()
    return Check("redis", True, f"{shown} answered PING in {elapsed_ms:.1f} ms (Redis {version})")


def _tool_version(name: str, *args: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{path} (did not report a version)"
    return f"{out.splitlines()[0] if out else 'unknown version'} ({path})"


def check_node() -> list[Check]:
    hint = "install Node.js 18+ with npm to run npm MCP servers (Debian: apt-get install nodejs)"
    checks = []
    for tool in ("node", "npm"):
        version = _tool_version(tool, "--version")
        checks.append(
            Check(tool, True, version) if version else Check(tool, False, "not on PATH", hint)
        )
    return checks


def check_python_installer() -> Check:
    uv = _tool_version("uv", "--version")
    if uv:
        return Check("uv", True, uv)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return Check(
            "uv / pip",
            False,
            "neither uv nor pip is available",
            "install uv (pip install uv) or pip, to run PyPI MCP servers",
        )
    return Check("pip", True, f"{out.split(' from ')[0]} (uv not found; pip works, uv is faster)")


def run_checks() -> list[Check]:
    return [check_core(), check_redis(), *check_node(), check_python_installer()]


def run_doctor(out: TextIO) -> int:
    """Print the report; exit status 1 only when something helixrt cannot run without is broken."""
    from helixrt import __version__

    checks = run_checks()
    print(f"helixrt {__version__} on Python {sys.version.split()[0]} ({sys.platform})", file=out)
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "ok  " if check.ok else "MISS"
        print(f"  {mark}  {check.name:<{width}}  {check.detail}", file=out)
        if check.hint:
            print(f"        {'':<{width}}  hint: {check.hint}", file=out)
    return 1 if any(check.required and not check.ok for check in checks) else 0
