"""Fixtures: real databases (PostgreSQL and SQLite), real server processes, in-process apps.

PostgreSQL is at 127.0.0.1:5432 (override with COLLAB_TEST_POSTGRES_URL). Each test gets its
own database, cloned from a template migrated once per run, so runs and tests never collide.
Without PostgreSQL its tests skip with the reason; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from collab_server import Settings, create_app
from crdt_store import Store, upgrade_database
from tests.support.server import ServerProcess

POSTGRES_ADMIN_URL = os.environ.get(
    "COLLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
UNDER_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _admin_connection() -> psycopg.Connection:
    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)


def _database_url(name: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database migrated once for this run; per-test databases are cloned from it."""
    try:
        admin = _admin_connection()
    except psycopg.OperationalError as error:
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {error}".strip()
        if UNDER_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
    name = f"collab_test_{uuid.uuid4().hex[:12]}_template"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        upgrade_database(_database_url(name))
        yield name
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    name = f"collab_test_{uuid.uuid4().hex[:16]}"
    with _admin_connection() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(postgres_template)
            )
        )
        yield _database_url(name)
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'collab.sqlite3'}"
    upgrade_database(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each backend."""
    fixture = "postgres_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store.connect(database_url)
    yield store
    await store.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, web_dist=tmp_path / "no-web-client")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for an in-process app with its services running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.migrated.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real `collab-server serve` processes: `start_server(url, COLLAB_X="...")`."""
    servers: list[ServerProcess] = []

    def start(database_url: str, **env: str) -> ServerProcess:
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = ServerProcess(database_url=database_url, log_path=log_path, env=env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def live_server(database_url: str, start_server: ServerFactory) -> ServerProcess:
    """A real `collab-server serve` process on a free port, on a fresh database."""
    return start_server(database_url)


REDIS_URL = os.environ.get("COLLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the Redis fan-out (COLLAB_TEST_REDIS_URL); tests keep to namespaces of their
    own. Without Redis its tests skip with the reason; under CI=true they fail instead."""
    import redis  # the Redis fan-out's optional dependency: only its tests need it

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3) as client:
            client.ping()
    except redis.RedisError as error:
        reason = f"Redis not reachable at {REDIS_URL}: {error}".strip()
        if UNDER_CI:
            pytest.fail(f"{reason} (CI=true: Redis tests must run)")
        pytest.skip(reason)
    return REDIS_URL
