"""Database URLs: users write plain `postgresql://` and `sqlite:///` URLs; we pick the drivers."""

from __future__ import annotations

import math

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}
_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite"}


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend == "postgres":
        return "postgresql"
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(
            f"unsupported database URL scheme {url.drivername!r}: use postgresql or sqlite"
        )
    return backend


def check_database_url(raw: str) -> str:
    """`raw`, if the store can run on it; else a `ValueError` saying why (for settings)."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "not a database URL: use postgresql://user@host:port/db or sqlite:///path"
        ) from None
    if _backend(url) == "sqlite":
        sqlite_path(raw)
    return raw


def sqlite_path(raw: str) -> str:
    """The file a `sqlite:///path` URL names.

    Every connection of the store opens this path, the log appender's own with sqlite3 itself,
    so an in-memory database (a new, empty one per connection) and URL options (which the
    appender would not see) are refused rather than served from a database the migrations
    never touched.
    """
    url = make_url(raw)
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError(
            f"{raw!r} names no SQLite file (in memory, each connection would get an empty "
            "database of its own): use sqlite:///path/to/file"
        )
    if url.query:
        raise ValueError(
            f"{raw!r} has options ({', '.join(url.query)}), which the store does not apply: "
            "use sqlite:///path/to/file"
        )
    return url.database


def async_url(raw: str) -> URL:
    """The URL with the async driver the store runs on (psycopg 3 or aiosqlite)."""
    url = make_url(raw)
    return url.set(drivername=_ASYNC_DRIVERS[_backend(url)])


def sync_url(raw: str) -> URL:
    """The URL with a blocking driver, for Alembic migrations."""
    url = make_url(raw)
    return url.set(drivername=_SYNC_DRIVERS[_backend(url)])


def libpq_url(raw: str) -> str:
    """The URL as libpq reads it (`postgresql://...`), for connections made without SQLAlchemy."""
    return make_url(raw).set(drivername="postgresql").render_as_string(hide_password=False)


def is_postgresql(raw: str) -> bool:
    return _backend(make_url(raw)) == "postgresql"


def redact(raw: str) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(raw).render_as_string(hide_password=True)


def network_parameters(raw: str, answer_timeout: float, **more: int) -> dict[str, int]:
    """libpq parameters that let the kernel find a dead peer on a real network: keepalive probes
    on an idle pooled connection, and a bound on unacknowledged data (`tcp_user_timeout`), so a
    connection lost in a partition fails on its next use instead of at its answer timeout; and
    `more` of them. Those written in the URL `raw` win: they are left out."""
    seconds = max(1, math.ceil(answer_timeout))
    wanted = {
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, math.ceil(answer_timeout / 3)),
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
        **more,
    }
    written = make_url(raw).query
    return {name: value for name, value in wanted.items() if name not in written}
