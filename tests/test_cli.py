"""The `helixrt` command: --version, doctor and bench, run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import helixrt
from helixrt._redis_server import free_port
from helixrt.bench import COMPONENTS
from helixrt.bench.runner import Row, format_table
from helixrt.doctor import check_redis


def helixrt_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helixrt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    result = helixrt_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"helixrt {helixrt.__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("helixrt")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert helixrt.__version__ in result.stdout


def test_doctor_reports_a_live_redis(redis_url: str) -> None:
    result = helixrt_cmd("doctor", env={"REDIS_URL": redis_url})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["ok", "rust", "core"] for line in lines)
    redis_line = next(line for line in lines if line.split()[1:2] == ["redis"])
    assert redis_line.split()[0] == "ok"
    assert redis_url in redis_line
    assert "answered PING" in redis_line


def test_doctor_explains_a_missing_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = helixrt_cmd("doctor", env={"REDIS_URL": url})
    assert result.returncode == 0  # Redis is optional: reported, not fatal
    assert f"MISS  redis      nothing answers at {url}" in result.stdout
    assert "hint: start redis-server" in result.stdout


def test_doctor_never_prints_the_redis_password() -> None:
    check = check_redis(f"redis://user:s3cret@127.0.0.1:{free_port()}/0", timeout=0.5)
    assert not check.ok
    assert "s3cret" not in check.detail
    assert "user:***@127.0.0.1" in check.detail


def test_doctor_rejects_an_unknown_scheme() -> None:
    check = check_redis("http://127.0.0.1:1/0", timeout=0.5)
    assert not check.ok
    assert "expected redis://, rediss:// or unix://" in check.detail


def test_doctor_authenticates(tmp_path: Path) -> None:
    from helixrt._redis_server import redis_server

    with redis_server() as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(
            ["redis-cli", "-p", port, "CONFIG", "SET", "requirepass", "pw"],
            check=True,
            capture_output=True,
        )
        assert not check_redis(url).ok  # NOAUTH
        assert check_redis(f"redis://:pw@127.0.0.1:{port}/0").ok


def test_bench_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = helixrt_cmd("bench", "--quick", "--only", "core", "--json", str(report))
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == [
        "component",
        "operation",
        "helixrt",
        "best",
        "peer",
        "peer",
        "speedup",
        "original",
        "goal",
    ]
    assert "call overhead" in result.stdout
    assert "[1/1] core" in result.stderr  # progress goes to stderr
    data = json.loads(report.read_text())
    assert data["environment"]["helixrt"]["version"] == helixrt.__version__
    (row,) = data["rows"]
    assert row["component"] == "core"
    assert row["helixrt"] > 0
    assert row["peer"] > 0
    assert row["speedup"] == pytest.approx(row["peer"] / row["helixrt"])


def test_bench_rejects_an_unknown_component() -> None:
    result = helixrt_cmd("bench", "--only", "nosuch")
    assert result.returncode == 2
    choices = ", ".join(COMPONENTS)
    assert f"unknown component 'nosuch'; choose from {choices}" in result.stderr


def test_table_says_why_a_figure_is_missing() -> None:
    rows = [
        Row("cache", "get (hit)", "ns", 50.0, "cachebox", None, note="cachebox not installed"),
        Row("pool", "tasks/s", "ops/s", 2_000_000.0, "ThreadPoolExecutor", 50_000.0, goal=10),
    ]
    table = format_table(rows)
    assert "cachebox not installed" in table
    assert "40.00x ok" in table
    assert rows[0].speedup is None
    assert rows[0].met is None
    assert rows[1].met is True


def test_speedup_reads_lower_time_as_better() -> None:
    row = Row("x", "op", "ns", helixrt=50.0, peer_name="p", peer=100.0, goal=1.5)
    assert row.speedup == 2.0
    assert row.met is True
    assert Row("x", "op", "ns", helixrt=100.0, peer=50.0, goal=1.0).met is False


def test_bench_lists_its_components() -> None:
    result = helixrt_cmd("bench", "--list")
    assert result.returncode == 0
    assert result.stdout.split() == list(COMPONENTS)
    assert {"core", "cache", "pool", "async_pool", "events", "breaker", "lazy", "http"} <= set(
        COMPONENTS
    )


def png_size(path: Path) -> tuple[int, int]:
    """The width and height of a PNG file, checked: signature, then the IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[8:16] == b"\x00\x00\x00\x0dIHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_bench_plot_draws_a_png(tmp_path: Path) -> None:
    chart = tmp_path / "b.png"
    result = helixrt_cmd("bench", "--only", "core", "--quick", "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    assert "call overhead" in result.stdout  # the table is printed as without --plot
    assert f"wrote {chart} (1 of 1 rows have a peer figure)" in result.stderr
    width, height = png_size(chart)
    assert width >= 400
    assert height >= 200
    assert chart.stat().st_size > 5000  # drawn, not an empty canvas


def test_bench_plot_and_json_together(tmp_path: Path) -> None:
    chart, report = tmp_path / "b.png", tmp_path / "b.json"
    args = ("bench", "--only", "core", "--quick", "--json", str(report), "--plot", str(chart))
    result = helixrt_cmd(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["rows"][0]["component"] == "core"
    assert png_size(chart)[0] > 0


def test_plot_leaves_out_rows_without_a_peer_figure(tmp_path: Path) -> None:
    from helixrt.bench.plot import plot_rows

    rows = [
        Row("cache", "get (hit)", "ns", 50.0, "cachebox", None, note="cachebox not installed"),
        Row("cache", "set", "ns", 100.0, "cachebox", 150.0, goal=1.0),
        Row("pool", "tasks/s", "ops/s", 2_000_000.0, "ThreadPoolExecutor", 50_000.0, goal=10),
        Row("pool", "submit", "ns", 600.0, "ThreadPoolExecutor", 300.0),
    ]
    drawn = plot_rows(rows, str(tmp_path / "rows.png"))
    assert [row.operation for row in drawn] == ["set", "tasks/s", "submit"]
    _, height = png_size(tmp_path / "rows.png")
    none = plot_rows(rows[:1], str(tmp_path / "none.png"))
    assert none == []
    assert png_size(tmp_path / "none.png")[1] < height  # fewer bars, a shorter chart


# Makes `import matplotlib` fail as it would where it is not installed, then runs the command.
BLOCK_MATPLOTLIB = """
import sys
from importlib.abc import MetaPathFinder

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from helixrt.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_bench_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    chart = tmp_path / "b.png"
    plot = ("bench", "--only", "core", "--quick", "--plot", str(chart))
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_MATPLOTLIB, *plot],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "helixrt bench: --plot needs matplotlib" in result.stderr
    assert "pip install 'helixrt[plot]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "[1/1] core" not in result.stderr  # refused before measuring anything
    assert result.stdout == ""
    assert not chart.exists()
    # Without --plot the same interpreter runs the bench: only the plot needs matplotlib.
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_MATPLOTLIB, "bench", "--only", "core", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "call overhead" in result.stdout
