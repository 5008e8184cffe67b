"""A throwaway `redis-server` on a free loopback port, for tests, demos and benchmarks.

Not a way to run Redis in production: no persistence, no password, gone when the context exits.
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

__all__ = ["free_port", "redis_server"]


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
