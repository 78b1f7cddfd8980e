"""Coverage-guided fuzzing of the frame parser with atheris (libFuzzer): longer campaigns than
the Hypothesis tests of `tests/test_fuzz.py`, for the same properties.

For every input, `parse_frame` returns a frame or raises `ProtocolError` (anything else is a
crash), within 100 ms (pycrdt's own varint decoder took seconds over 256 KiB of 0xFF); an
awareness message it accepts applies to pycrdt's `Awareness`, as the room applies it, and
carries only JSON that JavaScript's `JSON.parse` reads back (no NaN, no Infinity).

atheris is not a project dependency. Install it beside the project, leaving the venv alone,
and run from the repository root:

    .venv/bin/pip install --target /tmp/atheris atheris
    PYTHONPATH=/tmp/atheris .venv/bin/python -m bench.fuzz_frames -atheris_runs=1000000

Every libFuzzer flag works: `-max_total_time=600`, `-max_len=70000` (inputs past the 64 KiB
awareness limit), a corpus directory as the last argument to keep what was learnt between runs.
A failing input is written to `crash-<sha1>`; replay it with `... -m bench.fuzz_frames
crash-<sha1>`.
"""

from __future__ import annotations

import json
import sys
import time

import atheris
from pycrdt import Awareness, Doc

import collab_server  # noqa: F401  (the app and its dependencies: loaded, not instrumented)

#: Instrumented for coverage: only the parser. Instrumenting everything the package imports
#: (800 modules) takes minutes; so these two are dropped and imported again, instrumented.
FUZZED_MODULES = ["crdt_store.encoding", "collab_server.protocol"]
for name in FUZZED_MODULES:
    del sys.modules[name]
with atheris.instrument_imports(include=FUZZED_MODULES):
    from collab_server.protocol import AwarenessUpdate, ProtocolError, parse_frame

#: The default `max_awareness_bytes` (settings.py).
MAX_AWARENESS_BYTES = 64 * 1024
SLOW_SECONDS = 0.1


def check_frame(data: bytes) -> None:
    started = time.perf_counter()
    try:
        frame = parse_frame(data, max_awareness_bytes=MAX_AWARENESS_BYTES)
    except ProtocolError:
        frame = None
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_SECONDS:
        raise AssertionError(f"parsing {len(data)} bytes took {elapsed:.3f} s")
    if isinstance(frame, AwarenessUpdate):
        Awareness(Doc()).apply_awareness_update(frame.payload, "fuzz")
        for entry in frame.entries:
            json.dumps(entry.state, allow_nan=False)


def main() -> None:
    atheris.Setup(sys.argv, check_frame)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
