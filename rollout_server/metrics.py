"""Prometheus metrics in the text exposition format, kept per Sanic worker.

A few counters and one histogram do not justify a dependency; this writes format 0.0.4 by
hand. Names follow the deployment guide (``rollout_requests_total{status=…}`` …).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from rollout_server.protocol import RolloutResponse

__all__ = ["Histogram", "Metrics"]

# Server time per turn and event-loop lag: milliseconds matter.
_FAST_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# A rollout's wait before its start: milliseconds in a wave, up to minutes behind a full server.
_WAIT_BUCKETS = (*_FAST_BUCKETS, 2.5, 5.0, 10.0, 30.0, 60.0)
# MCP tool servers may offer any number of tools: past this many names, a tool's series is "other".
MAX_MCP_TOOL_LABELS = 64
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    """Every digit of a counter: ``{:g}`` would print 1234567 as 1.23457e+06."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Histogram:
    """Cumulative-bucket histogram of one series."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        return [f"# TYPE {name} histogram", *self.series(name)]

    def series(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> list[str]:
        """The lines of this histogram's series, without the ``# TYPE`` line."""
        lines = []
        cumulative = 0
        prefix = "".join(f'{k}="{_escape(v)}",' for k, v in labels)
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}')
        lines.append(f"{name}_sum{_labels(labels)} {self.total:.6f}")
        lines.append(f"{name}_count{_labels(labels)} {self.count}")
        return lines


@dataclass
class Metrics:
    """Counters and histograms of one worker; ``render`` adds the gauges and the counters kept
    elsewhere (the tokenize pool's) that the caller passes in."""

    counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    duration: Histogram = field(default_factory=lambda: Histogram(_DURATION_BUCKETS))
    turn_overhead: Histogram = field(default_factory=lambda: Histogram(_FAST_BUCKETS))
    loop_lag: Histogram = field(default_factory=lambda: Histogram(_FAST_BUCKETS))
    start_wait: Histogram = field(default_factory=lambda: Histogram(_WAIT_BUCKETS))
    tool_duration: dict[tuple[tuple[str, str], ...], Histogram] = field(default_factory=dict)
    _mcp_tools: set[str] = field(default_factory=set)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.counters[name]
        series[key] = series.get(key, 0.0) + value

    def observe_outcome(self, response: RolloutResponse, seconds: float) -> None:
        """Everything a finished rollout tells: its status, finish reason and error category, its
        trainer calls and drift events, its duration (``seconds``, arrival to answer), each
        turn's server time and its wait before the start."""
        extra = response.extra_fields
        self.inc("rollout_requests_total", status=response.status.lower())
        self.inc("rollout_finish_total", reason=response.finish_reason or "error")
        if extra.error_category:
            self.inc("rollout_errors_total", category=extra.error_category)
        self.inc("llm_calls_total", response.metrics.num_llm_calls)
        self.inc("alignment_drift_total", extra.alignment.drift_events)
        self.duration.observe(seconds)
        for overhead_ms in extra.timing.turn_overhead_ms:
            self.turn_overhead.observe(overhead_ms / 1000)
        self.start_wait.observe(extra.timing.queued_ms / 1000)

    def observe_tool(self, tool: str, *, source: str, ok: bool, seconds: float) -> None:
        """One tool call: ``tool_calls_total``, ``tool_errors_total`` and ``tool_duration_seconds``
        by tool and source. A name the model made up is "unknown" (it must not become a series);
        an MCP server's tools past ``MAX_MCP_TOOL_LABELS`` names are "other"."""
        if not tool:
            tool, source = "unknown", "none"
        elif source == "mcp" and tool not in self._mcp_tools:
            if len(self._mcp_tools) >= MAX_MCP_TOOL_LABELS:
                tool = "other"
            else:
                self._mcp_tools.add(tool)
        labels = (("source", source), ("tool", tool))
        self.inc("tool_calls_total", source=source, tool=tool)
        if not ok:
            self.inc("tool_errors_total", source=source, tool=tool)
        histogram = self.tool_duration.get(labels)
        if histogram is None:
            histogram = self.tool_duration[labels] = Histogram(_WAIT_BUCKETS)
        histogram.observe(seconds)

    def render(self, gauges: dict[str, float], totals: dict[str, float] | None = None) -> str:
        """The exposition: this worker's counters and histograms, then ``totals`` (counters read
        from elsewhere) and ``gauges``."""
        lines: list[str] = []
        counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = dict(self.counters)
        counters.update({name: {(): value} for name, value in (totals or {}).items()})
        for name in sorted(counters):
            lines.append(f"# TYPE {name} counter")
            for key, value in sorted(counters[name].items()):
                lines.append(f"{name}{_labels(key)} {_number(value)}")
        lines += self.duration.render("rollout_duration_seconds")
        lines += self.turn_overhead.render("rollout_turn_overhead_seconds")
        lines += self.loop_lag.render("event_loop_lag_seconds")
        lines += self.start_wait.render("rollout_start_wait_seconds")
        if self.tool_duration:
            lines.append("# TYPE tool_duration_seconds histogram")
            for labels, histogram in sorted(self.tool_duration.items()):
                lines += histogram.series("tool_duration_seconds", labels)
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
