"""Metrics observed in a worker process, replayed on the server process's registry.

A worker process has no HTTP endpoint of its own, so the metrics it observes (stage and
step timings, generated counts, device memory, weight bytes, calibration cache results)
are recorded as plain events and sent back with each reply; the server process replays
them on the app's ``Metrics``, so /metrics keeps one registry and the same names and
labels in both worker modes (thread and process).

The recorder has the same shape as ``Metrics`` where the engine uses it:
``recorder.stage_duration.labels(model=..., stage=...).observe(seconds)``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: (metric attribute of Metrics, sorted label items, method, value)
MetricEvent = tuple[str, tuple[tuple[str, str], ...], str, float]
_METHODS = ("observe", "inc", "dec", "set")


class _RecordedMetric:
    def __init__(self, events: list[MetricEvent], name: str,
                 labels: tuple[tuple[str, str], ...] = ()) -> None:
        self._events, self._name, self._labels = events, name, labels

    def labels(self, **labels: str) -> _RecordedMetric:
        items = tuple(sorted((key, str(value)) for key, value in labels.items()))
        return _RecordedMetric(self._events, self._name, items)

    def observe(self, value: float) -> None:
        self._events.append((self._name, self._labels, "observe", float(value)))

    def inc(self, value: float = 1.0) -> None:
        self._events.append((self._name, self._labels, "inc", float(value)))

    def dec(self, value: float = 1.0) -> None:
        self._events.append((self._name, self._labels, "dec", float(value)))

    def set(self, value: float) -> None:
        self._events.append((self._name, self._labels, "set", float(value)))


class MetricsRecorder:
    """Stands in for ``Metrics`` in a worker process: every observation becomes an event."""

    def __init__(self) -> None:
        self._events: list[MetricEvent] = []

    def __getattr__(self, name: str) -> _RecordedMetric:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RecordedMetric(self._events, name)

    def drain(self) -> list[MetricEvent]:
        """The events recorded since the last drain (in order), removed from the recorder."""
        events = self._events[:]
        del self._events[:len(events)]
        return events


def replay(metrics: Any, events: list[MetricEvent]) -> None:
    """Apply a worker's events to the app's Metrics; an unknown name is logged, not fatal."""
    for name, labels, method, value in events:
        metric = getattr(metrics, name, None)
        if metric is None or method not in _METHODS:
            logger.warning("ignoring a worker metric event for %r (%s)", name, method)
            continue
        if labels:
            metric = metric.labels(**dict(labels))
        getattr(metric, method)(value)
