"""Schema migrations, applied by `collab-server migrate` and on every `serve` start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from .urls import is_postgresql, sync_url

_MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: several processes starting at once take turns on this lock, so exactly one
# of them runs each migration.
_MIGRATION_LOCK_KEY = 7_312_004_711


def upgrade_database(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent; blocking)."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            if is_postgresql(url):
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
