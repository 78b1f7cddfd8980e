"""Real recorded editing sessions from ../shared/data/editing-traces (josephg/editing-traces).

automerge-paper: Martin Kleppmann and Alastair R. Beresford (via automerge/automerge-perf);
seph-blog1 and friendsforever_flat: Joseph Gentle. Licensed CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "editing-traces"


@dataclass(frozen=True)
class Trace:
    end_content: str
    #: Each transaction's patches: (position, deleted count, inserted text), in code points.
    transactions: list[list[tuple[int, int, str]]]


def load_trace(name: str) -> Trace:
    with gzip.open(TRACES / f"{name}.json.gz", "rt", encoding="utf-8") as file:
        data = json.load(file)
    return Trace(
        end_content=data["endContent"],
        transactions=[[tuple(p) for p in txn["patches"]] for txn in data["txns"]],
    )


def replay_updates(trace: Trace) -> list[bytes]:
    """The Yjs updates an editor produces replaying the trace: one per transaction.

    pycrdt's Text indexes UTF-8 bytes; trace positions count code points, so a trace with
    non-ASCII text has its positions converted (tracking the text, which is slower).
    """
    doc: Doc[Any] = Doc()
    text = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    ascii_only = all(inserted.isascii() for txn in trace.transactions for *_, inserted in txn)
    content = ""
    for patches in trace.transactions:
        with doc.transaction():
            for position, deleted, inserted in patches:
                start, end = position, position + deleted
                if not ascii_only:
                    start = len(content[:position].encode())
                    end = start + len(content[position : position + deleted].encode())
                    content = content[:position] + inserted + content[position + deleted :]
                if deleted:
                    del text[start:end]
                if inserted:
                    text.insert(start, inserted)
    return updates
