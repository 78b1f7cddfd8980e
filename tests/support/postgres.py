"""Ending a process's named PostgreSQL connections, as a restart, a failover or an operator does.

The server names its own connections in `pg_stat_activity` (`collab-server:<role> <pid>`).
"""

from __future__ import annotations

import psycopg


def terminate_connections(database_url: str, application_name: str) -> int:
    """`pg_terminate_backend` on every connection named `application_name`, each one gone (its
    socket closed) on return; how many."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [application_name],
        ).fetchall()
    return len(rows)


def connections_named(database_url: str, application_name: str) -> int:
    """How many connections named `application_name` the database serves now."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        ).fetchone()
    assert row is not None
    return int(row[0])
