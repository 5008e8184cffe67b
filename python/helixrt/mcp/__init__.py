"""MCP management: `load_config` (the `mcpServers` JSON), the `Preinstaller` (server packages
installed in the background) and the `MCPConnectionPool` (servers connected on first use).

`import helixrt.mcp` imports none of them: each is loaded on first use (PEP 562), so the `mcp`
SDK is imported only when the pool is.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from helixrt.mcp.config import (
        ConfigError,
        PackageSpec,
        RestartPolicy,
        ServerConfig,
        Timeouts,
        load_config,
    )
    from helixrt.mcp.pool import (
        MCPCallError,
        MCPConnectionPool,
        MCPServerError,
        MCPServerStats,
        ServerDisconnectedError,
        ServerStartError,
        ServerState,
        ServerUnavailableError,
        ToolTimeoutError,
        UnknownServerError,
    )
    from helixrt.mcp.preinstall import InstallError, PackageStatus, Preinstaller

__all__ = [
    "ConfigError",
    "InstallError",
    "MCPCallError",
    "MCPConnectionPool",
    "MCPServerError",
    "MCPServerStats",
    "PackageSpec",
    "PackageStatus",
    "Preinstaller",
    "RestartPolicy",
    "ServerConfig",
    "ServerDisconnectedError",
    "ServerStartError",
    "ServerState",
    "ServerUnavailableError",
    "Timeouts",
    "ToolTimeoutError",
    "UnknownServerError",
    "load_config",
]

_LAZY: dict[str, str] = {
    "ConfigError": "helixrt.mcp.config",
    "PackageSpec": "helixrt.mcp.config",
    "RestartPolicy": "helixrt.mcp.config",
    "ServerConfig": "helixrt.mcp.config",
    "Timeouts": "helixrt.mcp.config",
    "load_config": "helixrt.mcp.config",
    "InstallError": "helixrt.mcp.preinstall",
    "PackageStatus": "helixrt.mcp.preinstall",
    "Preinstaller": "helixrt.mcp.preinstall",
    "MCPConnectionPool": "helixrt.mcp.pool",
    "MCPCallError": "helixrt.mcp.pool",
    "MCPServerError": "helixrt.mcp.pool",
    "MCPServerStats": "helixrt.mcp.pool",
    "ServerDisconnectedError": "helixrt.mcp.pool",
    "ServerStartError": "helixrt.mcp.pool",
    "ServerState": "helixrt.mcp.pool",
    "ServerUnavailableError": "helixrt.mcp.pool",
    "ToolTimeoutError": "helixrt.mcp.pool",
    "UnknownServerError": "helixrt.mcp.pool",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'helixrt.mcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
