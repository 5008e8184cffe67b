"""The `helixrt` command: `--version`, `doctor` (is this machine ready?), `bench` (the table of
helixrt against its peers), `serve` (the ops endpoints) and `mcp` (MCP server packages and
tools). Heavy modules are imported inside the sub-command that needs them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from helixrt import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helixrt",
        description="helixrt: worker pools, event bus, tiered cache, HTTP pool and MCP "
        "management for Python services, with the hot paths in Rust.",
    )
    parser.add_argument("--version", action="version", version=f"helixrt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "doctor",
        help="check the Rust core, Redis at REDIS_URL, and the tools MCP servers need",
        description="Checks the Rust core, Redis at REDIS_URL (default redis://127.0.0.1:6379/0), "
        "node/npm and uv/pip; prints one line each, with a hint for what is missing.",
    )

    bench = commands.add_parser(
        "bench",
        help="measure helixrt against its peers, side by side, and print the table",
        description="Runs each benchmark for helixrt and for the best peer in the same process, "
        "and prints the table: figures, the speedup over the peer, the original system's "
        "claim and helixrt's goal.",
    )
    bench.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    bench.add_argument(
        "--only",
        metavar="COMPONENT",
        action="append",
        help="run only this component's rows (repeatable); see the list with --list",
    )
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the speedups as a PNG chart (needs matplotlib: pip install "
        "'helixrt[plot]')",
    )
    bench.add_argument("--list", action="store_true", help="list the components and exit")

    serve = commands.add_parser(
        "serve",
        help="run a Runtime and its ops endpoints (metrics, health, events, cache invalidation)",
        description="Runs a helixrt Runtime (from --config, or the defaults) and serves its ops "
        "endpoints until SIGINT or SIGTERM. Listening beyond loopback needs a bearer token "
        "(--token or HELIXRT_OPS_TOKEN).",
    )
    serve.add_argument("--config", metavar="FILE", help="a helixrt.toml or YAML config file")
    serve.add_argument("--profile", metavar="P", help="a config profile: dev, prod, ...")
    serve.add_argument("--host", help="address to listen on (default: the config's, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: the config's, 7061)")
    serve.add_argument("--token", help="bearer token the endpoints require (or HELIXRT_OPS_TOKEN)")

    from helixrt.mcp.cli import add_parser as add_mcp_parser

    add_mcp_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from helixrt.doctor import run_doctor

        return run_doctor(sys.stdout)
    if args.command == "bench":
        from helixrt.bench import COMPONENTS, run_bench
        from helixrt.codec import MissingDependencyError

        if args.list:
            print("\n".join(COMPONENTS))
            return 0
        try:
            return run_bench(
                quick=args.quick,
                only=args.only,
                json_path=args.json,
                plot_path=args.plot,
                out=sys.stdout,
            )
        except (ValueError, MissingDependencyError) as err:
            print(f"helixrt bench: {err}", file=sys.stderr)
            return 2
    if args.command == "serve":
        from helixrt.ops import run_serve

        return run_serve(
            config=args.config,
            profile=args.profile,
            host=args.host,
            port=args.port,
            token=args.token,
        )
    if args.command == "mcp":
        from helixrt.mcp.cli import run as run_mcp

        return run_mcp(args)
    _parser().print_help()
    return 0
