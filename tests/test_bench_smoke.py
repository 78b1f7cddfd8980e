"""The benchmarks still run end to end (their `--smoke` sizes: seconds, ours on SQLite).

Benchmarks measure speed; this test only keeps them working: no timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"


def _doc_text() -> str | None:
    return BENCHMARKS_DOC.read_text() if BENCHMARKS_DOC.exists() else None


def smoke_run(benchmark: str, timeout: float, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.<benchmark> --smoke [args]`, which must succeed."""
    run = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def test_compaction_benchmark_smoke_run_matches_the_text_and_writes_no_docs() -> None:
    doc_before = _doc_text()
    run = smoke_run("compaction", timeout=300)
    assert "text matched:" in run.stdout
    assert "MISMATCH" not in run.stdout
    assert "| cold join, connect → synced" in run.stdout
    assert "updated docs/benchmarks.md" not in run.stdout
    assert _doc_text() == doc_before


def test_server_suite_smoke_run_converges_everywhere_and_writes_no_docs() -> None:
    """Every server of `bench.suite` runs every scenario (small sizes) and every room converges;
    `make bench-deps` installs the Node peers it starts."""
    doc_before = _doc_text()
    run = smoke_run("suite", timeout=600)
    for heading in ("Trace replay", "Fan-out", "Join storm", "Cold open", "Idle capacity"):
        assert f"### {heading}" in run.stdout, heading
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    for server in (
        "collab-server (SQLite)",
        "@y/websocket-server",
        "pycrdt-websocket",
        "Hocuspocus",
    ):
        assert sum(server in row for row in rows) >= 5, server  # in every scenario's table
    # every replay run converged, every fan-out room, every storm client, every cold open text
    assert "**no**" not in run.stdout
    assert "n/a" not in run.stdout.split("### Trace replay")[1].split("### Fan-out")[0]
    assert "updated docs/benchmarks.md" not in run.stdout
    assert _doc_text() == doc_before


def table_in(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table under `### heading`, its header row first."""
    section = text.split(f"### {heading}\n")[1].split("\n### ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [line.strip("| ").split(" | ") for line in lines if not line.startswith("| ---")]


@pytest.mark.postgres
def test_floor_smoke_run_converges_in_the_fan_out_beside_the_reference(postgres_url: str) -> None:
    """The fan-out's floor (`bench/floor_peer.py`: PostgreSQL, so not in the run above) serves
    the suite's clients, relaying only what it has committed."""
    run = smoke_run(
        "suite",
        300,
        *("--only", "fanout", "--servers", "floor,reference", "--database-url", postgres_url),
    )
    header, *rows = table_in(run.stdout, "Fan-out")
    converged = header.index("rooms converged")
    assert [(row[0], row[converged]) for row in rows] == [
        ("@y/websocket-server (reference)", "4/4"),
        ("minimal Python commit-then-relay (floor)", "4/4"),
    ]
    assert "FAILED" not in run.stdout


@pytest.mark.postgres
def test_scale_out_smoke_run_converges_on_every_deployment_and_writes_no_docs(
    postgres_url: str, redis_url: str
) -> None:
    """`bench.scaleout` runs both loads on 1 and 2 processes (PostgreSQL and Redis fan-out),
    every room converges, and with 2 processes the deliveries between them are measured."""
    doc_before = _doc_text()
    run = smoke_run("scaleout", 300, "--database-url", postgres_url, "--redis-url", redis_url)
    for heading in ("Human speed", "Throughput push"):
        header, *rows = table_in(run.stdout, heading)
        assert [row[:3] for row in rows] == [
            ["1", "PostgreSQL NOTIFY", "2/2"],
            ["2", "PostgreSQL NOTIFY", "2/2"],
            ["2", "Redis Streams", "2/2"],
        ], heading
        assert not any("n/a" in cell for row in rows for cell in row), heading
    header, *rows = table_in(run.stdout, "Human speed")
    across = header.index("across processes p50")
    assert [row[across].endswith(" ms") for row in rows] == [False, True, True]
    assert "FAILED" not in run.stdout
    assert "updated docs/benchmarks.md" not in run.stdout
    assert _doc_text() == doc_before
