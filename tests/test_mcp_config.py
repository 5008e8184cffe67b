"""`helixrt.mcp.load_config`: every config form, every error (naming the server and the field),
${VAR} expansion, and the recognition of pinned npx/uvx launches. No network, no processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helixrt.errors import HelixError
from helixrt.mcp import ConfigError, PackageSpec, RestartPolicy, ServerConfig, Timeouts, load_config
from helixrt.mcp.config import parse_package

TESTS = Path(__file__).parent


def one(entry: dict[str, Any], name: str = "s") -> ServerConfig:
    return load_config({"mcpServers": {name: entry}})[name]


def config_error(entry: Any, name: str = "s") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config({"mcpServers": {name: entry}})
    return info.value


# --- the forms --------------------------------------------------------------------------------


def test_claude_desktop_stdio_entry() -> None:
    server = one(
        {"command": "python", "args": ["-m", "srv", "--x"], "env": {"A": "1"}, "cwd": "/srv"},
        name="tools",
    )
    assert server == ServerConfig(
        "tools", "stdio", command="python", args=("-m", "srv", "--x"), env={"A": "1"}, cwd="/srv"
    )
    assert server.install is None
    assert server.package_args == ()
    assert server.timeouts == Timeouts(connect=30.0, call=60.0, idle=300.0)
    assert server.restart == RestartPolicy(max_restarts=5, window_seconds=300.0)
    assert server.eager is False
    assert server.max_concurrency is None


def test_http_entry_with_type_url_and_headers() -> None:
    server = one({"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"X-Key": "k"}})
    assert server.transport == "http"
    assert server.url == "https://mcp.example.com/mcp"
    assert dict(server.headers) == {"X-Key": "k"}
    assert server.command is None
    assert server.args == ()


@pytest.mark.parametrize(
    "entry",
    [
        {"url": "http://127.0.0.1:3001/mcp"},  # Cursor: inferred from the url
        {"type": "streamable-http", "url": "http://127.0.0.1:3001/mcp"},
        {"transport": "streamable_http", "url": "http://127.0.0.1:3001/mcp"},  # langchain
        {"transportType": "streamableHttp", "url": "http://127.0.0.1:3001/mcp"},
    ],
)
def test_http_spellings(entry: dict[str, Any]) -> None:
    assert one(entry).transport == "http"


def test_vs_code_servers_form() -> None:
    servers = load_config(
        {
            "inputs": [{"type": "promptString", "id": "token", "password": True}],
            "servers": {
                "memory": {"type": "stdio", "command": "npx", "args": ["-y", "pkg@1.0.0"]},
                "remote": {"type": "http", "url": "https://x.example/mcp"},
            },
        }
    )
    assert list(servers) == ["memory", "remote"]
    assert servers["memory"].transport == "stdio"
    assert servers["memory"].install == PackageSpec("npm", "pkg", "1.0.0", "pkg@1.0.0")
    assert servers["remote"].transport == "http"


def test_a_file_path_and_json_text(tmp_path: Path) -> None:
    data = {"mcpServers": {"a": {"command": "x"}}, "otherTopLevelKey": {"ignored": True}}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(data))
    assert load_config(path) == load_config(str(path)) == load_config(json.dumps(data))
    assert load_config(path)["a"].command == "x"


def test_server_order_is_kept_and_disabled_entries_are_left_out() -> None:
    servers = load_config(
        {
            "mcpServers": {
                "b": {"command": "b"},
                "off": {"command": "x", "disabled": True},
                "off2": {"command": "x", "enabled": False},
                "a": {"command": "a", "disabled": False},
            }
        }
    )
    assert list(servers) == ["b", "a"]


def test_helixrt_settings() -> None:
    server = one(
        {
            "command": "srv",
            "timeouts": {"connect": 5, "call": 2.5, "idle": 60},
            "eager": True,
            "maxConcurrency": 4,
            "restart": {"maxRestarts": 2, "windowSeconds": 30},
            "install": {"pypi": "my-server==1.2.3"},
        }
    )
    assert server.timeouts == Timeouts(connect=5.0, call=2.5, idle=60.0)
    assert server.eager is True
    assert server.max_concurrency == 4
    assert server.restart == RestartPolicy(max_restarts=2, window_seconds=30.0)
    assert server.install == PackageSpec("pypi", "my-server", "1.2.3", "my-server==1.2.3")
    # The command is the installed package's own program: it gets all the args.
    assert server.package_args == ()


def test_partial_sections_keep_the_other_defaults() -> None:
    server = one({"command": "srv", "timeouts": {"call": 5}, "restart": {"maxRestarts": 0}})
    assert server.timeouts == Timeouts(connect=30.0, call=5.0, idle=300.0)
    assert server.restart == RestartPolicy(max_restarts=0, window_seconds=300.0)


def test_install_field_with_options() -> None:
    npm = one(
        {
            "command": "mcp-server-x",
            "args": ["--a"],
            "install": {"npm": "@s/x@2.0.0", "allowScripts": True},
        }
    )
    assert npm.install is not None
    assert npm.install.allow_scripts is True
    assert npm.install.key == "npm:@s/x@2.0.0"
    assert npm.package_args == ("--a",)
    pypi = one({"command": "x", "install": {"pypi": "x==1.0", "with": ["mcp<2"]}})
    assert pypi.install is not None
    assert pypi.install.requires == ("mcp<2",)


def test_explicit_install_wins_over_a_recognised_npx_launch() -> None:
    server = one(
        {
            "command": "npx",
            "args": ["-y", "@s/x@1.0.0", "dir"],
            "install": {"npm": "@s/x@1.1.0"},
        }
    )
    assert server.install is not None
    assert server.install.version == "1.1.0"
    assert server.package_args == ("dir",)


def test_server_config_built_by_hand_is_frozen_and_hashable() -> None:
    server = ServerConfig("x", "stdio", command="c", args=["a"], env={"K": "V"})  # type: ignore[arg-type]
    assert server.args == ("a",)
    assert server.env == {"K": "V"}
    with pytest.raises(TypeError):
        server.env["K"] = "W"  # type: ignore[index]
    with pytest.raises(AttributeError):
        server.command = "d"  # type: ignore[misc]
    assert hash(server) == hash(
        ServerConfig("x", "stdio", command="c", args=("a",), env={"K": "V"})
    )
    with pytest.raises(ConfigError, match="needs a command"):
        ServerConfig("x", "stdio")
    with pytest.raises(ConfigError, match="needs a url"):
        ServerConfig("x", "http")


def test_the_test_suites_servers_are_all_installable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIXRT_MCP_TEST_DIR", "/data/t")
    servers = load_config(TESTS / "mcp_servers.json")
    assert set(servers) == {"memory", "filesystem", "everything", "time"}
    keys = {name: s.install.key for name, s in servers.items() if s.install is not None}
    assert keys == {
        "memory": "npm:@modelcontextprotocol/server-memory@2026.8.31",
        "filesystem": "npm:@modelcontextprotocol/server-filesystem@2026.8.31",
        "everything": "npm:@modelcontextprotocol/server-everything@2026.8.31",
        "time": "pypi:mcp-server-time==2026.10.19",
    }
    assert servers["filesystem"].package_args == ("/data/t",)
    assert servers["memory"].env["MEMORY_FILE_PATH"] == "/data/t/memory.jsonl"
    assert servers["time"].package_args == ("--local-timezone", "UTC")


# --- npx / uvx recognition --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "key", "package_args"),
    [
        ("npx", ["-y", "@modelcontextprotocol/server-memory@2026.8.31"],
         "npm:@modelcontextprotocol/server-memory@2026.8.31", ()),
        ("npx", ["--yes", "@s/fs@1.2.3", "/a", "/b"], "npm:@s/fs@1.2.3", ("/a", "/b")),
        ("npx", ["-y", "plain-pkg@0.1.0-beta.2", "--flag"], "npm:plain-pkg@0.1.0-beta.2",
         ("--flag",)),
        ("/usr/local/bin/npx", ["-y", "p@1.0.0"], "npm:p@1.0.0", ()),
        ("npx.cmd", ["-y", "p@1.0.0"], "npm:p@1.0.0", ()),
        ("npx", ["p@1.0.0", "x"], "npm:p@1.0.0", ("x",)),
        ("uvx", ["mcp-server-time==2026.10.19", "--local-timezone", "UTC"],
         "pypi:mcp-server-time==2026.10.19", ("--local-timezone", "UTC")),
        ("uvx", ["mcp-server-git@2026.10.19"], "pypi:mcp-server-git==2026.10.19", ()),
        ("uvx", ["--quiet", "mcp-server-fetch==2026.10.24"], "pypi:mcp-server-fetch==2026.10.24",
         ()),
    ],
)  # fmt: skip
def test_pinned_npx_and_uvx_launches_are_installable(
    command: str, args: list[str], key: str, package_args: tuple[str, ...]
) -> None:
    server = one({"command": command, "args": args})
    assert server.install is not None
    assert server.install.key == key
    assert server.package_args == package_args
    # The entry itself is kept as written: it still runs without the Preinstaller.
    assert server.command == command
    assert server.args == tuple(args)


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("npx", ["-y", "@modelcontextprotocol/server-memory"]),  # unpinned
        ("npx", ["-y", "pkg@latest"]),
        ("npx", ["-y", "pkg@^1.2.3"]),
        ("npx", ["-y", "pkg@1.2"]),
        ("npx", ["-y", "--package=pkg@1.0.0", "bin"]),  # a shape we do not rewrite
        ("npx", ["-y"]),
        ("uvx", ["mcp-server-time"]),
        ("uvx", ["mcp-server-time>=2026.1.1"]),
        ("uvx", ["--from", "x==1.0", "x-cli"]),
        ("node", ["server.js"]),
        ("npm", ["exec", "pkg@1.0.0"]),
    ],
)
def test_other_launches_are_not_installable(command: str, args: list[str]) -> None:
    server = one({"command": command, "args": args})
    assert server.install is None
    assert server.package_args == ()


def test_parse_package() -> None:
    assert parse_package("npm:@s/p@1.2.3") == PackageSpec("npm", "@s/p", "1.2.3", "@s/p@1.2.3")
    assert parse_package("pypi:p==2026.1.2") == PackageSpec("pypi", "p", "2026.1.2", "p==2026.1.2")
    for bad in ("@s/p@1.2.3", "npm:@s/p", "pypi:p>=1", "pip:p==1", "npm:p@~1.0.0"):
        with pytest.raises(ConfigError):
            parse_package(bad)


# --- ${VAR} expansion -------------------------------------------------------------------------


def test_env_expansion_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HX_DIR", "/data")
    monkeypatch.setenv("HX_TOKEN", "t0k")
    monkeypatch.delenv("HX_UNSET", raising=False)
    monkeypatch.setenv("HX_EMPTY", "")
    stdio = one(
        {
            "command": "${HX_DIR}/bin/srv",
            "args": ["--root=${HX_DIR}", "${HX_UNSET:-fallback}", "$HX_DIR", "${env:HX_TOKEN}"],
            "env": {"TOKEN": "${HX_TOKEN}", "E": "${HX_EMPTY:-d}", "LIT": "a${HX_UNSET:-}b"},
            "cwd": "${HX_DIR}/work",
        }
    )
    assert stdio.command == "/data/bin/srv"
    assert stdio.args == ("--root=/data", "fallback", "$HX_DIR", "t0k")
    assert dict(stdio.env) == {"TOKEN": "t0k", "E": "d", "LIT": "ab"}
    assert stdio.cwd == "/data/work"
    http = one(
        {
            "url": "https://${HX_HOST:-h.example}/mcp",
            "headers": {"Authorization": "Bearer ${HX_TOKEN}"},
        }
    )
    assert http.url == "https://h.example/mcp"
    assert http.headers["Authorization"] == "Bearer t0k"


def test_expansion_makes_an_npx_launch_installable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HX_VER", "1.4.0")
    server = one({"command": "npx", "args": ["-y", "pkg@${HX_VER}"]})
    assert server.install is not None
    assert server.install.version == "1.4.0"


def test_an_unset_variable_without_default_names_server_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HX_NOPE", raising=False)
    err = config_error({"command": "x", "args": ["a", "${HX_NOPE}"]}, name="gh")
    assert (err.server, err.field) == ("gh", "args[1]")
    assert "HX_NOPE" in str(err)
    assert "server 'gh'" in str(err)
    err = config_error({"command": "x", "env": {"TOKEN": "${HX_NOPE}"}})
    assert err.field == "env.TOKEN"
    err = config_error({"url": "https://x/mcp", "headers": {"A": "${HX_NOPE}"}})
    assert err.field == "headers.A"


def test_env_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# comment\nA=1\nexport B='two'\n")
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "servers": {
                    "s": {"type": "stdio", "command": "x", "envFile": ".env", "env": {"B": "over"}}
                }
            }
        )
    )
    assert dict(load_config(path)["s"].env) == {"A": "1", "B": "over"}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"command": "x", "bogus": 1}, "bogus", "unknown field"),
        ({"command": "x", "args": "a b"}, "args", "list of strings"),
        ({"command": "x", "args": ["a", 1]}, "args", "list of strings"),
        ({"command": 5}, "command", "non-empty string"),
        ({"command": ""}, "command", "non-empty string"),
        ({"command": "x", "env": {"A": 1}}, "env", "string values"),
        ({"command": "x", "env": ["A=1"]}, "env", "string values"),
        ({"command": "x", "cwd": 3}, "cwd", "non-empty string"),
        ({}, "command", "either a 'command'"),
        ({"command": "x", "url": "http://h/mcp"}, "url", "either a 'command'"),
        ({"type": "stdio", "url": "http://h/mcp"}, "url", "does not apply to a stdio server"),
        ({"type": "stdio"}, "command", "needs a command"),
        ({"type": "http", "command": "x"}, "command", "does not apply to a http server"),
        ({"type": "http"}, "url", "http:// or https://"),
        ({"url": "ftp://h/x"}, "url", "http:// or https://"),
        ({"type": "sse", "url": "http://h/sse"}, "type", "legacy SSE"),
        ({"type": "websocket", "url": "ws://h"}, "type", "'stdio' or 'http'"),
        ({"type": "stdio", "transport": "stdio", "command": "x"}, "transport", "not several"),
        ({"url": "http://h/mcp", "headers": {"A": 2}}, "headers", "string values"),
        ({"command": "x", "timeouts": {"call": -1}}, "timeouts.call", "positive number"),
        ({"command": "x", "timeouts": {"call": "5"}}, "timeouts.call", "positive number"),
        ({"command": "x", "timeouts": {"connect": True}}, "timeouts.connect", "positive number"),
        ({"command": "x", "timeouts": {"read": 5}}, "timeouts.read", "unknown field"),
        ({"command": "x", "timeouts": 30}, "timeouts", "must be an object"),
        ({"command": "x", "eager": "yes"}, "eager", "true or false"),
        ({"command": "x", "disabled": 1}, "disabled", "true or false"),
        ({"command": "x", "maxConcurrency": 0}, "maxConcurrency", "integer >= 1"),
        ({"command": "x", "maxConcurrency": 2.5}, "maxConcurrency", "integer >= 1"),
        ({"command": "x", "restart": {"maxRestarts": -1}}, "restart.maxRestarts", "integer"),
        ({"command": "x", "restart": {"windowSeconds": 0}}, "restart.windowSeconds", "positive"),
        ({"command": "x", "restart": {"backoff": 1}}, "restart.backoff", "unknown field"),
        ({"command": "x", "install": {"npm": "p"}}, "install.npm", "exact version"),
        ({"command": "x", "install": {"npm": "p@^1.0.0"}}, "install.npm", "exact version"),
        ({"command": "x", "install": {"pypi": "p>=1"}}, "install.pypi", "exact version"),
        ({"command": "x", "install": {"pypi": "p==1", "npm": "p@1.0.0"}}, "install", "exactly one"),
        ({"command": "x", "install": {"cargo": "p"}}, "install.cargo", "unknown field"),
        ({"command": "x", "install": {}}, "install", "must name a package"),
        ({"command": "x", "install": "p@1.0.0"}, "install", "must be an object"),
        ({"command": "x", "install": {"npm": "p@1.0.0", "with": ["a"]}}, "install.with", "PyPI"),
        ({"command": "x", "install": {"npm": "p@1.0.0", "allowScripts": 1}},
         "install.allowScripts", "true or false"),
        ({"url": "http://h/mcp", "install": {"npm": "p@1.0.0"}}, "install", "stdio servers only"),
    ],
)  # fmt: skip
def test_malformed_fields_name_the_server_and_the_field(
    entry: dict[str, Any], field: str, message: str
) -> None:
    err = config_error(entry, name="broken")
    assert err.server == "broken"
    assert err.field == field
    assert message in str(err)
    assert str(err).startswith(f"server 'broken', field {field!r}: ")
    assert isinstance(err, HelixError)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "expected one top-level 'mcpServers'"),
        ({"mcpServers": {}, "servers": {}}, "not both"),
        ({"mcpServers": []}, "must map server names"),
        ([], "is a JSON object"),
    ],
)
def test_malformed_files(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(data)


def test_bad_entries_and_names() -> None:
    err = config_error("npx -y x", name="s1")
    assert err.server == "s1"
    assert "is a JSON object" in str(err)
    err = config_error({"command": "x"}, name="has space")
    assert err.server == "has space"
    assert "server name" in str(err)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read MCP configuration"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"a": {"command": "x",}}}')
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON: .*line 1"):
        load_config(bad)


def test_client_ui_fields_are_accepted_and_ignored() -> None:
    server = one({"command": "x", "description": "d", "autoApprove": ["t"], "alwaysAllow": []})
    assert server.command == "x"


def test_importing_helixrt_mcp_does_not_import_the_sdk() -> None:
    code = (
        "import sys, helixrt.mcp as m; m.load_config; m.Preinstaller; "
        "print(sorted(k for k in sys.modules if k == 'mcp' or k.startswith(('mcp.', 'anyio'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
