"""`helixrt bench --plot FILE.png`: the bench table as a chart of speedups.

One horizontal bar per row that has a peer figure: how many times better helixrt did than that
peer (above 1.0, helixrt wins), on a log scale so that 0.5x and 2x sit at the same distance
from the line at 1.0. Rows are grouped by component, in table order; each bar is labelled with
its ratio, and the row's goal, when it has one, is marked on its line. Bars that meet their
goal are green, those that miss it red, those without a goal grey.

Draws with matplotlib's Agg canvas directly (no pyplot: no global backend or figure state in
the caller's process). matplotlib is an optional dependency: `pip install helixrt[plot]`. This
module measures nothing and writes only the file it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from helixrt.bench.runner import Row
from helixrt.codec import MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_rows", "require_matplotlib"]

_MET = {True: "#2e8b57", False: "#c0392b", None: "#8c8c8c"}
_BAR_HEIGHT = 0.6
_INCH_PER_BAR = 0.32
_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)


def require_matplotlib() -> None:
    """Raises `MissingDependencyError` (an ImportError) saying how to install matplotlib.
    `helixrt bench` calls it before measuring anything, so a missing plotter costs no run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"--plot needs matplotlib, which is not installed: pip install 'helixrt[plot]' ({exc})"
        ) from exc


def plot_rows(rows: Sequence[Row], path: str, *, title: str | None = None) -> list[Row]:
    """Draws the speedup of each row with a peer figure into the PNG `path`; returns the
    rows drawn (in order). Rows without a peer figure are left out and counted in a footnote."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = [row for row in rows if row.speedup is not None]
    groups = _groups(drawn)
    lines = len(drawn) + len(groups)  # one header line per component
    figure = Figure(figsize=(11.0, 1.6 + _INCH_PER_BAR * max(lines, 3)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if drawn:
        _draw(axes, groups, lines)
    else:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no row has a peer figure", ha="center", va="center")
    figure.suptitle(title or "helixrt speedup over each peer (above 1.0x, helixrt wins)")
    left_out = len(rows) - len(drawn)
    if left_out:
        figure.text(
            0.01,
            0.01,
            f"{left_out} row{'s' if left_out > 1 else ''} without a peer figure left out",
            fontsize=8,
            color="#555555",
        )
    figure.tight_layout(rect=(0.0, 0.03, 1.0, 0.985))  # the title above the axes
    figure.savefig(path, format="png")
    return drawn


def _groups(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """Consecutive rows of one component, in table order."""
    groups: list[tuple[str, list[Row]]] = []
    for row in rows:
        if groups and groups[-1][0] == row.component:
            groups[-1][1].append(row)
        else:
            groups.append((row.component, [row]))
    return groups


def _draw(axes: Axes, groups: list[tuple[str, list[Row]]], lines: int) -> None:
    ratios = [row.speedup or 1.0 for _, members in groups for row in members]
    goals = [row.goal for _, members in groups for row in members if row.goal]
    low, high = min(*ratios, *goals, 1.0), max(*ratios, *goals, 1.0)
    # Room on the right for the labels, and a little on the left of the smallest bar.
    left, right = low / 1.6, high * 12.0
    axes.set_xscale("log")
    axes.set_xlim(left, right)
    # Across four decades or more, 1-2-5 ticks would run into each other.
    ticks = _TICKS if right / left < 1e4 else [t for t in _TICKS if math.log10(t).is_integer()]
    axes.set_xticks([tick for tick in ticks if left <= tick <= right])
    positions: list[int] = []
    labels: list[str] = []
    headers: set[int] = set()  # positions of the component names
    y = lines - 1  # top to bottom
    for component, members in groups:
        headers.add(len(positions))
        positions.append(y)
        labels.append(component)
        y -= 1
        for row in members:
            speedup = row.speedup
            assert speedup is not None
            axes.barh(y, speedup - 1.0, left=1.0, height=_BAR_HEIGHT, color=_MET[row.met], zorder=2)
            axes.text(
                max(speedup, 1.0) * 1.04,
                y,
                f"{speedup:.2f}x" + (f"  (goal {row.goal:.3g}x)" if row.goal is not None else ""),
                va="center",
                fontsize=8,
            )
            if row.goal is not None:
                axes.plot(
                    [row.goal, row.goal],
                    [y - _BAR_HEIGHT / 2 - 0.1, y + _BAR_HEIGHT / 2 + 0.1],
                    color="black",
                    linewidth=1.5,
                    zorder=3,
                )
            positions.append(y)
            labels.append(f"{_short(row.operation)}  vs {row.peer_name}")
            y -= 1
    axes.set_yticks(positions, labels, fontsize=8)
    for index, tick in enumerate(axes.get_yticklabels()):
        if index in headers:
            tick.set_fontweight("bold")
            tick.set_fontsize(9)
    axes.set_ylim(-0.7, lines - 0.3)
    axes.axvline(1.0, color="black", linewidth=1.0, zorder=1)
    axes.grid(axis="x", which="major", color="#dddddd", zorder=0)
    axes.xaxis.set_major_formatter(_ratio_label)
    axes.xaxis.set_minor_formatter(_no_label)
    axes.set_xlabel("speedup (log scale); a black tick marks the row's goal")


def _ratio_label(value: float, _position: float) -> str:
    if value <= 0 or not math.isfinite(value):
        return ""
    return f"{value:g}x"


def _no_label(_value: float, _position: float) -> str:
    return ""


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"
