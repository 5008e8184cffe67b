"""The package itself: version, exceptions, lazy imports, the Rust core's build info."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import helixrt
from helixrt import _core

HEAVY = ["aiohttp", "redis", "mcp", "prometheus_client", "lz4", "msgpack", "asyncio"]


def test_version_comes_from_the_rust_core() -> None:
    assert helixrt.__version__ == _core.__version__
    assert helixrt.__version__.count(".") == 2


def test_build_info_names_version_profile_rustc_and_pyo3() -> None:
    info = _core.build_info()
    assert set(info) == {"version", "profile", "rustc", "pyo3"}
    assert info["version"] == helixrt.__version__
    assert info["profile"] in ("release", "debug")
    assert info["rustc"].startswith("rustc ")
    major, minor, *_ = (int(part) for part in info["pyo3"].split("."))
    assert (major, minor) >= (0, 29)


def test_helix_error_is_the_root_exception() -> None:
    assert issubclass(helixrt.HelixError, Exception)
    assert helixrt.errors.HelixError is helixrt.HelixError


def test_unknown_attribute_names_itself() -> None:
    with pytest.raises(AttributeError, match="'helixrt' has no attribute 'NoSuchThing'"):
        _ = helixrt.NoSuchThing  # type: ignore[attr-defined]


def test_dir_lists_the_lazy_names() -> None:
    assert {"HelixError", "errors", "__version__"} <= set(dir(helixrt))


def test_import_loads_nothing_heavy() -> None:
    code = (
        f"import sys, json, helixrt; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_import_time_is_small() -> None:
    """`python -X importtime`: helixrt's own modules; generous bound, catches a heavy import."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import helixrt"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    own_us = 0
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line[12:].split("|"))
        if name.strip().startswith("helixrt"):
            own_us += int(self_us)
    assert 0 < own_us < 100_000
