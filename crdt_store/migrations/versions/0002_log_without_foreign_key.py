"""The log's rows no longer reference their room by a foreign key (see `schema.room_updates`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The name PostgreSQL gave the unnamed constraint of 0001.
_POSTGRES_NAME = "room_updates_room_id_fkey"


def _room_updates(*, with_foreign_key: bool) -> sa.Table:
    """The log table as it is to be (SQLite rebuilds the table from it)."""
    room_id = (
        sa.Column("room_id", sa.String(64), sa.ForeignKey("rooms.id", ondelete="CASCADE"))
        if with_foreign_key
        else sa.Column("room_id", sa.String(64))
    )
    return sa.Table(
        "room_updates",
        sa.MetaData(),
        room_id,
        sa.Column("seq", sa.BigInteger),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "seq"),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_POSTGRES_NAME, "room_updates", type_="foreignkey")
    else:  # SQLite alters a constraint by copying the table
        copy_from = _room_updates(with_foreign_key=False)
        with op.batch_alter_table("room_updates", copy_from=copy_from, recreate="always"):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(
            _POSTGRES_NAME, "room_updates", "rooms", ["room_id"], ["id"], ondelete="CASCADE"
        )
    else:
        copy_from = _room_updates(with_foreign_key=True)
        with op.batch_alter_table("room_updates", copy_from=copy_from, recreate="always"):
            pass
