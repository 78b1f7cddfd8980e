"""Fan-out between server processes that serve the same rooms from one database.

PostgreSQL LISTEN/NOTIFY by default, Redis Streams when a Redis URL is given, nothing for
SQLite (one process owns the file). See `base.Fanout` for the contract.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.engine import make_url

from ..urls import is_postgresql
from .base import Fanout, Handler, SingleProcess
from .events import AwarenessChanged, Committed, Event, Resubscribed
from .postgres import PostgresFanout

__all__ = [
    "AwarenessChanged",
    "Committed",
    "Event",
    "Fanout",
    "Handler",
    "Resubscribed",
    "SingleProcess",
    "fanout_for",
]


def fanout_for(database_url: str, *, redis_url: str | None, answer_timeout: float) -> Fanout:
    """The fan-out the processes sharing `database_url` use."""
    if redis_url is not None:
        from .redis import RedisFanout  # the optional `redis` extra

        return RedisFanout(redis_url, namespace=database_namespace(database_url))
    if is_postgresql(database_url):
        return PostgresFanout(database_url, answer_timeout=answer_timeout)
    return SingleProcess()


def database_namespace(database_url: str) -> str:
    """A short name of the database (host, port, name; no credentials): processes on different
    databases sharing one Redis never hear each other."""
    url = make_url(database_url)
    identity = f"{url.host}:{url.port}/{url.database}"
    return hashlib.sha256(identity.encode()).hexdigest()[:12]
