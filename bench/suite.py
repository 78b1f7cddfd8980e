"""Our server side by side with the servers users would pick instead (issue #7), on one machine
in one run: the reference y-websocket server (`@y/websocket-server`, in memory), Hocuspocus,
and plain pycrdt-websocket, every one started by the suite on loopback.

    .venv/bin/python -m bench.suite                      # everything; writes docs/benchmarks.md
    .venv/bin/python -m bench.suite --smoke              # seconds, SQLite for ours, no docs
    .venv/bin/python -m bench.suite --only replay --servers ours,reference

Scenarios (each reports ratios to the reference server measured in the same run):

- replay: one writer replays the automerge-paper trace as fast as it can, one and five
  observers, the writer at most 10k edits ahead of the slowest observer or unthrottled;
  time until every observer holds the final text, server CPU, peak memory.
- fanout: R rooms of C clients typing at human speed at random positions; relay latency from
  the keystroke to the other clients' documents; every room converges at the end.
- join: 100 clients join a room holding the automerge-paper document at once.
- cold: ours loads a room from the database for its first client, before and after
  compaction; the in-memory peers can only offer a room they still hold.
- idle: memory per loaded room and per idle connection.

The clients are Node processes (`bench/peers/clients.mjs`): the stock y-websocket provider for
every server speaking its protocol, HocuspocusProvider for Hocuspocus.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.client import join, wait_until_loaded
from bench.common import DEFAULT_POSTGRES_URL, environment, failed_runs, median, publish, ratio
from bench.compaction import CREDITS, LICENCE, SERVER_ENV, duration
from bench.harness import Role, Workload, build_workload, client_config, read_updates
from bench.servers import (
    NODE_PACKAGES,
    REFERENCE,
    SERVERS,
    BenchServer,
    node_versions,
    process_cpu,
    start,
)
from crdt_store import Store, compact_room
from tests.support.traces import TRACES

TRACE = "automerge-paper"
SCENARIOS = ("replay", "fanout", "join", "cold", "idle")
#: The scenarios run in rounds (`Sizes.rounds`); cold opens take the median of their repeats.
ROUNDED = ("replay", "fanout", "join")
#: Updates per `Store.append_updates` call when the cold-open room's log is written.
INGEST_BATCH = 1000
MB = 1024 * 1024


@dataclass(frozen=True)
class ReplayVariant:
    observers: int
    #: The writer at most `Sizes.max_lead` edits ahead of the slowest observer, or free.
    throttled: bool
    #: Only the first `edits` of the workload's trace (None: all of it).
    edits: int | None = None
    #: The servers that run it (None: every one of the run).
    servers: frozenset[str] | None = None

    def describe(self, max_lead: int) -> str:
        lead = f"at most {max_lead:,} edits ahead" if self.throttled else "unthrottled"
        observers = f"{self.observers} observer{'s' if self.observers > 1 else ''}"
        part = f", first {self.edits:,} edits" if self.edits else ""
        return f"{observers}, writer {lead}{part}"


#: The whole trace for ours and the reference (what the targets compare); the slower peers
#: replay the first 50,000 edits, beside both again: a full run stays within minutes.
_CORE = frozenset({"ours", "reference"})
FULL_REPLAY = (
    ReplayVariant(1, True, servers=_CORE),
    ReplayVariant(1, False, servers=_CORE),
    ReplayVariant(5, True, servers=_CORE),
    ReplayVariant(5, False, servers=_CORE),
    ReplayVariant(1, True, edits=50_000),
    ReplayVariant(5, False, edits=50_000),
)
SMOKE_REPLAY = (ReplayVariant(1, True), ReplayVariant(2, False))


@dataclass(frozen=True)
class Typing:
    """A fan-out load: `rooms` x `clients` typists, each at a rate drawn from `rate`
    (keystrokes per second) for `seconds`, or until `keystrokes` each."""

    rooms: int
    clients: int
    seconds: float
    rate: tuple[float, float]
    keystrokes: int | None = None

    @property
    def max_keystrokes(self) -> int:
        """Keystrokes of each client at most (the size of its table of keystroke times)."""
        return self.keystrokes or int(self.seconds * self.rate[1] * 2) + 16


@dataclass(frozen=True)
class Sizes:
    """How big each scenario runs: the full suite, or the smoke version CI runs."""

    trace_limit: int | None
    replay: tuple[ReplayVariant, ...]
    max_lead: int
    #: (rooms, clients per room)
    fanout: tuple[tuple[int, int], ...]
    fanout_seconds: float
    #: Rounds of the replay, fan-out and join storm, each running every server once in turn:
    #: single runs on shared cores moved ratios by ±0.1 to ±0.4 (a replay took 4.3 s alone and
    #: 8.2 s in a suite run), so the report gives each figure's median over the rounds.
    rounds: int
    #: keystrokes per second of each typist, drawn between these
    typing_rate: tuple[float, float]
    storm: int
    cold_repeats: int
    idle_rooms: int
    idle_connections: int
    timeout: float
    #: A fresh server for each scenario (memory figures of their own), or one for all.
    fresh: bool = True
    #: Quiet before reading a server's resident memory.
    settle: float = 1.0


FULL = Sizes(None, FULL_REPLAY, 10_000, ((20, 5), (100, 5)), 10, 3, (5, 10), 100, 5, 100, 500, 300)
SMOKE = Sizes(2_000, SMOKE_REPLAY, 300, ((2, 2),), 2, 2, (5, 10), 5, 1, 3, 5, 60, False, 0.2)


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    cpu: float
    #: The part of `cpu` spent in the kernel (`Usage.system`).
    system: float
    #: Of the PostgreSQL backends (and Redis) serving ours: `Usage.services_cpu`.
    services_cpu: float
    peak: int


@dataclass(frozen=True)
class Replay:
    converged: bool
    seconds: float
    edits: int
    cost: Cost
    #: How often the writer waited for the observers (the throttle engaged).
    waits: int


@dataclass(frozen=True)
class Fanout:
    rooms: int
    converged: int
    keystrokes: int
    latencies: list[float]
    #: The latencies between clients of different server processes (none of one process).
    cross_latencies: list[float]
    #: From the last keystroke until every room held the same text.
    settle_seconds: float
    #: From the start of the typing until every room held the same text.
    seconds: float
    cost: Cost
    #: CPU seconds of the client processes meanwhile (they share the machine's cores).
    client_cpu: float


@dataclass(frozen=True)
class Storm:
    complete: int
    count: int
    seconds: float
    median_seconds: float
    cost: Cost


@dataclass(frozen=True)
class ColdOpen:
    #: Connect to synced, room not loaded (ours) or held in memory (the peers).
    before: list[float]
    after: list[float]
    matched: bool


@dataclass(frozen=True)
class Idle:
    per_room: float
    per_connection: float
    baseline: int


@dataclass
class Results:
    sizes: Sizes
    servers: list[str]
    #: Per variant or size, per server, its runs (one a round).
    replay: dict[ReplayVariant, dict[str, list[Replay]]] = field(default_factory=dict)
    fanout: dict[tuple[int, int], dict[str, list[Fanout]]] = field(default_factory=dict)
    storm: dict[str, list[Storm]] = field(default_factory=dict)
    cold: dict[str, ColdOpen] = field(default_factory=dict)
    idle: dict[str, Idle] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- scenarios ------------------------------------------------------------------------------


class Measure:
    """Server cost over a block: CPU (and its database's) and the peak memory meanwhile."""

    def __init__(self, server: BenchServer) -> None:
        self.server = server
        server.reset_peak()
        self._before = server.usage()

    def cost(self) -> Cost:
        spent = self.server.usage() - self._before
        return Cost(spent.cpu, spent.system, spent.services_cpu, spent.peak)


async def replay(
    server: BenchServer, work: Workload, sizes: Sizes, variant: ReplayVariant, round_: int
) -> Replay:
    """One writer replays the trace; `variant.observers` clients wait for its final text."""
    observers, throttled = variant.observers, variant.throttled
    room = await server.room(f"replay-{observers}-{throttled}-{variant.edits}-round-{round_}")
    timeout = sizes.timeout
    base = {
        "trace": str(work.trace),
        "limit": variant.edits,
        "room": room,
        "timeoutMs": timeout * 1e3,
    }
    async with AsyncExitStack() as stack:
        # One at a time: an empty room's first joins race on pycrdt-websocket (see joinRooms).
        watchers = []
        for _ in range(observers):
            config = client_config(server, "observer", **base)
            watchers.append(await stack.enter_async_context(Role.spawn(config)))
            await watchers[-1].event("ready", timeout)
        lead = sizes.max_lead if throttled else None
        writer = await stack.enter_async_context(
            Role.spawn(client_config(server, "writer", maxLead=lead, **base))
        )
        await writer.event("ready", timeout)
        clocks = [0] * observers

        def relay(index: int) -> Callable[[dict[str, Any]], None]:
            def progress(event: dict[str, Any]) -> None:
                clocks[index] = event["clock"]
                writer.command("observed", clock=min(clocks))

            return progress

        for index, watcher in enumerate(watchers):
            watcher.on_progress = relay(index)
        measure = Measure(server)
        writer.command("start")
        wrote, *seen = await asyncio.gather(
            writer.event("done", timeout), *(w.event("done", timeout) for w in watchers)
        )
        cost = measure.cost()
    done = [event["doneAt"] for event in seen]
    converged = all(at is not None for at in done)
    seconds = (max(done) - wrote["startedAt"]) / 1e3 if converged else float("nan")
    return Replay(converged, seconds, wrote["edits"], cost, wrote["waits"])


async def fanout(
    server: BenchServer, load: Typing, within: float, seed: int = 7, round_: int = 0
) -> Fanout:
    """`load.rooms` x `load.clients` typists (spread over the server's processes); latency from
    each keystroke to each other client's doc. Each `round_` types into rooms of its own (the
    peers name rooms by what clients join)."""
    rooms, clients = load.rooms, load.clients
    name = f"fanout-{rooms}x{clients}-{load.rate[1]:g}-round-{round_}"
    ids = [await server.room(f"{name}-{i}") for i in range(rooms)]
    # Two client processes for many rooms: a room's clients share one, so keystroke and
    # arrival times come from one clock.
    groups = [ids[i::2] for i in range(2)] if rooms >= 10 else [ids]
    low, high = load.rate
    config = {
        "clientsPerRoom": clients,
        "seconds": load.seconds,
        "minRate": low,
        "maxRate": high,
        "maxKeystrokes": load.max_keystrokes,
        "timeoutMs": within * 1e3,
    }
    async with AsyncExitStack() as stack:
        roles = [
            await stack.enter_async_context(
                Role.spawn(client_config(server, "typists", rooms=group, seed=seed + i, **config))
            )
            for i, group in enumerate(groups)
        ]
        for role in roles:
            await role.event("ready", within)
        measure = Measure(server)
        clients_before = sum(process_cpu(role.pid) for role in roles)
        for role in roles:
            role.command("start")
        done = await asyncio.gather(*(role.event("done", load.seconds + within) for role in roles))
        cost = measure.cost()
        client_cpu = sum(process_cpu(role.pid) for role in roles) - clients_before
    converged_at = max(d["convergedAt"] for d in done)
    return Fanout(
        rooms=rooms,
        converged=sum(d["converged"] for d in done),
        keystrokes=sum(d["keystrokes"] for d in done),
        latencies=sorted(ms for d in done for ms in d["latencies"]),
        cross_latencies=sorted(ms for d in done for ms in d["crossLatencies"]),
        settle_seconds=(converged_at - max(d["typedAt"] for d in done)) / 1e3,
        seconds=(converged_at - min(d["startedAt"] for d in done)) / 1e3,
        cost=cost,
        client_cpu=client_cpu,
    )


async def seeded(
    stack: AsyncExitStack, server: BenchServer, work: Workload, name: str, within: float
) -> str:
    """A room holding the trace's final document (one update), kept loaded by its seeder."""
    room = await server.room(name)
    seeder = await stack.enter_async_context(
        Role.spawn(
            client_config(
                server, "seed", room=room, document=str(work.document), timeoutMs=within * 1e3
            )
        )
    )
    await seeder.event("ready", within)
    return room


async def storm(server: BenchServer, work: Workload, sizes: Sizes, round_: int) -> Storm:
    """`sizes.storm` clients join the room holding the document, all at once."""
    timeout = sizes.timeout
    async with AsyncExitStack() as stack:
        room = await seeded(stack, server, work, f"storm-round-{round_}", timeout)
        halves = [sizes.storm - sizes.storm // 2, sizes.storm // 2]
        roles = [
            await stack.enter_async_context(
                Role.spawn(
                    client_config(
                        server,
                        "storm",
                        room=room,
                        count=count,
                        expectedLength=len(work.text),
                        timeoutMs=timeout * 1e3,
                    )
                )
            )
            for count in halves
            if count
        ]
        for role in roles:
            await role.event("ready", timeout)
        measure = Measure(server)
        for role in roles:
            role.command("start")
        done = await asyncio.gather(*(role.event("done", timeout) for role in roles))
        cost = measure.cost()
    started = min(d["startedAt"] for d in done)
    synced = [(at - started) / 1e3 for d in done for at in d["syncedAt"]]
    return Storm(sum(d["complete"] for d in done), sizes.storm, max(synced), median(synced), cost)


async def first_joins(
    server: BenchServer, room: str, repeats: int, expected: str, *, cold: bool
) -> tuple[list[float], bool]:
    """Connect → synced of a fresh client (`bench.client.join`), `repeats` times; cold: each
    after the server unloaded the room."""
    seconds, matched = [], True
    for _ in range(repeats):
        if cold:
            assert server.http_url is not None
            await wait_until_loaded(server.http_url, 0)
        joined = await join(server.url, room)
        seconds.append(joined.seconds)
        matched = matched and joined.text() == expected
    return seconds, matched


async def cold_open(server: BenchServer, work: Workload, sizes: Sizes) -> ColdOpen:
    """Ours: the session's log written to the database, cold joins; compacted, cold joins.
    The in-memory peers: joins of a room they hold (the best they offer; gone on restart)."""
    if server.database_url is None:
        async with AsyncExitStack() as stack:
            room = await seeded(stack, server, work, "cold", sizes.timeout)
            before, matched = await first_joins(
                server, room, sizes.cold_repeats, work.text, cold=False
            )
        return ColdOpen(before, [], matched)
    store = Store.connect(server.database_url)
    try:
        room = await server.room("cold")
        updates = read_updates(work.updates)
        for offset in range(0, len(updates), INGEST_BATCH):
            await store.append_updates(room, updates[offset : offset + INGEST_BATCH])
        before, matched_before = await first_joins(
            server, room, sizes.cold_repeats, work.text, cold=True
        )
        await wait_until_loaded(server.http_url, 0)
        result = await compact_room(store, room)
        if not result.compacted:
            raise RuntimeError(f"the cold-open room was not compacted: {result.skipped}")
        after, matched_after = await first_joins(
            server, room, sizes.cold_repeats, work.text, cold=True
        )
    finally:
        await store.close()
    return ColdOpen(before, after, matched_before and matched_after)


async def idle(server: BenchServer, sizes: Sizes) -> Idle:
    """RSS growth for loaded rooms (one client, 1,000 characters each), then for idle
    connections to one more room."""
    timeout = sizes.timeout

    def config(rooms: list[str], clients: int) -> dict[str, Any]:
        return client_config(
            server,
            "idle",
            rooms=rooms,
            clientsPerRoom=clients,
            textLength=1000,
            timeoutMs=timeout * 1e3,
        )

    async def settled_rss() -> int:
        await asyncio.sleep(sizes.settle)  # let the joins' buffers go
        return server.usage().rss

    rooms = [await server.room(f"idle-{i}") for i in range(sizes.idle_rooms)]
    crowd = await server.room("idle-crowd")
    baseline = await settled_rss()
    async with Role.spawn(config(rooms, 1)) as loaded:
        await loaded.event("ready", timeout)
        with_rooms = await settled_rss()
        async with Role.spawn(config([crowd], sizes.idle_connections)) as connections:
            await connections.event("ready", timeout)
            with_connections = await settled_rss()
    return Idle(
        (with_rooms - baseline) / sizes.idle_rooms,
        (with_connections - with_rooms) / sizes.idle_connections,
        baseline,
    )


# -- the run --------------------------------------------------------------------------------


async def attempt(failures: list[str], what: str, run: Awaitable[Any]) -> Any:
    """Run one measurement; a failure is recorded in `failures` and reported, the run goes on."""
    try:
        return await run
    except Exception as error:  # any failure of a run is a result to report
        first_line = str(error).splitlines()[0] if str(error) else ""
        failures.append(f"{what}: {type(error).__name__}: {first_line}")
        print(f"FAILED {what}: {error}", file=sys.stderr)
        return None


async def run(options: argparse.Namespace) -> tuple[Results, Workload]:
    sizes: Sizes = options.sizes
    results = Results(sizes, options.servers)
    started = time.perf_counter()
    kept: dict[tuple[str, bool], BenchServer] = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as directory, ExitStack() as stack:
        trace = TRACES / f"{TRACE}.json.gz"
        work = await build_workload(trace, sizes.trace_limit, Path(directory))
        for scenario in options.only:
            rounds = sizes.rounds if scenario in ROUNDED else 1
            for round_, name in itertools.product(range(rounds), options.servers):
                if scenario == "cold" and name == "hocuspocus":
                    continue  # bench.client speaks y-websocket only; see cold_section
                if SERVERS[name].scenarios is not None and scenario not in SERVERS[name].scenarios:
                    continue
                elapsed = time.perf_counter() - started
                print(f"{elapsed:6.1f} s  {scenario}: {name}", file=sys.stderr)
                # Cold opens need a server that compacts only when told to.
                quiet = scenario == "cold" and SERVERS[name].database is not None
                starting = start(
                    name, postgres_url=options.database_url, env=SERVER_ENV if quiet else None
                )
                if sizes.fresh:  # one server process for this scenario alone
                    with starting as server:
                        await run_scenario(scenario, server, work, results, round_)
                else:
                    if (name, quiet) not in kept:
                        kept[name, quiet] = stack.enter_context(starting)
                    server = kept[name, quiet]
                    await run_scenario(scenario, server, work, results, round_)
                if server.killed and server.killed not in results.failures:
                    results.failures.append(server.killed)
    results.seconds = time.perf_counter() - started
    return results, work


async def run_scenario(
    scenario: str, server: BenchServer, work: Workload, r: Results, round_: int
) -> None:
    sizes, name = r.sizes, server.spec.name
    if scenario == "replay":
        for variant in sizes.replay:
            if variant.servers is not None and name not in variant.servers:
                continue
            what = f"replay ({variant.describe(sizes.max_lead)}) on {name}"
            replayed = replay(server, work, sizes, variant, round_)
            if found := await attempt(r.failures, what, replayed):
                r.replay.setdefault(variant, {}).setdefault(name, []).append(found)
    elif scenario == "fanout":
        for rooms, clients in sizes.fanout:
            load = Typing(rooms, clients, sizes.fanout_seconds, sizes.typing_rate)
            what = f"fanout {rooms}x{clients} on {name}"
            typed = fanout(server, load, sizes.timeout, round_=round_)
            if found := await attempt(r.failures, what, typed):
                r.fanout.setdefault((rooms, clients), {}).setdefault(name, []).append(found)
    elif scenario == "join":
        joined = storm(server, work, sizes, round_)
        if found := await attempt(r.failures, f"join storm on {name}", joined):
            r.storm.setdefault(name, []).append(found)
    elif scenario == "cold":
        if found := await attempt(
            r.failures, f"cold open on {name}", cold_open(server, work, sizes)
        ):
            r.cold[name] = found
    elif scenario == "idle" and (
        found := await attempt(r.failures, f"idle on {name}", idle(server, sizes))
    ):
        r.idle[name] = found


# -- the report -----------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def label(name: str) -> str:
    return SERVERS[name].label


def per_update_us(seconds: float, count: int) -> float:
    return seconds / count * 1e6 if count else float("nan")


def micro(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f} µs"


def megabytes(value: float) -> str:
    return f"{value / MB:.1f} MB"


def kilobytes(value: float) -> str:
    return f"{value / 1024:.1f} KB"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f} ms"


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def with_database(cost: Cost) -> float:
    return cost.cpu + cost.services_cpu


@dataclass(frozen=True)
class UnitCost:
    """Server CPU per unit of work (an update, a keystroke), in µs."""

    cpu: float
    #: Of `cpu`, in the kernel.
    system: float
    #: With its PostgreSQL backends' (and Redis's) CPU; None for a server that stores nothing.
    both: float | None

    @classmethod
    def of(cls, cost: Cost, count: int) -> UnitCost:
        both = per_update_us(with_database(cost), count) if cost.services_cpu else None
        return cls(per_update_us(cost.cpu, count), per_update_us(cost.system, count), both)

    @classmethod
    def median_of(cls, costs: Sequence[UnitCost]) -> UnitCost:
        boths = [c.both for c in costs if c.both is not None]
        return cls(
            median([c.cpu for c in costs]),
            median([c.system for c in costs]),
            median(boths) if boths else None,
        )


def cpu_cells(unit: UnitCost, reference: UnitCost | None) -> list[str]:
    """Server CPU per unit of work, alone and with its PostgreSQL backends', each against the
    reference server's (`cpu_headers`)."""
    ref_cpu = reference.cpu if reference else float("nan")
    if unit.both is None:
        return [micro(unit.cpu), ratio(unit.cpu, ref_cpu), "-", "-"]
    return [micro(unit.cpu), ratio(unit.cpu, ref_cpu), micro(unit.both), ratio(unit.both, ref_cpu)]


def cpu_headers(unit: str) -> list[str]:
    return [f"CPU per {unit}", "vs reference", "with PostgreSQL CPU", "vs reference"]


Run = TypeVar("Run", Replay, Fanout, Storm)


@dataclass(frozen=True)
class Rounds(Generic[Run]):
    """A server's runs of one measurement, one a round."""

    runs: Sequence[Run]

    def median(self, figure: Callable[[Run], float]) -> float:
        return median([figure(run) for run in self.runs])

    @property
    def cpu(self) -> float:
        return self.median(lambda run: run.cost.cpu)

    @property
    def peak(self) -> int:
        return max(run.cost.peak for run in self.runs)


class ReplaySummary(Rounds[Replay]):
    """Each figure the median over the rounds (the time over the runs that converged)."""

    @property
    def converged(self) -> str:
        done = sum(run.converged for run in self.runs)
        return yes(True) if done == len(self.runs) else f"**{done}/{len(self.runs)}**"

    @property
    def seconds(self) -> float:
        return median([run.seconds for run in self.runs if run.converged])

    @property
    def edits(self) -> int:
        return self.runs[0].edits

    @property
    def unit(self) -> UnitCost:
        return UnitCost.median_of([UnitCost.of(run.cost, run.edits) for run in self.runs])


def replay_section(r: Results) -> list[str]:
    lines = ["### Trace replay", "", *rounds_line(r)]
    for variant, runs in r.replay.items():
        summaries = {name: ReplaySummary(server_runs) for name, server_runs in runs.items()}
        ref = summaries.get(REFERENCE)
        lines += [variant.describe(r.sizes.max_lead) + ":", ""]
        rows = []
        for name, run in summaries.items():
            rows.append(
                [
                    label(name),
                    run.converged,
                    duration(run.seconds),
                    ratio(run.seconds, ref.seconds) if ref else "n/a",
                    f"{run.edits / run.seconds:,.0f}" if run.seconds == run.seconds else "n/a",
                    f"{run.cpu:.2f} s",
                    *cpu_cells(run.unit, ref.unit if ref else None),
                    megabytes(run.peak),
                ]
            )
        lines += table(
            [
                "server",
                "converged",
                "time to final text everywhere",
                "vs reference",
                "updates/s",
                "server CPU",
                *cpu_headers("update"),
                "peak memory",
            ],
            rows,
        )
    return lines


def rounds_line(r: Results, summed: str = "") -> list[str]:
    """How a section's figures come from the rounds (`summed`: what is summed instead)."""
    if r.sizes.rounds == 1:
        return []
    line = (
        f"{r.sizes.rounds} rounds, each running every server once in turn; each figure is the "
        "median of the rounds"
    )
    return [f"{line}, {summed}." if summed else f"{line}.", ""]


class FanoutSummary(Rounds[Fanout]):
    """Each figure the median over the rounds (the keystrokes and rooms converged summed)."""

    @property
    def converged(self) -> str:
        return f"{sum(run.converged for run in self.runs)}/{sum(run.rooms for run in self.runs)}"

    @property
    def keystrokes(self) -> int:
        return sum(run.keystrokes for run in self.runs)

    def latency(self, fraction: float) -> float:
        return median(self.latencies(fraction))

    def latencies(self, fraction: float) -> list[float]:
        """The latency at `fraction` (0.99: the p99) of each round."""
        return [percentile(run.latencies, fraction) for run in self.runs]

    @property
    def unit(self) -> UnitCost:
        return UnitCost.median_of([UnitCost.of(run.cost, run.keystrokes) for run in self.runs])


def fanout_section(r: Results) -> list[str]:
    low, high = r.sizes.typing_rate
    lines = [
        "### Fan-out",
        "",
        f"Every client types one character at a random position every {1 / high:.2g} to "
        f"{1 / low:.2g} s for {r.sizes.fanout_seconds:g} s; latency from the keystroke to its "
        "arrival in each other client's document of the room.",
        "",
        *rounds_line(r, "keystrokes and rooms are summed, and the p99 of each round is shown"),
    ]
    for (rooms, clients), runs in r.fanout.items():
        summaries = {name: FanoutSummary(server_runs) for name, server_runs in runs.items()}
        ref = summaries.get(REFERENCE)
        lines += [f"{rooms} rooms x {clients} clients:", ""]
        rows = []
        for name, summary in summaries.items():
            p99 = summary.latency(0.99)
            rows.append(
                [
                    label(name),
                    summary.converged,
                    f"{summary.keystrokes:,}",
                    ms(summary.latency(0.5)),
                    ms(p99),
                    ", ".join(f"{value:.1f}" for value in summary.latencies(0.99)),
                    ratio(p99, ref.latency(0.99)) if ref else "n/a",
                    ms(summary.latency(1.0)),
                    *cpu_cells(summary.unit, ref.unit if ref else None),
                    micro(summary.unit.system),
                    megabytes(summary.peak),
                ]
            )
        lines += table(
            [
                "server",
                "rooms converged",
                "keystrokes",
                "relay p50",
                "relay p99",
                "p99 of each round (ms)",
                "p99 vs reference",
                "max",
                *cpu_headers("keystroke"),
                "of it in the kernel",
                "peak memory",
            ],
            rows,
        )
    return lines


class StormSummary(Rounds[Storm]):
    """Each figure the median over the rounds (the clients summed)."""

    @property
    def complete(self) -> str:
        return f"{sum(run.complete for run in self.runs)}/{sum(run.count for run in self.runs)}"

    @property
    def seconds(self) -> float:
        return self.median(lambda run: run.seconds)

    @property
    def median_seconds(self) -> float:
        return self.median(lambda run: run.median_seconds)


def storm_section(r: Results) -> list[str]:
    if not r.storm:
        return []
    summaries = {name: StormSummary(runs) for name, runs in r.storm.items()}
    ref = summaries.get(REFERENCE)
    rows = [
        [
            label(name),
            run.complete,
            duration(run.seconds),
            ratio(run.seconds, ref.seconds) if ref else "n/a",
            duration(run.median_seconds),
            f"{run.cpu:.2f} s",
            megabytes(run.peak),
        ]
        for name, run in summaries.items()
    ]
    return [
        "### Join storm",
        "",
        f"{r.sizes.storm} clients join at once a room holding the trace's final document "
        "(put there as one update by a client that stays connected).",
        "",
        *rounds_line(r, "clients are summed"),
        *table(
            [
                "server",
                "clients with the whole text",
                "until all synced",
                "vs reference",
                "median client",
                "server CPU",
                "peak memory",
            ],
            rows,
        ),
    ]


def cold_section(r: Results, work: Workload) -> list[str]:
    if not r.cold:
        return []
    rows = []
    for name, run in r.cold.items():
        if SERVERS[name].database is None:
            rows.append(
                [
                    label(name) + ", room held in memory",
                    "-",
                    duration(median(run.before)),
                    "-",
                    yes(run.matched),
                ]
            )
        else:
            rows.append(
                [
                    label(name),
                    duration(median(run.before)),
                    duration(median(run.after)),
                    ratio(median(run.after), median(run.before)),
                    yes(run.matched),
                ]
            )
    return [
        "### Cold open",
        "",
        f"First client, connect → synced (median of {r.sizes.cold_repeats}): ours with the room "
        f"not loaded, its log the session's {work.edits:,} updates, then compacted into one "
        "snapshot. The in-memory peers cannot open a room from storage: the best they offer is "
        "a room they still hold, measured the same way (Hocuspocus is left out: the Python "
        "client speaks the y-websocket protocol only).",
        "",
        *table(["server", "log, not compacted", "compacted", "after/before", "text matched"], rows),
    ]


def idle_section(r: Results) -> list[str]:
    if not r.idle:
        return []
    ref = r.idle.get(REFERENCE)
    rows = [
        [
            label(name),
            megabytes(run.baseline),
            kilobytes(run.per_room),
            ratio(run.per_room, ref.per_room) if ref else "n/a",
            kilobytes(run.per_connection),
            ratio(run.per_connection, ref.per_connection) if ref else "n/a",
        ]
        for name, run in r.idle.items()
    ]
    return [
        "### Idle capacity",
        "",
        f"Resident memory growth: {r.sizes.idle_rooms} rooms of one client and 1,000 "
        f"characters each, then {r.sizes.idle_connections} idle clients of one more room.",
        "",
        *table(
            [
                "server",
                "RSS at start",
                "per loaded room",
                "vs reference",
                "per idle connection",
                "vs reference",
            ],
            rows,
        ),
    ]


def targets_section(r: Results) -> list[str]:
    """The issue's targets against what ours (on PostgreSQL) measured in this run."""
    rows: list[list[str]] = []

    def target(what: str, value: float, limit: float, shown: str) -> None:
        rows.append([what, shown, yes(value <= limit) if value == value else "n/a"])

    for replayed, runs in r.replay.items():
        ours = ReplaySummary(runs["ours"]) if "ours" in runs else None
        ref = ReplaySummary(runs[REFERENCE]) if REFERENCE in runs else None
        variant = f"replay ({replayed.describe(r.sizes.max_lead)})"
        if ours and not replayed.throttled:
            rows.append([f"{variant}: converges", "", ours.converged])
        if not (ours and ref and ours.unit.both is not None):
            continue
        cpu = ours.unit.cpu / ref.unit.cpu
        both = ours.unit.both / ref.unit.cpu
        target(f"{variant}: server CPU ≤ 0.5x the reference", cpu, 0.5, f"{cpu:.2f}x")
        target(f"{variant}: with PostgreSQL ≤ 0.8x the reference", both, 0.8, f"{both:.2f}x")
        conv = ours.seconds / ref.seconds
        target(f"{variant}: convergence ≤ 0.9x the reference", conv, 0.9, f"{conv:.2f}x")
    for (rooms, clients), sized in r.fanout.items():
        typed = FanoutSummary(sized["ours"]) if "ours" in sized else None
        typed_ref = FanoutSummary(sized[REFERENCE]) if REFERENCE in sized else None
        variant = f"fan-out {rooms} x {clients}"
        if typed and typed_ref and typed.unit.both is not None:
            cpu = typed.unit.cpu / typed_ref.unit.cpu
            both = typed.unit.both / typed_ref.unit.cpu
            target(f"{variant}: server CPU ≤ 0.5x the reference", cpu, 0.5, f"{cpu:.2f}x")
            target(f"{variant}: with PostgreSQL ≤ 0.8x the reference", both, 0.8, f"{both:.2f}x")
        limit = {(20, 5): 5.0, (100, 5): 20.0}.get((rooms, clients))
        if typed and limit:
            p99 = typed.latency(0.99)
            target(f"{variant}: relay p99 ≤ {limit:g} ms", p99, limit, ms(p99))
    if (cold := r.cold.get("ours")) and cold.after:
        after = median(cold.after) * 1e3
        target("cold open, compacted: ≤ 50 ms", after, 50, ms(after))
    if "ours" in r.storm and REFERENCE in r.storm:
        ours_storm, ref_storm = (StormSummary(r.storm[n]).seconds for n in ("ours", REFERENCE))
        target(
            "join storm: no slower than the reference",
            ours_storm / ref_storm,
            1.0,
            ratio(ours_storm, ref_storm),
        )
    if not rows:
        return []
    return [
        "### Targets (issue #7), ours on PostgreSQL",
        "",
        *table(["target", "measured", "met"], rows),
    ]


def render(r: Results, work: Workload, env: dict[str, str], command: str) -> str:
    versions = node_versions()
    packages = ", ".join(f"{p} {versions[p]}" for p in NODE_PACKAGES)
    trace = f"the first {work.edits:,} edits of " if r.sizes.trace_limit else ""
    lines = [
        f"Measured {env['date']} with `{command}` at {env['revision']}, on {env['machine']}; "
        f"Python {env['python']}, pycrdt {env['pycrdt']}, pycrdt-websocket "
        f"{version('pycrdt-websocket')}, uvicorn {version('uvicorn')}, {env['database']}; "
        f"Node {versions['node']}, {packages}. Whole run {duration(r.seconds)}. On a shared "
        "machine: compare ratios, not seconds.",
        "",
        f"Servers: {', '.join(label(name) for name in r.servers)}, each started fresh for "
        "each scenario (and round) on loopback; ours with its defaults (log level WARNING), "
        "the peers as their documentation starts them, in memory. Workload: "
        f"{trace}the `{TRACE}` editing trace ({len(work.text):,} characters at the end), by "
        f"{CREDITS[TRACE]}, from [josephg/editing-traces]"
        f"(https://github.com/josephg/editing-traces), licensed [CC BY 4.0]({LICENCE}).",
        "",
        *targets_section(r),
        *replay_section(r),
        *fanout_section(r),
        *storm_section(r),
        *cold_section(r, work),
        *idle_section(r),
    ]
    return "\n".join([*lines, *failed_runs(r.failures)])


READING = """\
How to read these:

- *vs reference*: the figure over the reference server's in the same run (`bench.common.ratio`);
  below 1x is better for times, CPU and memory.
- *server CPU*: user + system seconds of the server process (`/proc/<pid>/stat`, threads and
  waited-for children included) from the start of the scenario's load to its end. *With
  PostgreSQL CPU*: plus the CPU of the PostgreSQL backends connected to our scratch database
  (pids from `pg_stat_activity`, polled every 0.1 s), still over the reference server's CPU
  alone (it stores nothing). WAL writer and checkpointer are not counted. *Of it in the
  kernel*: the system part of the server's CPU (socket reads and writes, wake-ups), a floor
  that no speed-up of the server's own code lowers.
- *CPU per update* (replay): over the trace's edits, each relayed to every observer; *per
  keystroke* (fan-out): over the keystrokes, each relayed to the other clients of its room.
- *peak memory*: VmHWM, reset with `/proc/<pid>/clear_refs` before the load.
- Replay: the writer is a Node y-websocket (or Hocuspocus) client applying one trace edit per
  transaction; the observers report the writer's clock in their state vector every 20 ms and
  the orchestrator relays the slowest to the writer, which waits while it is 10,000 edits
  ahead of it (throttled) or never (unthrottled). The time runs from the first edit until the
  last observer holds the trace's final text.
- Fan-out: each room's clients live in one Node process, so a keystroke's time and its arrival
  are read from one clock; the client processes share the machine's cores with the server.
- Idle: resident memory of the server after the clients joined and 1 s of quiet, minus before.
"""


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; writes no docs")
    parser.add_argument(
        "--only", help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})"
    )
    parser.add_argument("--servers", help=f"comma-separated (default all: {','.join(SERVERS)})")
    parser.add_argument(
        "--database-url",
        help=f"the PostgreSQL server for ours (default {DEFAULT_POSTGRES_URL}); a scratch "
        "database is created there and dropped",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    options = parser.parse_args(argv)
    options.sizes = SMOKE if options.smoke else FULL
    only = options.only.split(",") if options.only else list(SCENARIOS)
    # The smoke run needs no PostgreSQL: ours runs on SQLite there.
    default_servers = [
        n for n in SERVERS if not (options.smoke and SERVERS[n].database == "postgres")
    ]
    servers = options.servers.split(",") if options.servers else default_servers
    for name, known in ((only, SCENARIOS), (servers, tuple(SERVERS))):
        if unknown := set(name) - set(known):
            parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    options.only = [s for s in SCENARIOS if s in only]
    options.servers = [s for s in SERVERS if s in servers]
    options.database_url = options.database_url or DEFAULT_POSTGRES_URL
    # Only a whole run replaces the section: a partial one would drop the other figures.
    partial = options.only != list(SCENARIOS) or options.servers != list(SERVERS)
    options.write_docs = not (options.smoke or options.no_docs or partial)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python -m bench.suite {args}".strip()
    uses_postgres = any(SERVERS[name].database == "postgres" for name in options.servers)
    env = environment(options.database_url if uses_postgres else "sqlite")
    results, work = asyncio.run(run(options))
    body = render(results, work, env, command)
    return publish("Servers", body, READING, results.failures, docs=options.write_docs)


if __name__ == "__main__":
    sys.exit(main())
