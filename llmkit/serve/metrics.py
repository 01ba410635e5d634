"""Prometheus text-format metrics, without a client library: counters, gauges read at scrape time,
and histograms with fixed buckets."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[tuple, Histogram]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], float]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][tuple(sorted(labels.items()))] += value

    def observe(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            key = tuple(sorted(labels.items()))
            hist = self._histograms[name].get(key)
            if hist is None:
                hist = self._histograms[name][key] = Histogram()
            hist.observe(value)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []

        def head(name: str, default_kind: str) -> None:
            kind, text = self._help.get(name, (default_kind, name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            for name, series in sorted(self._counters.items()):
                head(name, "counter")
                for key, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(dict(key))} {value:g}")
            for name, series in sorted(self._histograms.items()):
                head(name, "histogram")
                for key, hist in sorted(series.items()):
                    labels = dict(key)
                    for edge, count in zip(hist.buckets, hist.counts):
                        lines.append(f"{name}_bucket{_labels({**labels, 'le': f'{edge:g}'})} {count}")
                    lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {hist.count}")
                    lines.append(f"{name}_sum{_labels(labels)} {hist.sum:g}")
                    lines.append(f"{name}_count{_labels(labels)} {hist.count}")
        for name, read in sorted(self._gauges.items()):
            head(name, "gauge")
            lines.append(f"{name} {read():g}")
        return "\n".join(lines) + "\n"
