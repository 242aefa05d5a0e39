"""Prometheus text rendering and a rollout's outcome observed (``metrics.py``), and the JSON log
formatter (``logs.py``)."""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from rollout_server.logs import JSONFormatter
from rollout_server.metrics import Metrics
from rollout_server.protocol import (
    AlignmentReport,
    ExtraFields,
    RolloutMetrics,
    RolloutResponse,
    RolloutTiming,
)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?P<labels>\{{{_LABEL}(?:,{_LABEL})*\}})? (?P<value>\S+)$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<kind>counter|gauge|histogram|summary|untyped)$")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, str, float]] = field(default_factory=list)

    def value(self, name: str, labels: str = "") -> float:
        found = [v for n, lab, v in self.samples if n == name and lab == labels]
        assert len(found) == 1, (name, labels, self.samples)
        return found[0]


def parse(text: str) -> Exposition:
    """A strict reader of the text format 0.0.4: fails on any line Prometheus would reject."""
    assert text.endswith("\n")
    result = Exposition()
    for line in text.splitlines():
        if line.startswith("#"):
            typed = _TYPE.match(line)
            if typed:
                assert typed["name"] not in result.types, f"duplicate TYPE for {typed['name']}"
                result.types[typed["name"]] = typed["kind"]
            continue
        match = _SAMPLE.match(line)
        assert match, f"invalid sample line: {line!r}"
        name = match["name"]
        family = name
        if name not in result.types:
            family = next((name.removesuffix(s) for s in _HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert result.types.get(family) == "histogram", f"sample {name} has no TYPE line before it"
        result.samples.append((name, match["labels"] or "", float(match["value"])))
    return result


def test_empty_metrics_render_a_valid_zero_histogram() -> None:
    exposition = parse(Metrics().render({}))
    assert exposition.types == {
        "rollout_duration_seconds": "histogram",
        "rollout_turn_overhead_seconds": "histogram",
        "event_loop_lag_seconds": "histogram",
        "rollout_start_wait_seconds": "histogram",
    }
    assert exposition.value("rollout_duration_seconds_count") == 0
    assert exposition.value("rollout_duration_seconds_bucket", '{le="+Inf"}') == 0


def test_counters_with_labels() -> None:
    metrics = Metrics()
    metrics.inc("llm_calls_total", 3)
    metrics.inc("llm_calls_total", 2)
    metrics.inc("rollout_errors_total", category="timeout")
    metrics.inc("rollout_errors_total", category="timeout")
    metrics.inc("rollout_errors_total", category="rate_limited")
    metrics.inc("labelled_total", zeta="1", alpha="2")
    exposition = parse(metrics.render({}))
    assert exposition.types["llm_calls_total"] == "counter"
    assert exposition.types["rollout_errors_total"] == "counter"
    assert exposition.value("llm_calls_total") == 5
    assert exposition.value("rollout_errors_total", '{category="timeout"}') == 2
    assert exposition.value("rollout_errors_total", '{category="rate_limited"}') == 1
    assert exposition.value("labelled_total", '{alpha="2",zeta="1"}') == 1


def outcome(
    status: Literal["COMPLETED", "ERROR"] = "COMPLETED",
    finish_reason: str | None = "stop",
    category: str | None = None,
    *,
    llm_calls: int = 1,
    drift_events: int = 0,
    overheads_ms: tuple[float, ...] = (),
    queued_ms: float = 0.0,
) -> RolloutResponse:
    """A finished rollout's response, with what metrics read from it."""
    alignment = AlignmentReport(
        checks=llm_calls,
        drift_events=drift_events,
        events=[{"turn": 1, "kind": "prefix_break"}] * drift_events,
        faithful_rewrites=0,
        fast_path_turns=0,
        full_render_turns=0,
        tokens_encoded=0,
        sequence_length=0,
        response_mask_zeros=0,
        response_mask_ones=0,
    )
    timing = RolloutTiming(
        turn_overhead_ms=list(overheads_ms), tail_ms=0.0, server_ms=sum(overheads_ms), queued_ms=queued_ms
    )
    return RolloutResponse(
        rollout_id="r",
        status=status,
        final_messages=[],
        finish_reason=finish_reason,
        metrics=RolloutMetrics(num_llm_calls=llm_calls),
        extra_fields=ExtraFields(alignment=alignment, timing=timing, error_category=category),
    )


def test_observe_outcome_counts_status_reason_and_category() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(), 0.2)
    metrics.observe_outcome(outcome("ERROR", None, "network_error"), 1.5)
    exposition = parse(metrics.render({}))
    assert exposition.value("rollout_requests_total", '{status="completed"}') == 1
    assert exposition.value("rollout_requests_total", '{status="error"}') == 1
    assert exposition.value("rollout_finish_total", '{reason="stop"}') == 1
    assert exposition.value("rollout_finish_total", '{reason="error"}') == 1
    assert exposition.value("rollout_errors_total", '{category="network_error"}') == 1
    assert not any(
        name == "rollout_errors_total" and "None" in labels for name, labels, _ in exposition.samples
    )


def test_observe_outcome_counts_calls_drift_and_the_servers_time() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(llm_calls=3, overheads_ms=(1.234, 250.0), queued_ms=30.0), 1.5)
    metrics.observe_outcome(outcome("ERROR", None, "alignment_error", llm_calls=2, drift_events=1), 0.5)
    exposition = parse(metrics.render({}))
    assert exposition.value("llm_calls_total") == 5
    assert exposition.value("alignment_drift_total") == 1
    assert exposition.value("rollout_duration_seconds_sum") == pytest.approx(2.0)
    assert exposition.value("rollout_turn_overhead_seconds_count") == 2
    assert exposition.value("rollout_turn_overhead_seconds_bucket", '{le="0.002"}') == 1
    assert exposition.value("rollout_turn_overhead_seconds_sum") == pytest.approx(0.251234)
    assert exposition.value("rollout_start_wait_seconds_count") == 2
    assert exposition.value("rollout_start_wait_seconds_sum") == pytest.approx(0.03)


def test_a_rollout_without_drift_still_shows_the_drift_counter() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(), 0.1)
    exposition = parse(metrics.render({}))
    assert exposition.types["alignment_drift_total"] == "counter"
    assert exposition.value("alignment_drift_total") == 0


def bucket_series(exposition: Exposition) -> list[tuple[str, float]]:
    series = []
    for name, labels, value in exposition.samples:
        if name == "rollout_duration_seconds_bucket":
            match = re.fullmatch(r'\{le="([^"]+)"\}', labels)
            assert match, labels
            series.append((match[1], value))
    return series


def test_histogram_buckets_are_cumulative_and_end_in_inf_equal_to_count() -> None:
    metrics = Metrics()
    durations = [0.001, 0.01, 0.3, 0.5, 0.7, 4.0, 59.0, 601.0, 5000.0]
    for seconds in durations:
        metrics.observe_outcome(outcome(), seconds)
    exposition = parse(metrics.render({}))
    series = bucket_series(exposition)
    bounds = [float(le) for le, _ in series]
    counts = [count for _, count in series]
    assert series[-1][0] == "+Inf"
    assert bounds == sorted(bounds)
    assert counts == sorted(counts)
    assert counts[-1] == exposition.value("rollout_duration_seconds_count") == len(durations)
    assert exposition.value("rollout_duration_seconds_sum") == pytest.approx(sum(durations), abs=1e-5)
    for le, count in series:
        assert count == sum(1 for d in durations if d <= float(le)), le


def test_a_duration_equal_to_a_bound_falls_in_that_bucket() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(), 0.5)
    counts = dict(bucket_series(parse(metrics.render({}))))
    assert counts["0.25"] == 0
    assert counts["0.5"] == 1


def test_gauges_are_rendered_with_their_type() -> None:
    exposition = parse(Metrics().render({"rollouts_in_flight": 3.0, "tokenize_workers_alive": 2.0}))
    assert exposition.types["rollouts_in_flight"] == "gauge"
    assert exposition.types["tokenize_workers_alive"] == "gauge"
    assert exposition.value("rollouts_in_flight") == 3
    assert exposition.value("tokenize_workers_alive") == 2


def test_large_counter_and_gauge_values_keep_every_digit() -> None:
    metrics = Metrics()
    metrics.inc("llm_calls_total", 1234567)
    exposition = parse(metrics.render({"tokenize_requests_queued": 12345678.0}))
    assert exposition.value("llm_calls_total") == 1234567
    assert exposition.value("tokenize_requests_queued") == 12345678


def test_totals_read_from_elsewhere_are_counters() -> None:
    totals = {"tokenizer_cache_hits_total": 12345678.0, "tokenizer_cache_misses_total": 3.0}
    exposition = parse(Metrics().render({"rollouts_in_flight": 1.0}, totals))
    assert exposition.types["tokenizer_cache_hits_total"] == "counter"
    assert exposition.types["tokenizer_cache_misses_total"] == "counter"
    assert exposition.value("tokenizer_cache_hits_total") == 12345678


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.inc("odd_total", reason='say "hi"\\\n')
    parse(metrics.render({}))


def json_lines(emit: logging.Logger, stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def json_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("tests.rollout_server.test_metrics.json")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers[:] = []


def test_json_formatter_one_object_per_line_with_rollout_id(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    logger.info("turn %d done", 3, extra={"rollout_id": "r-42"})
    logger.warning("no rollout here")
    first, second = json_lines(logger, stream)
    assert first["message"] == "turn 3 done"
    assert first["rollout_id"] == "r-42"
    assert first["level"] == "INFO"
    assert first["logger"] == "tests.rollout_server.test_metrics.json"
    assert isinstance(first["pid"], int)
    assert isinstance(first["timestamp"], str)
    assert second["rollout_id"] is None
    assert second["level"] == "WARNING"


def test_json_formatter_keeps_multiline_text_and_exceptions_on_one_line(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("line one\nline two — ünïcode", extra={"rollout_id": "r-7"})
    [entry] = json_lines(logger, stream)
    assert entry["message"] == "line one\nline two — ünïcode"
    assert entry["rollout_id"] == "r-7"
    assert entry["level"] == "ERROR"
    assert "RuntimeError: boom" in str(entry["exception"])
