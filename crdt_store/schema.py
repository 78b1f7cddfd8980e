"""Tables of the store. Alembic migrations in `migrations/versions` create them; keep both in step.

`rooms.head` is the last sequence number handed out in the room's log. It is bumped by
`UPDATE ... RETURNING` in the same transaction as the INSERT of the log rows, so the row lock
makes per-room sequence numbers equal commit order (a BIGSERIAL would not: it is allocated at
INSERT and becomes visible at COMMIT, so a reader could see seq 2 before seq 1 and skip seq 1).
`log_updates` / `log_bytes` count the rows not yet folded into a snapshot, maintained in the
same transactions, so stats and compaction triggers never scan the log.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

ROOM_ID_MAX_LENGTH = 64

rooms = Table(
    "rooms",
    metadata,
    Column("id", String(ROOM_ID_MAX_LENGTH), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("language", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("head", BigInteger, nullable=False),
    Column("log_updates", BigInteger, nullable=False),
    Column("log_bytes", BigInteger, nullable=False),
)

#: No foreign key to `rooms`: PostgreSQL checks one for every row inserted (a query of `rooms`
#: per row, at the end of the statement), and that check was over half of the database's CPU
#: for a batch of log rows (~9 of ~14 µs a row, 1,000-row appends). The append statement
#: inserts rows only for rooms it has locked, and `Store.delete_room` locks the room before
#: deleting its rows, so no row outlives its room.
room_updates = Table(
    "room_updates",
    metadata,
    Column("room_id", String(ROOM_ID_MAX_LENGTH), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

room_snapshots = Table(
    "room_snapshots",
    metadata,
    Column(
        "room_id",
        String(ROOM_ID_MAX_LENGTH),
        ForeignKey("rooms.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # The snapshot holds every log row with seq <= upto_seq.
    Column("upto_seq", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("state_bytes", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: What a room id may look like: URL-safe, bounded, checked before any lookup.
ROOM_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{ROOM_ID_MAX_LENGTH}}}$"
