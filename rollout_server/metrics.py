"""Prometheus metrics in the text exposition format, kept per Sanic worker.

A few counters and one histogram do not justify a dependency; this writes format 0.0.4 by
hand. Names follow the deployment guide (``rollout_requests_total{status=…}`` …).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

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
        lines = [f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
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

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.counters[name]
        series[key] = series.get(key, 0.0) + value

    def observe_rollout(
        self, seconds: float, *, status: str, finish_reason: str | None, category: str | None
    ) -> None:
        self.inc("rollout_requests_total", status=status.lower())
        self.inc("rollout_finish_total", reason=finish_reason or "error")
        if category:
            self.inc("rollout_errors_total", category=category)
        self.duration.observe(seconds)

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
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
