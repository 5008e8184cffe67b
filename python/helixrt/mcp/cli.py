"""`helixrt mcp`: install MCP server packages ahead of time (`install`), show what is installed
(`status`), and list a server's tools (`tools`) or call one (`call`) through the connection pool.

Progress and errors go to stderr, results to stdout. The pool (and with it the `mcp` SDK) is
imported only by `tools` and `call`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from helixrt.errors import HelixError

if TYPE_CHECKING:
    from helixrt.mcp.config import ServerConfig
    from helixrt.mcp.preinstall import PackageStatus, Preinstaller

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Adds `mcp` and its sub-commands to `helixrt`'s sub-parsers."""
    mcp = commands.add_parser(
        "mcp",
        help="install MCP server packages ahead of time, and list or call a server's tools",
        description="MCP servers from a configuration file in the standard `mcpServers` form "
        "(or VS Code's `servers`). Without --config, install and status use the default set: "
        "filesystem, github, memory, fetch, puppeteer, sqlite.",
    )
    sub = mcp.add_subparsers(dest="mcp_command", metavar="COMMAND", required=True)

    def common(parser: argparse.ArgumentParser, config_required: bool) -> None:
        parser.add_argument(
            "--config", metavar="FILE", required=config_required, help="the MCP configuration"
        )
        parser.add_argument(
            "--root",
            metavar="DIR",
            help="where packages are installed (default $HELIXRT_MCP_ROOT, else "
            "$XDG_CACHE_HOME/helixrt/mcp)",
        )

    install = sub.add_parser(
        "install",
        help="install the servers' packages (npm, PyPI) now",
        description="Installs every package the configuration's servers launch (a pinned "
        "`npx -y PKG@VERSION`, `uvx PKG==VERSION`, or an `install` field), printing a line per "
        "package as it goes; exits 1 if any failed.",
    )
    common(install, False)
    install.add_argument(
        "--only", metavar="NAME", action="append", help="only this server (repeatable)"
    )
    install.add_argument(
        "--offline", action="store_true", help="install from the npm/uv caches only"
    )
    install.add_argument("--concurrency", type=int, default=2, help="installs at once (2)")

    status = sub.add_parser("status", help="what is installed, and where")
    common(status, False)

    tools = sub.add_parser("tools", help="list a server's tools")
    common(tools, True)
    tools.add_argument("server", metavar="SERVER")

    call = sub.add_parser("call", help="call a tool and print its result")
    common(call, True)
    call.add_argument("server", metavar="SERVER")
    call.add_argument("tool", metavar="TOOL")
    call.add_argument(
        "arguments", metavar="JSON", nargs="?", default="{}", help="the arguments, a JSON object"
    )


def run(args: argparse.Namespace) -> int:
    """Runs the `mcp` sub-command `args` names; returns the exit status."""
    import asyncio

    command = args.mcp_command
    try:
        if command == "install":
            return asyncio.run(_install(args, sys.stderr))
        if command == "status":
            return _status(args, sys.stdout)
        if command == "tools":
            return asyncio.run(_tools(args, sys.stdout))
        return asyncio.run(_call(args, sys.stdout))
    except (HelixError, OSError) as err:
        print(f"helixrt mcp {command}: {err}", file=sys.stderr)
        return 1


def _servers(args: argparse.Namespace) -> dict[str, ServerConfig] | None:
    if args.config is None:
        return None
    from helixrt.mcp.config import load_config

    return load_config(args.config)


def _preinstaller(args: argparse.Namespace, **options: Any) -> Preinstaller:
    from helixrt.mcp.preinstall import Preinstaller

    servers = _servers(args)
    return Preinstaller(args.root, servers, **options)


def _line(status: PackageStatus, seconds: float | None) -> str:
    took = f"{seconds:7.1f} s" if seconds is not None else " " * 9
    return f"{status.name:<16} {status.state:<10} {took}  {status.package}"


async def _install(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from helixrt.mcp.preinstall import DEFAULT_PACKAGES

    servers = _servers(args)
    items: Any = DEFAULT_PACKAGES if servers is None else servers
    if args.only:
        unknown = sorted(set(args.only) - set(items))
        if unknown:
            print(
                f"helixrt mcp install: no server named {', '.join(unknown)} "
                f"(known: {', '.join(items)})",
                file=out,
            )
            return 2
        items = {name: items[name] for name in args.only}
    from helixrt.mcp.preinstall import Preinstaller

    pre = Preinstaller(args.root, items, offline=args.offline, concurrency=max(1, args.concurrency))
    if not pre.status():
        print("helixrt mcp install: no server here launches an installable package", file=out)
        return 0
    started = time.monotonic()
    shown: dict[str, str] = {}
    try:
        await pre.start()
        while True:
            statuses = pre.status()
            for name, status in statuses.items():
                if shown.get(name) != status.state:
                    shown[name] = status.state
                    final = status.state in ("installed", "failed")
                    seconds = status.duration if final else time.monotonic() - started
                    print(_line(status, seconds), file=out, flush=True)
            if all(s.state in ("installed", "failed") for s in statuses.values()):
                break
            await asyncio.sleep(0.1)
    finally:
        await pre.aclose()
    failed = [s for s in pre.status().values() if s.state == "failed"]
    for status in failed:
        print(f"{status.name}: {status.error}", file=out)
    stats = pre.stats()
    print(
        f"{stats.installed} installed, {stats.failed} failed, {stats.installs} installed now "
        f"in {time.monotonic() - started:.1f} s; root {pre.root}",
        file=out,
    )
    return 1 if failed else 0


def _status(args: argparse.Namespace, out: TextIO) -> int:
    pre = _preinstaller(args)
    print(f"root {pre.root}", file=out)
    for status in pre.status().values():
        where = status.path if status.state == "installed" else (status.error or "")
        print(f"{_line(status, status.duration)}  {where}".rstrip(), file=out)
    return 0


async def _tools(args: argparse.Namespace, out: TextIO) -> int:
    from helixrt.mcp.pool import MCPConnectionPool

    servers = _servers(args)
    assert servers is not None  # --config is required
    pre = _preinstaller(args)
    async with pre, MCPConnectionPool(servers, preinstaller=pre) as pool:
        tools = await pool.list_tools(args.server)
    for tool in tools:
        description = (tool.description or "").strip().splitlines()
        print(f"{tool.name:<32} {description[0] if description else ''}".rstrip(), file=out)
    return 0


async def _call(args: argparse.Namespace, out: TextIO) -> int:
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as err:
        print(f"helixrt mcp call: the arguments are not JSON: {err}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("helixrt mcp call: the arguments must be a JSON object", file=sys.stderr)
        return 2
    from helixrt.mcp.pool import MCPConnectionPool

    servers = _servers(args)
    assert servers is not None  # --config is required
    pre = _preinstaller(args)
    async with pre, MCPConnectionPool(servers, preinstaller=pre) as pool:
        result = await pool.call_tool(args.server, args.tool, arguments)
    texts = [_content_text(item) for item in result.content]
    if not texts and result.structured_content is not None:
        texts = [json.dumps(result.structured_content, indent=2)]
    for text in texts:
        print(text, file=out)
    return 1 if result.is_error else 0


def _content_text(item: Any) -> str:
    text = getattr(item, "text", None)
    if isinstance(text, str):
        return text
    kind = getattr(item, "type", type(item).__name__)
    detail = getattr(item, "mime_type", None) or getattr(item, "uri", None) or ""
    return f"[{kind}{' ' + str(detail) if detail else ''}]"
