"""Prometheus metrics in the text exposition format, kept per Sanic worker.

A few counters and one histogram do not justify a dependency; this writes format 0.0.4 by
hand. Names follow the deployment guide (``rollout_requests_total{status=…}`` …).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["Metrics"]

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
class Metrics:
    """Counters of one worker; ``render`` adds the gauges the caller passes in."""

    counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    duration_count: int = 0

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
        self.buckets[bisect.bisect_left(_DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def render(self, gauges: dict[str, float]) -> str:
        lines: list[str] = []
        for name in sorted(self.counters):
            lines.append(f"# TYPE {name} counter")
            for key, value in sorted(self.counters[name].items()):
                lines.append(f"{name}{_labels(key)} {_number(value)}")
        lines.append("# TYPE rollout_duration_seconds histogram")
        cumulative = 0
        for bound, count in zip((*_DURATION_BUCKETS, float("inf")), self.buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'rollout_duration_seconds_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"rollout_duration_seconds_sum {self.duration_sum:.6f}")
        lines.append(f"rollout_duration_seconds_count {self.duration_count}")
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"
