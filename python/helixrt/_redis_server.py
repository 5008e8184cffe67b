"""A throwaway `redis-server` on a free loopback port, for tests, demos and benchmarks.

Not a way to run Redis in production: no persistence, no password, gone when the context exits.
`redis_cluster()` starts a throwaway Redis Cluster the same way (masters only, no replicas).
`python -m helixrt._redis_server -- CMD ...` runs CMD with `REDIS_URL` pointing at a fresh server
(or, when no redis-server is on PATH, runs CMD without one and says so on stderr).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["free_port", "redis_cluster", "redis_server"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {process.returncode} on start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"redis-server did not answer on 127.0.0.1:{port} within {timeout} s")


@contextmanager
def redis_server(
    executable: str = "redis-server",
    timeout: float = 10.0,
    *,
    port: int | None = None,
    appendonly: bool = False,
) -> Iterator[str]:
    """Start redis-server on a free loopback port; yield its URL; stop it and remove its files.

    `port` starts it on that port instead (one attempt: a test restarting "the same" server
    passes the port of the one it stopped); `appendonly` turns the append-only file on (kept in
    the server's temporary directory, so only for the life of this context).
    """
    path = shutil.which(executable)
    if path is None:
        raise FileNotFoundError(
            f"{executable} is not on PATH (Debian: apt-get install redis-server)"
        )
    with tempfile.TemporaryDirectory(prefix="helixrt-redis-") as workdir:
        attempts = 3 if port is None else 1
        for _attempt in range(attempts):  # another process may take a free port before start
            chosen = free_port() if port is None else port
            process = subprocess.Popen(
                [
                    path,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(chosen),
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if appendonly else "no",
                    "--dir",
                    workdir,
                    "--protected-mode",
                    "yes",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_until_listening(chosen, process, timeout)
            except RuntimeError:
                continue
            except BaseException:
                process.kill()
                process.wait()
                raise
            break
        else:
            where = "three free ports" if port is None else f"port {port}"
            raise RuntimeError(f"redis-server failed to start on {where}")
        try:
            yield f"redis://127.0.0.1:{chosen}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# A Redis Cluster has this many hash slots, shared out between its masters.
_SLOTS = 16384


def _read_reply(stream: Any) -> Any:
    """One RESP2 reply from `stream` (enough of the protocol for the commands used here)."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = stream.read(size + 2)[:-2]
        return data.decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply from redis-server: {line[:80]!r}")


def _command(port: int, *args: object, timeout: float = 2.0) -> Any:
    """Sends one command to the redis-server on 127.0.0.1:`port`; returns its reply."""
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _cluster_info(port: int) -> dict[str, str]:
    text = _command(port, "CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:]).strip()
    except OSError:
        return "(no log)"


@contextmanager
def redis_cluster(
    masters: int = 3,
    executable: str = "redis-server",
    timeout: float = 15.0,
) -> Iterator[str]:
    """Start a Redis Cluster of `masters` masters (no replicas) on free loopback ports; yield
    `redis+cluster://127.0.0.1:PORT` (the first master: a client finds the others from it);
    stop every server and remove their files on exit.

    Each master gets an equal share of the 16384 hash slots (CLUSTER ADDSLOTSRANGE) and meets
    the first (CLUSTER MEET); the context is entered once every node's CLUSTER INFO says
    `cluster_state:ok` and knows all `masters`. Raises RuntimeError (with the end of the
    servers' logs) when that does not happen within `timeout` seconds.
    """
    if not isinstance(masters, int) or isinstance(masters, bool) or masters < 1:
        raise ValueError(f"masters must be a positive int, got {masters!r}")
    path = shutil.which(executable)
    if path is None:
        raise FileNotFoundError(
            f"{executable} is not on PATH (Debian: apt-get install redis-server)"
        )
    deadline = time.monotonic() + timeout
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="helixrt-redis-cluster-") as workdir:
        try:
            nodes: list[tuple[int, int]] = []  # (port, cluster bus port) of each master
            for index in range(masters):
                logfile = os.path.join(workdir, f"node-{index}.log")
                for _attempt in range(3):  # another process may take a free port before start
                    port, bus_port = free_port(), free_port()
                    taken = {p for node in nodes for p in node}
                    if port == bus_port or {port, bus_port} & taken:
                        continue
                    process = subprocess.Popen(
                        [
                            path,
                            "--bind",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            str(bus_port),
                            "--cluster-config-file",
                            os.path.join(workdir, f"nodes-{port}.conf"),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            workdir,
                            "--logfile",
                            logfile,
                            "--protected-mode",
                            "yes",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    processes.append(process)
                    try:
                        _wait_until_listening(port, process, max(deadline - time.monotonic(), 1))
                    except RuntimeError:
                        continue
                    nodes.append((port, bus_port))
                    break
                else:
                    raise RuntimeError(
                        f"redis-server (cluster node {index}) failed to start on three free "
                        f"ports: {_log_tail(logfile)}"
                    )
            first = nodes[0][0]
            for index, (port, bus_port) in enumerate(nodes):
                start = _SLOTS * index // masters
                end = _SLOTS * (index + 1) // masters - 1
                _command(port, "CLUSTER", "ADDSLOTSRANGE", start, end)
                # Distinct config epochs, as `redis-cli --cluster create` gives them.
                _command(port, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                if port != first:
                    _command(first, "CLUSTER", "MEET", "127.0.0.1", port, bus_port)
            pending = [port for port, _ in nodes]
            while pending:
                infos = {port: _cluster_info(port) for port in pending}
                pending = [
                    port
                    for port, info in infos.items()
                    if info.get("cluster_state") != "ok"
                    or info.get("cluster_known_nodes") != str(masters)
                    or info.get("cluster_slots_assigned") != str(_SLOTS)
                ]
                if pending and time.monotonic() > deadline:
                    logs = "; ".join(
                        _log_tail(os.path.join(workdir, f"node-{i}.log"), 2) for i in range(masters)
                    )
                    raise RuntimeError(
                        f"the Redis Cluster of {masters} masters was not ready within "
                        f"{timeout} s (nodes {pending} not ok: {infos[pending[0]]}); logs: {logs}"
                    )
                if pending:
                    time.sleep(0.05)
            yield f"redis+cluster://127.0.0.1:{first}"
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print("usage: python -m helixrt._redis_server -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH: running without Redis", file=sys.stderr)
        return subprocess.call(command)
    with redis_server() as url:
        print(f"redis-server started at {url}", file=sys.stderr)
        return subprocess.call(command, env={**os.environ, "REDIS_URL": url})


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
