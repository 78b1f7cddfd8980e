"""All configuration, in one object passed down from `create_app` (environment prefix `COLLAB_`).

Every limit has a name, a default and a reason; `docs/configuration.md` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from crdt_store.urls import check_database_url

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLLAB_", env_file=".env", extra="ignore")

    @property
    def token_secret_bytes(self) -> bytes | None:
        return self.token_secret.get_secret_value().encode() if self.token_secret else None

    database_url: Annotated[str, AfterValidator(check_database_url)] = Field(
        "sqlite:///collab.sqlite3",
        description="postgresql://user@host:port/db or sqlite:///path. The default needs no "
        "setup: a SQLite file in the working directory.",
    )
    host: str = Field("127.0.0.1", description="Interface `serve` binds to.")
    port: int = Field(8000, description="Port `serve` listens on.")
    db_pool_size: int = Field(10, description="PostgreSQL connections kept open per process.")
    db_answer_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for one answer from PostgreSQL (a statement's result, a "
        "batch of rows, a commit, a new connection); past it the connection is dropped and the "
        "operation fails as unavailable (a commit is retried). A database that stops answering "
        "(a network partition) closes nothing, so without it a commit waits forever. Per "
        "answer, so a long operation that makes progress is never cut; the longest answer "
        "measured, compaction's DELETE of a 260k-row log, took 0.14 s.",
    )
    readiness_timeout_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest wait of `/readyz` for the database; past it, 503. Orchestrators "
        "count a probe that answers late (often after 1 s) as failed.",
    )

    redis_url: str | None = Field(
        None,
        description="redis://host:port/db. When set, processes sharing the database tell each "
        "other of commits through Redis Streams and of cursors through Redis pub/sub instead of "
        "PostgreSQL NOTIFY (for many processes or high write rates). PostgreSQL stays the only "
        "source of truth. Needs the `redis` extra.",
    )
    fanout_check_seconds: float = Field(
        2.0,
        gt=0,
        description="How often a process compares its loaded rooms' log heads with the "
        "database's: a quiet room whose last fan-out message was lost catches up within two "
        "intervals (messages lost in a reconnect are caught up at once).",
    )

    api_key: SecretStr | None = Field(
        None,
        description="When set, the REST API requires it (`Authorization: Bearer <key>`) for "
        "admin operations (create, list, delete rooms, mint tokens); room reads also accept a "
        "token for that room. Unset: the REST API is open (local development).",
    )
    token_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="Signs room access tokens (HMAC-SHA256; at least 32 characters). When set, "
        "a WebSocket must carry `?token=` for its room. Unset: open mode, anyone who knows a "
        "room id can join it (logged as a warning at startup).",
    )
    token_max_ttl_seconds: int = Field(
        30 * 24 * 3600, description="Longest lifetime the API grants a token (30 days)."
    )

    max_update_bytes: int = Field(
        1 * MIB,
        description="Largest WebSocket frame accepted, enforced by the WebSocket layer before "
        "buffering (close 1009). 1 MiB holds a paste of ~500k characters.",
    )
    max_awareness_bytes: int = Field(
        64 * 1024,
        description="Largest awareness message (cursor, name, colour): a few hundred bytes in "
        "practice (close 1009).",
    )
    max_pending_updates: int = Field(
        10_000,
        description="Updates of one room waiting for their commit before the server stops "
        "reading from that room's sockets (backpressure: a fast writer is throttled, never "
        "dropped).",
    )
    send_queue_max_bytes: int = Field(
        64 * MIB,
        description="Bytes queued for one client that does not read. Past it the client is "
        "closed with 1013 and resyncs on reconnect: memory stays bounded, nothing is skipped.",
    )
    client_updates_per_second: float = Field(
        50_000,
        description="Sustained update messages read from one client; faster senders are "
        "throttled (the server reads more slowly), never disconnected. High enough for a "
        "client replaying a 260k-edit session at full speed.",
    )
    client_bytes_per_second: float = Field(
        16 * MIB, description="Sustained bytes read from one client, throttled the same way."
    )
    client_burst_seconds: float = Field(
        2.0, description="How many seconds of the sustained rates a client may send at once."
    )
    awareness_interval_seconds: float = Field(
        0.05,
        description="At most one awareness relay per client per interval: a flood of cursor "
        "updates is coalesced to the latest state (20 per second by default).",
    )
    sync_requests_per_minute: int = Field(
        30,
        description="Sync step 1 messages one client may send per minute (each makes the "
        "server encode the document; clients send one per connection). Past it: close 4429.",
    )
    ws_per_message_deflate: bool = Field(
        False,
        description="permessage-deflate roughly doubles server CPU for streams of tiny updates "
        "(most frames are under 40 bytes); enable it for slow links with large documents.",
    )
    ws_ping_interval: float = Field(20.0, description="Seconds between WebSocket pings.")
    ws_ping_timeout: float = Field(
        120.0,
        description="Seconds a client may take to answer a ping. uvicorn's 20 s default "
        "closed clients that were busy applying a large backlog (1011).",
    )
    shutdown_drain_seconds: float = Field(
        10.0,
        description="On shutdown, how long to keep retrying the commit of what clients sent "
        "before exiting anyway (the database is down); those clients resend on reconnect.",
    )
    committed_read_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a REST read of a loaded room (content, autocomplete) waits for "
        "the commit in flight, so that it returns only committed text; past it: 503 (the "
        "database is down).",
    )
    commit_interval_seconds: float = Field(
        0.0,
        ge=0,
        description="Time from the end of one group commit to the start of the next, to the "
        "event loop's timer resolution (a millisecond). An update after a quiet moment is "
        "committed at once; a steady stream of them (many rooms typing) is gathered for this "
        "long, so one commit carries several keystrokes: less CPU per keystroke for up to this "
        "much more latency. 0: commit as soon as the previous commit ends.",
    )
    commit_retry_max_seconds: float = Field(
        5.0, description="Longest pause between retries of a failed commit (database down)."
    )
    compact_after_updates: int = Field(
        10_000,
        description="Compact a loaded room once its log holds this many rows: a join then "
        "replays at most ~10k small updates on top of the snapshot (tens of milliseconds).",
    )
    compact_after_bytes: int = Field(
        4 * MIB, description="Or once its log rows add up to this many bytes (large pastes)."
    )
    compact_on_unload: bool = Field(
        True,
        description="Compact a room when its last client leaves, so the next open loads one "
        "snapshot instead of replaying the session.",
    )
    web_dist: Path = Field(
        Path(__file__).parent / "web_dist", description="Built web client served at `/`."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` for people, `json` for log collectors (one object a line)."
    )
