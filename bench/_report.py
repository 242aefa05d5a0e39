"""What every benchmark prints and keeps: a fixed-width table, JSON results, a PNG plot, progress.

Results go to ``bench/results/`` (git-ignored): ``<name>-<timestamp>.json`` for the record and
``<name>-latest.json`` for whoever compares runs. Plots use matplotlib's Agg backend, so no
display is needed; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "RESULTS_DIR",
    "Progress",
    "Series",
    "environment",
    "format_table",
    "plot_panels",
    "print_table",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Row = Mapping[str, Any]


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


Columns = Sequence[str] | Mapping[str, str]


def format_table(rows: Sequence[Row], columns: Columns) -> str:
    """Rows as a fixed-width table, numbers right-aligned. ``columns`` gives the order: row keys,
    or a mapping of row key to header."""
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    keys = list(headers)
    cells = [[_cell(row.get(key)) for key in keys] for row in rows]
    widths = [max([len(headers[key]), *(len(line[i]) for line in cells)]) for i, key in enumerate(keys)]
    numeric = [bool(rows) and all(isinstance(row.get(key), int | float) for row in rows) for key in keys]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line([headers[key] for key in keys]), rule, *(line(values) for values in cells)])


def print_table(
    rows: Sequence[Row], columns: Columns, *, title: str = "", file: TextIO | None = None
) -> None:
    out = file or sys.stdout
    if title:
        print(f"\n{title}", file=out)
    print(format_table(rows, columns), file=out, flush=True)


def environment() -> dict[str, Any]:
    """Where the numbers were measured: enough to tell two runs' machines apart."""
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_results(name: str, payload: Mapping[str, Any], *, directory: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` (plus the command line and environment) as JSON; returns the timestamped file."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "environment": environment(),
        **payload,
    }
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"
    path = directory / f"{name}-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    (directory / f"{name}-latest.json").write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True, kw_only=True)
class Series:
    """One line of a plot; ``reference`` draws a dashed horizontal line in the same colour."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    reference: float | None = None


def plot_panels(
    path: Path,
    panels: Mapping[str, Sequence[Series]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    per_row: int = 2,
    log_y: bool = False,
) -> Path:
    """One subplot per panel, ``per_row`` to a row, saved as a PNG; ``log_y`` for values that
    span orders of magnitude."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    columns = max(1, min(per_row, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.5 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (name, series) in zip(axes.flat, panels.items(), strict=False):
        for one in series:
            (line,) = axis.plot(one.xs, one.ys, marker="o", label=one.label)
            if one.reference is not None:
                axis.axhline(one.reference, color=line.get_color(), linestyle="--", linewidth=1)
        axis.set_title(name)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        if log_y:
            axis.set_yscale("log")
        else:
            axis.set_ylim(bottom=0)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize="small")
        else:
            axis.text(
                0.5, 0.5, "nothing to plot in this run", ha="center", va="center", transform=axis.transAxes
            )
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class Progress:
    """``[3/12] label`` on stderr, one line per step, so stdout stays the report."""

    def __init__(self, total: int, *, file: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self._file = file or sys.stderr
        self._started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self._started
        print(f"[{self.done}/{self.total}] {label}  ({elapsed:.0f} s)", file=self._file, flush=True)
