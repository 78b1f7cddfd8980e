"""Prometheus metrics of the process, served at `/metrics`.

Module-level, as prometheus-client intends (one registry per process). No room id is a label:
rooms are unbounded in number; per-room figures are in `GET /api/v1/rooms/{id}`.

The figures counted on every frame or commit (`Tally`, `Spread`) are plain numbers that a
collector reports at scrape time: prometheus-client's own metrics take a lock and check their
labels on every increment (~1 µs each, a dozen a keystroke at human typing speed, 7% of the
server's CPU in the fan-out benchmark). They are only touched from the event loop's thread.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Tally(Collector):
    """A counter (or, `gauge=True`, a gauge) kept as a plain number."""

    def __init__(self, name: str, documentation: str, *, gauge: bool = False) -> None:
        self.value = 0.0
        self._name = name
        self._documentation = documentation
        self._gauge = gauge
        REGISTRY.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def collect(self) -> Iterator[Metric]:
        if self._gauge:
            yield GaugeMetricFamily(self._name, self._documentation, value=self.value)
        else:
            yield CounterMetricFamily(self._name, self._documentation, value=self.value)


class Spread(Collector):
    """A histogram kept as plain numbers."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(buckets)
        #: Observations per bucket (not cumulative), the last for those above every bound.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        REGISTRY.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for bound, count in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=self._sum
        )


CONNECTIONS = Gauge("collab_connections", "WebSocket connections open now.")
ROOMS_LOADED = Gauge("collab_rooms_loaded", "Rooms loaded in memory now.")
UPDATES_RECEIVED = Tally("collab_updates_received_total", "Document updates received.")
UPDATES_RELAYED = Tally(
    "collab_updates_relayed_total",
    "Update frames sent to clients (per batch: one per client per other sender).",
)
BYTES_IN = Tally("collab_bytes_in_total", "WebSocket payload bytes received.")
BYTES_OUT = Tally("collab_bytes_out_total", "WebSocket payload bytes sent.")
COMMIT_BATCH_UPDATES = Spread(
    "collab_commit_batch_updates",
    "Updates per room commit batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000),
)
COMMIT_SECONDS = Spread(
    "collab_commit_seconds",
    "Time to commit a room's batch (group commit: shared with other rooms' batches).",
    buckets=_SECONDS_BUCKETS,
)
RELAY_LATENCY_SECONDS = Spread(
    "collab_relay_latency_seconds",
    "From receipt of the oldest update of a batch to its relay (commit included).",
    buckets=_SECONDS_BUCKETS,
)
LOG_ROWS_PENDING = Tally(
    "collab_log_rows_pending_compaction",
    "Log rows of the loaded rooms not yet in a snapshot.",
    gauge=True,
)
COMPACTIONS = Counter("collab_compactions_total", "Compactions run by the server.", ["result"])
FRAMES_REJECTED = Counter(
    "collab_frames_rejected_total", "Frames refused, closing their sender.", ["reason"]
)
ROWS_FROM_OTHER_PROCESSES = Tally(
    "collab_rows_from_other_processes_total",
    "Log rows other processes committed, applied to rooms loaded here.",
)
CATCH_UPS = Counter(
    "collab_catch_ups_total",
    "Reads of a loaded room's log for rows its fan-out did not deliver in time.",
    ["reason"],
)
