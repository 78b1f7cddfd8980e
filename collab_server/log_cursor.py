"""Which rows of a room's log a loaded room's document holds, when several processes append.

Sequence numbers equal commit order, so "the document holds every row up to `head`" is one
number. Rows committed by other processes arrive as fan-out messages, possibly out of order (two
processes' notifications race) or not at all (a dropped connection); this process's own commits
may land above `head` while rows below them are still on their way. `LogCursor` keeps what
arrived early until the rows before it arrive, and says when waiting is over and the log must be
read instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Span:
    """Rows `first..last`: their updates, or None when they are already in the document (this
    process's own commit) or were announced without them (read them from the log).

    Never changed once made, but not a frozen dataclass: one is made per commit, and a frozen
    one's `__init__` (`object.__setattr__` per field) took four times as long."""

    first: int
    last: int
    updates: tuple[bytes, ...] | None
    applied: bool = False


class LogCursor:
    def __init__(self, head: int) -> None:
        #: Every row with seq <= head is in the document.
        self.head = head
        self._ahead: dict[int, Span] = {}

    @property
    def behind(self) -> bool:
        """Rows after `head` are known to exist (spans are waiting for them, or lack data)."""
        return bool(self._ahead)

    def add(self, span: Span) -> None:
        if span.last > self.head:
            span = _after(span, self.head)
            self._ahead[span.first] = span

    def take_ready(self) -> list[tuple[bytes, ...]]:
        """The updates to apply now, in log order, each span's as one run; advances `head`
        over them and over spans already applied. Stops at a gap or at a span without data."""
        runs = []
        while (span := self._ahead.get(self.head + 1)) is not None:
            if not span.applied:
                if span.updates is None:
                    break
                runs.append(span.updates)
            del self._ahead[span.first]
            self.head = span.last
        return runs

    def not_applied(self, first: int, updates: Sequence[bytes]) -> list[bytes]:
        """Of the rows `first..` read from the log, those the document lacks: all but this
        process's own commits waiting above a gap."""
        applied = [span for span in self._ahead.values() if span.applied]
        return [
            update
            for seq, update in enumerate(updates, start=first)
            if not any(span.first <= seq <= span.last for span in applied)
        ]

    def caught_up(self, head: int) -> None:
        """The document now holds every row up to `head` (read from the log): forget what that
        covers, and trim a span it covers in part."""
        if head <= self.head:
            return
        self.head = head
        ahead, self._ahead = self._ahead, {}
        for span in ahead.values():
            self.add(span)


def _after(span: Span, head: int) -> Span:
    """The part of `span` after row `head` (`span.last > head`)."""
    if span.first > head:
        return span
    updates = None if span.updates is None else span.updates[head + 1 - span.first :]
    return Span(head + 1, span.last, updates, span.applied)
