"""A small MCP server speaking raw JSON-RPC over stdio, for the pool's failure-path tests.

It starts in a few tens of milliseconds (no SDK import), and its flags make it misbehave on
purpose:

    --crash-after N     answer N tool calls, then exit (status 1) on the next one, unanswered
    --no-initialize     read requests but never answer `initialize`
    --garbage only      write lines that are not JSON-RPC instead of any answer
    --garbage mixed     write one such line before every answer (the answers stay valid)
    --start-delay S     sleep S seconds before reading stdin
    --exit-now CODE     write a line to stderr and exit at once with CODE

Tools: echo(text), sleep(seconds), pid(), env(name), spawn_child() (starts a `sleep 60` child in
the server's process group, for the no-survivor tests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

TOOLS = [
    {
        "name": "echo",
        "description": "Echo text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
    {
        "name": "sleep",
        "description": "Sleep, then answer.",
        "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}},
    },
    {
        "name": "pid",
        "description": "The server's process id.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "env",
        "description": "An environment variable's value ('' when unset).",
        "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
    {
        "name": "spawn_child",
        "description": "Start a long-running child process.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]

_out_lock = threading.Lock()
_calls = 0
_calls_lock = threading.Lock()


def _write(message: dict[str, object], garbage: str | None) -> None:
    with _out_lock:
        if garbage is not None:
            sys.stdout.write("this is not json-rpc\n")
        if garbage != "only":
            sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _text(text: str) -> dict[str, object]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _call(name: str, arguments: dict[str, object]) -> dict[str, object]:
    if name == "echo":
        return _text(str(arguments.get("text", "")))
    if name == "sleep":
        time.sleep(float(arguments.get("seconds", 0.0)))  # type: ignore[arg-type]
        return _text("slept")
    if name == "pid":
        return _text(str(os.getpid()))
    if name == "env":
        return _text(os.environ.get(str(arguments.get("name", "")), ""))
    if name == "spawn_child":
        child = subprocess.Popen(["sleep", "60"])
        return _text(str(child.pid))
    return {"content": [{"type": "text", "text": f"unknown tool {name}"}], "isError": True}


def _handle_call(request: dict[str, object], options: argparse.Namespace) -> None:
    global _calls
    params = request.get("params") or {}
    assert isinstance(params, dict)
    with _calls_lock:
        _calls += 1
        crash = options.crash_after is not None and _calls > options.crash_after
    if crash:
        sys.stderr.write("fixture: crashing as asked\n")
        sys.stderr.flush()
        os._exit(1)
    result = _call(str(params.get("name")), dict(params.get("arguments") or {}))
    _write({"jsonrpc": "2.0", "id": request["id"], "result": result}, options.garbage)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--no-initialize", action="store_true")
    parser.add_argument("--garbage", choices=["only", "mixed"], default=None)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--exit-now", type=int, default=None)
    options = parser.parse_args()
    if options.exit_now is not None:
        sys.stderr.write("fixture: refusing to start (exit-now)\n")
        sys.exit(options.exit_now)
    if options.start_delay:
        time.sleep(options.start_delay)
    sys.stderr.write(f"fixture: started, pid {os.getpid()}\n")
    sys.stderr.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        method = request.get("method")
        if "id" not in request:
            continue  # a notification (initialized, cancelled): nothing to answer
        if method == "initialize":
            if options.no_initialize:
                continue
            version = request["params"]["protocolVersion"]
            result: dict[str, object] = {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "helixrt-fixture", "version": "1.0.0"},
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call":
            threading.Thread(target=_handle_call, args=(request, options), daemon=True).start()
            continue
        else:
            error = {"code": -32601, "message": f"method not found: {method}"}
            _write({"jsonrpc": "2.0", "id": request["id"], "error": error}, options.garbage)
            continue
        _write({"jsonrpc": "2.0", "id": request["id"], "result": result}, options.garbage)


if __name__ == "__main__":
    main()
