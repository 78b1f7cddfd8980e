"""The benchmarks still run end to end (their `--smoke` sizes: seconds, ours on SQLite).

Benchmarks measure speed; this test only keeps them working: no timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"


def _doc_text() -> str | None:
    return BENCHMARKS_DOC.read_text() if BENCHMARKS_DOC.exists() else None


def smoke_run(benchmark: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m bench.<benchmark> --smoke`, which must succeed."""
    run = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", "--smoke"],
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
