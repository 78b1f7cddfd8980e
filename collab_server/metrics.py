"""Prometheus metrics of the process, served at `/metrics`.

Module-level, as prometheus-client intends (one registry per process). No room id is a label:
rooms are unbounded in number; per-room figures are in `GET /api/v1/rooms/{id}`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("collab_connections", "WebSocket connections open now.")
ROOMS_LOADED = Gauge("collab_rooms_loaded", "Rooms loaded in memory now.")
UPDATES_RECEIVED = Counter("collab_updates_received_total", "Document updates received.")
UPDATES_RELAYED = Counter(
    "collab_updates_relayed_total",
    "Update frames sent to clients (per batch: one per client per other sender).",
)
BYTES_IN = Counter("collab_bytes_in_total", "WebSocket payload bytes received.")
BYTES_OUT = Counter("collab_bytes_out_total", "WebSocket payload bytes sent.")
COMMIT_BATCH_UPDATES = Histogram(
    "collab_commit_batch_updates",
    "Updates per room commit batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000),
)
COMMIT_SECONDS = Histogram(
    "collab_commit_seconds",
    "Time to commit a room's batch (group commit: shared with other rooms' batches).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RELAY_LATENCY_SECONDS = Histogram(
    "collab_relay_latency_seconds",
    "From receipt of the oldest update of a batch to its relay (commit included).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOG_ROWS_PENDING = Gauge(
    "collab_log_rows_pending_compaction", "Log rows of the loaded rooms not yet in a snapshot."
)
COMPACTIONS = Counter("collab_compactions_total", "Compactions run by the server.", ["result"])
FRAMES_REJECTED = Counter(
    "collab_frames_rejected_total", "Frames refused, closing their sender.", ["reason"]
)
ROWS_FROM_OTHER_PROCESSES = Counter(
    "collab_rows_from_other_processes_total",
    "Log rows other processes committed, applied to rooms loaded here.",
)
CATCH_UPS = Counter(
    "collab_catch_ups_total",
    "Reads of a loaded room's log for rows its fan-out did not deliver in time.",
    ["reason"],
)
