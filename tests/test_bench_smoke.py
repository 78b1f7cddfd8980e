"""The compaction benchmark still runs end to end (its `--smoke` size: seconds, on SQLite).

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


def test_compaction_benchmark_smoke_run_matches_the_text_and_writes_no_docs() -> None:
    doc_before = _doc_text()
    run = subprocess.run(
        [sys.executable, "-m", "bench.compaction", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "text matched:" in run.stdout
    assert "MISMATCH" not in run.stdout
    assert "| cold join, connect → synced" in run.stdout
    assert "updated docs/benchmarks.md" not in run.stdout
    assert _doc_text() == doc_before
