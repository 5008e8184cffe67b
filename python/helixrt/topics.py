"""The standard event topics: the names the original system used, as constants.

Components publish on these topics (to a `bus=` they are given) and subscribers match them,
exactly or with NATS-style wildcards (`provider.*`, `cache.>`). Plain strings, so a topic from
another process or language compares equal.
"""

from __future__ import annotations

__all__ = [
    "BREAKER_STATE_CHANGED",
    "CACHE_EXPIRED",
    "CACHE_HIT",
    "CACHE_INVALIDATED",
    "CACHE_MISS",
    "DEBATE_COMPLETED",
    "DEBATE_FAILED",
    "DEBATE_ROUND_COMPLETED",
    "DEBATE_ROUND_STARTED",
    "DEBATE_STARTED",
    "MCP_PACKAGE_FAILED",
    "MCP_PACKAGE_INSTALLED",
    "MCP_SERVER_CONNECTED",
    "MCP_SERVER_DISCONNECTED",
    "MCP_SERVER_HEALTH_CHANGED",
    "MCP_TOOL_EXECUTED",
    "MCP_TOOL_FAILED",
    "PROVIDER_HEALTH_CHANGED",
    "PROVIDER_REGISTERED",
    "PROVIDER_SCORE_UPDATED",
    "PROVIDER_UNREGISTERED",
    "REQUEST_COMPLETED",
    "REQUEST_FAILED",
    "REQUEST_RECEIVED",
    "SYSTEM_ERROR",
    "SYSTEM_HEALTH_CHECK",
    "SYSTEM_SHUTDOWN",
    "SYSTEM_STARTUP",
]

PROVIDER_REGISTERED = "provider.registered"
PROVIDER_UNREGISTERED = "provider.unregistered"
PROVIDER_HEALTH_CHANGED = "provider.health.changed"
PROVIDER_SCORE_UPDATED = "provider.score.updated"

MCP_SERVER_CONNECTED = "mcp.server.connected"
MCP_SERVER_DISCONNECTED = "mcp.server.disconnected"
MCP_SERVER_HEALTH_CHANGED = "mcp.server.health.changed"
MCP_TOOL_EXECUTED = "mcp.tool.executed"
MCP_TOOL_FAILED = "mcp.tool.failed"
# helixrt's own: the Preinstaller installed a package, or failed to (payload: name, package,
# ecosystem, version, duration, log_path, and error).
MCP_PACKAGE_INSTALLED = "mcp.package.installed"
MCP_PACKAGE_FAILED = "mcp.package.failed"

DEBATE_STARTED = "debate.started"
DEBATE_ROUND_STARTED = "debate.round.started"
DEBATE_ROUND_COMPLETED = "debate.round.completed"
DEBATE_COMPLETED = "debate.completed"
DEBATE_FAILED = "debate.failed"

CACHE_HIT = "cache.hit"
CACHE_MISS = "cache.miss"
CACHE_INVALIDATED = "cache.invalidated"
CACHE_EXPIRED = "cache.expired"

SYSTEM_STARTUP = "system.startup"
SYSTEM_SHUTDOWN = "system.shutdown"
SYSTEM_HEALTH_CHECK = "system.health.check"
SYSTEM_ERROR = "system.error"

# helixrt's own: a circuit breaker changed state (payload: breaker, old, new).
BREAKER_STATE_CHANGED = "breaker.state.changed"

REQUEST_RECEIVED = "request.received"
REQUEST_COMPLETED = "request.completed"
REQUEST_FAILED = "request.failed"
