"""Our server as 1, 2 and 3 processes sharing one PostgreSQL database (issue "Scale out"):
relay latency and throughput with each room's clients spread over the processes, against one
process measured in the same run.

    .venv/bin/python -m bench.scaleout            # everything; writes docs/benchmarks.md
    .venv/bin/python -m bench.scaleout --smoke    # seconds, tiny loads; writes no docs

Each deployment (a number of processes and the fan-out between them: PostgreSQL NOTIFY, or
Redis Streams with COLLAB_REDIS_URL) gets fresh processes on a fresh database and runs two
loads with the suite's fan-out (`bench.suite.fanout`: the typists of `bench/peers/clients.mjs`),
the clients of each room joined to the processes round-robin:

- human speed: R rooms x C clients typing at ~10 keystrokes/s; relay latency from the
  keystroke to the other clients' documents, all of them and between processes only.
- push: clients typing as fast as Node's timers let them, a fixed number of keystrokes each;
  keystrokes/s and relayed updates/s from the first keystroke until every room converged.

Every room must converge: one that did not is a failure, listed under the results (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version

import httpx

from bench.common import DEFAULT_POSTGRES_URL, environment, failed_runs, publish, ratio
from bench.compaction import duration
from bench.servers import BenchServer, node_versions, start
from bench.suite import (
    Cost,
    Fanout,
    Typing,
    attempt,
    fanout,
    micro,
    ms,
    per_update_us,
    percentile,
    table,
    with_database,
)

DEFAULT_REDIS_URL = os.environ.get("COLLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FANOUTS = {"postgresql": "PostgreSQL NOTIFY", "redis": "Redis Streams"}


@dataclass(frozen=True)
class Deployment:
    processes: int
    #: A key of FANOUTS: how the processes tell each other of their commits.
    fanout: str

    def describe(self) -> str:
        plural = "es" if self.processes > 1 else ""
        return f"{self.processes} process{plural}, {FANOUTS[self.fanout]}"


@dataclass(frozen=True)
class Sizes:
    """How big the run is: the full benchmark, or the smoke version the tests run."""

    #: The first is the baseline every ratio is against.
    deployments: tuple[Deployment, ...]
    human: Typing
    push: Typing
    timeout: float


_ALL = tuple(Deployment(n, "postgresql") for n in (1, 2, 3)) + tuple(
    Deployment(n, "redis") for n in (2, 3)
)
FULL = Sizes(
    _ALL,
    human=Typing(rooms=20, clients=5, seconds=10, rate=(10, 10)),
    push=Typing(rooms=10, clients=2, seconds=60, rate=(1000, 1000), keystrokes=1200),
    timeout=120,
)
SMOKE = Sizes(
    (Deployment(1, "postgresql"), Deployment(2, "postgresql"), Deployment(2, "redis")),
    human=Typing(rooms=2, clients=3, seconds=1.5, rate=(10, 10)),
    push=Typing(rooms=2, clients=3, seconds=10, rate=(200, 200), keystrokes=50),
    timeout=60,
)


@dataclass(frozen=True)
class Measured:
    run: Fanout
    #: The processes' own count of log reads meanwhile (`collab_catch_ups_total`): rows their
    #: fan-out did not deliver in time (a gap still open after a wait), or lost.
    catch_ups: int


@dataclass
class Results:
    sizes: Sizes
    human: dict[Deployment, Measured] = field(default_factory=dict)
    push: dict[Deployment, Measured] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- the run --------------------------------------------------------------------------------


async def measure(deployment: Deployment, options: argparse.Namespace, results: Results) -> None:
    """Both loads on fresh processes of `deployment`; a room that did not converge fails."""
    sizes: Sizes = options.sizes
    env = {"COLLAB_REDIS_URL": options.redis_url} if deployment.fanout == "redis" else {}
    with start(
        "ours", postgres_url=options.database_url, env=env, processes=deployment.processes
    ) as server:
        for name, load, found in (
            ("human speed", sizes.human, results.human),
            ("push", sizes.push, results.push),
        ):
            what = f"{name} on {deployment.describe()}"
            before = await catch_ups(server)
            run = await attempt(results.failures, what, fanout(server, load, sizes.timeout))
            if run is None:
                continue
            found[deployment] = Measured(run, await catch_ups(server) - before)
            if run.converged < run.rooms:
                results.failures.append(
                    f"{what}: {run.converged} of {run.rooms} rooms converged "
                    "(every client the same text, as long as the room's keystrokes)"
                )


async def catch_ups(server: BenchServer) -> int:
    """`collab_catch_ups_total` of every process, all reasons."""
    total = 0.0
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for url in server.http_urls:
            response = await client.get(f"{url}/metrics")
            response.raise_for_status()
            total += sum(
                float(line.rsplit(" ", 1)[1])
                for line in response.text.splitlines()
                if line.startswith("collab_catch_ups_total")
            )
    return int(total)


async def run(options: argparse.Namespace) -> Results:
    results = Results(options.sizes)
    started = time.perf_counter()
    for deployment in results.sizes.deployments:
        print(f"{time.perf_counter() - started:6.1f} s  {deployment.describe()}", file=sys.stderr)
        await attempt(
            results.failures, deployment.describe(), measure(deployment, options, results)
        )
    results.seconds = time.perf_counter() - started
    return results


# -- the report -----------------------------------------------------------------------------


def against(value: float, baseline: Fanout | None, of_baseline: float) -> str:
    return ratio(value, of_baseline) if baseline else "n/a"


def cpu_cells(run: Fanout, baseline: Fanout | None) -> list[str]:
    """Server CPU (every process) per keystroke, alone and with PostgreSQL's and Redis's, each
    against the same figure of the baseline; the cores each part kept busy."""

    def per_keystroke(cost: Cost, count: int) -> tuple[float, float]:
        return per_update_us(cost.cpu, count), per_update_us(with_database(cost), count)

    cpu, both = per_keystroke(run.cost, run.keystrokes)
    base_cpu, base_both = (
        per_keystroke(baseline.cost, baseline.keystrokes) if baseline else (0.0, 0.0)
    )
    return [
        micro(cpu),
        against(cpu, baseline, base_cpu),
        micro(both),
        against(both, baseline, base_both),
        cores_cell(run),
    ]


CPU_HEADERS = [
    "CPU per keystroke",
    "vs 1 process",
    "with PostgreSQL (+ Redis)",
    "vs 1 process",
    "cores busy: servers / PostgreSQL (+ Redis) / clients",
]


def cores_cell(run: Fanout) -> str:
    """How much of the machine each part used over the run: the clients share its cores."""
    parts = (run.cost.cpu, run.cost.services_cpu, run.client_cpu)
    return " / ".join(f"{cpu / run.seconds:.2f}" for cpu in parts)


DEPLOYMENT_HEADERS = ["processes", "fan-out", "rooms converged", "keystrokes", "log catch-ups"]


def deployment_cells(deployment: Deployment, measured: Measured) -> list[str]:
    run = measured.run
    return [
        str(deployment.processes),
        FANOUTS[deployment.fanout],
        f"{run.converged}/{run.rooms}",
        f"{run.keystrokes:,}",
        f"{measured.catch_ups:,}",
    ]


def baseline_of(r: Results, runs: dict[Deployment, Measured]) -> Fanout | None:
    """The run every ratio of `runs` is against: the first deployment's (1 process)."""
    measured = runs.get(r.sizes.deployments[0])
    return measured.run if measured else None


def latency_cells(ordered: Sequence[float]) -> list[str]:
    if not ordered:
        return ["-", "-"]
    return [ms(percentile(ordered, 0.5)), ms(percentile(ordered, 0.99))]


def human_section(r: Results) -> list[str]:
    load = r.sizes.human
    baseline = baseline_of(r, r.human)
    base_p99 = percentile(baseline.latencies, 0.99) if baseline else float("nan")
    rows = []
    for deployment, measured in r.human.items():
        run = measured.run
        p99 = percentile(run.latencies, 0.99)
        rows.append(
            [
                *deployment_cells(deployment, measured),
                *latency_cells(run.latencies),
                against(p99, baseline, base_p99),
                *latency_cells(run.cross_latencies),
                ms(run.latencies[-1] if run.latencies else float("nan")),
                *cpu_cells(run, baseline),
            ]
        )
    return [
        "### Human speed",
        "",
        f"{load.rooms} rooms x {load.clients} clients, each typing one character at a random "
        f"position {rate(load)} for {load.seconds:g} s; latency from the keystroke to its "
        "arrival in each other client's document of the room, all of them and only those "
        "between clients of different processes.",
        "",
        *table(
            [
                *DEPLOYMENT_HEADERS,
                "relay p50",
                "relay p99",
                "p99 vs 1 process",
                "across processes p50",
                "across processes p99",
                "max",
                *CPU_HEADERS,
            ],
            rows,
        ),
    ]


def push_section(r: Results) -> list[str]:
    load = r.sizes.push
    baseline = baseline_of(r, r.push)

    def rates(run: Fanout) -> tuple[float, float]:
        return run.keystrokes / run.seconds, len(run.latencies) / run.seconds

    base_keys, base_relayed = rates(baseline) if baseline else (0.0, 0.0)
    rows = []
    for deployment, measured in r.push.items():
        run = measured.run
        keys, relayed = rates(run)
        rows.append(
            [
                *deployment_cells(deployment, measured),
                duration(run.seconds - run.settle_seconds),
                duration(run.seconds),
                f"{keys:,.0f}",
                against(keys, baseline, base_keys),
                f"{relayed:,.0f}",
                against(relayed, baseline, base_relayed),
                *latency_cells(run.latencies),
                *cpu_cells(run, baseline),
            ]
        )
    return [
        "### Throughput push",
        "",
        f"{load.rooms} rooms x {load.clients} clients, each typing {load.keystrokes:,} "
        f"characters at random positions, at most {rate(load)} (as fast as Node's timers and "
        "the shared cores let them); the rates are over the time from the first keystroke until "
        "every room converged. *Relayed*: keystrokes arrived in another client's document.",
        "",
        *table(
            [
                *DEPLOYMENT_HEADERS,
                "typing",
                "until converged",
                "keystrokes/s",
                "vs 1 process",
                "relayed/s",
                "vs 1 process",
                "relay p50",
                "relay p99",
                *CPU_HEADERS,
            ],
            rows,
        ),
    ]


def rate(load: Typing) -> str:
    low, high = load.rate
    return f"{high:g} times a second" if low == high else f"{low:g} to {high:g} times a second"


def redis_version(redis_url: str) -> str:
    """`Redis 7.0.15`; the run needs Redis for its Redis deployments, so it stops here without."""
    import redis  # the Redis fan-out's optional dependency, like in bench.servers

    try:
        with redis.Redis.from_url(redis_url, socket_connect_timeout=5) as client:
            return f"Redis {client.info('server')['redis_version']}"
    except redis.RedisError as error:
        raise SystemExit(
            f"Redis not reachable at {redis_url} ({error}): pass --redis-url"
        ) from None


def render(r: Results, env: dict[str, str], command: str, redis: str) -> str:
    versions = node_versions()
    cores = os.cpu_count()
    *more, last = sorted({deployment.processes for deployment in r.sizes.deployments})
    counts = f"{', '.join(map(str, more))} and {last}" if more else str(last)
    lines = [
        f"Measured {env['date']} with `{command}` at {env['revision']}, on {env['machine']}; "
        f"Python {env['python']}, pycrdt {env['pycrdt']}, uvicorn {version('uvicorn')}, "
        f"{env['database']}, {redis}; Node {versions['node']}, y-websocket "
        f"{versions['y-websocket']}, yjs {versions['yjs']}. Whole run {duration(r.seconds)}.",
        "",
        f"Our server as {counts} `collab-server serve` processes on one fresh PostgreSQL "
        "database (defaults, log level WARNING), each relaying the others' commits to its own "
        "clients: PostgreSQL NOTIFY after each commit and one LISTEN connection a process, or "
        "Redis Streams (`COLLAB_REDIS_URL`). Each room's clients join the processes "
        "round-robin, each room starting one process further, so most deliveries cross "
        "processes. The ratios are against 1 process measured in the same run.",
        "",
        f"One run on {cores} shared cores: the Node clients, every server process, PostgreSQL "
        "and Redis all run on them, so more processes add no CPU here. These figures show what "
        "the hop between processes costs in latency, CPU and throughput on one machine, not how "
        "far more machines would scale: compare ratios, not absolute numbers.",
        "",
        *human_section(r),
        *push_section(r),
    ]
    return "\n".join([*lines, *failed_runs(r.failures)])


READING = """\
How to read these:

- *relay*: from the keystroke (a Y.Text insert in one client) to its arrival in another
  client's document, both clients in one Node process (one clock); *across processes*: only
  pairs of clients joined to different server processes (none with 1 process), so every one of
  them went client → process A → commit → fan-out → process B → client.
- *CPU per keystroke*: user + system seconds of every server process (`/proc/<pid>/stat`)
  over the keystrokes, from the start of the typing until every room converged; *with
  PostgreSQL (+ Redis)*: plus the PostgreSQL backends connected to the database (pids from
  `pg_stat_activity`, polled every 0.1 s; WAL writer and checkpointer not counted) and, for
  the Redis fan-out, the Redis server's own CPU (`INFO cpu`).
- *log catch-ups*: the server processes' own count of reads of a room's log for rows their
  fan-out had not delivered in time (`collab_catch_ups_total` from `/metrics`, summed): a room
  whose head did not move for 0.1 s while rows waited above a gap in the sequence numbers, or
  a lost message.
- *cores busy*: CPU seconds over the run's seconds of the server processes, of PostgreSQL's
  backends (+ Redis) and of the Node client processes: what each part took of the machine.
- *rooms converged*: every client of the room holds the same text, as long as the room's
  keystrokes; a room that did not is listed as a failed run.
"""


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; writes no docs")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"the PostgreSQL server (default {DEFAULT_POSTGRES_URL}); a scratch database is "
        "created there for each deployment and dropped",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"the Redis of the Redis fan-out (default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    options = parser.parse_args(argv)
    options.sizes = SMOKE if options.smoke else FULL
    options.write_docs = not (options.smoke or options.no_docs)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python -m bench.scaleout {args}".strip()
    env = environment(options.database_url)
    redis = redis_version(options.redis_url)
    results = asyncio.run(run(options))
    body = render(results, env, command, redis)
    return publish("Scale-out", body, READING, results.failures, docs=options.write_docs)


if __name__ == "__main__":
    sys.exit(main())
