"""Schema migrations, applied by `collab-server migrate` and on every `serve` start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from .urls import is_postgresql, network_parameters, sync_url

_MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: several processes starting at once take turns on this lock, so exactly one
# of them runs each migration.
_MIGRATION_LOCK_KEY = 7_312_004_711
#: Seconds a migration's connection may wait for an unreachable database: libpq's connect
#: timeout, and keepalives that fail a connection lost in a partition (else the migration
#: thread hangs and `/readyz` stays 503 after the network is back).
_MIGRATION_NETWORK_TIMEOUT = 10


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for our migrations, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_database(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent; blocking)."""
    network = (
        network_parameters(
            url, _MIGRATION_NETWORK_TIMEOUT, connect_timeout=_MIGRATION_NETWORK_TIMEOUT
        )
        if is_postgresql(url)
        else {}
    )
    engine = create_engine(sync_url(url), connect_args=network)
    try:
        with engine.begin() as connection:
            if is_postgresql(url):
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
