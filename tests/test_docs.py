"""The docs cannot drift from the code: settings, close codes, endpoints, commands and links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIWebSocketRoute

from collab_server import Settings, create_app
from collab_server.cli import cli
from collab_server.closecodes import CloseCode
from collab_server.ws import router as ws_router

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = DOCS / "configuration.md"
PROTOCOL = DOCS / "protocol.md"
ALL_DOCS = sorted(DOCS.glob("*.md"))


def env_var(field: str) -> str:
    return f"COLLAB_{field.upper()}"


def table_row(text: str, first_cell: str) -> str:
    """The Markdown table row whose first cell is `first_cell`."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, f"expected one table row for {first_cell}, found {len(rows)}"
    return rows[0]


def documented_default(value: object) -> str:
    """A default as it is written in an environment variable."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def http_operations() -> list[str]:
    app = create_app(Settings())
    return [
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    ]


def test_docs_exist() -> None:
    names = {path.name for path in ALL_DOCS}
    assert {"architecture.md", "protocol.md", "configuration.md", "operations.md"} <= names


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_configuration_documents_every_setting(field: str) -> None:
    table_row(CONFIGURATION.read_text(), f"`{env_var(field)}`")


@pytest.mark.parametrize(
    "field",
    sorted(
        name
        for name, info in Settings.model_fields.items()
        if isinstance(info.default, str | int | float | bool)
    ),
)
def test_configuration_states_each_setting_default(field: str) -> None:
    row = table_row(CONFIGURATION.read_text(), f"`{env_var(field)}`")
    default = documented_default(Settings.model_fields[field].default)
    assert f"| `{default}` |" in row


def test_docs_name_only_settings_that_exist() -> None:
    known = {env_var(field) for field in Settings.model_fields}
    for doc in ALL_DOCS:
        named = set(re.findall(r"COLLAB_[A-Z0-9_]+", doc.read_text()))
        assert named <= known, f"{doc.name} names unknown settings: {sorted(named - known)}"


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda code: code.name)
def test_protocol_documents_every_close_code(code: CloseCode) -> None:
    row = table_row(PROTOCOL.read_text(), str(code.value))
    assert f"| `{code.name}` |" in row


@pytest.mark.parametrize("operation", http_operations())
def test_protocol_lists_every_http_endpoint(operation: str) -> None:
    table_row(PROTOCOL.read_text(), f"`{operation}`")


@pytest.mark.parametrize(
    "path", [r.path for r in ws_router.routes if isinstance(r, APIWebSocketRoute)]
)
def test_protocol_lists_the_websocket_endpoint(path: str) -> None:
    table_row(PROTOCOL.read_text(), f"`WS {path}`")


def code_in(text: str) -> str:
    """The fenced code blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def test_docs_run_only_cli_commands_that_exist() -> None:
    commands = {
        c.name or (c.callback.__name__ if c.callback else "") for c in cli.registered_commands
    }
    for doc in ALL_DOCS:
        used = set(re.findall(r"collab-server (\w+)", code_in(doc.read_text())))
        assert used <= commands, f"{doc.name} runs unknown commands: {sorted(used - commands)}"


def test_relative_links_between_docs_resolve() -> None:
    for doc in ALL_DOCS:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links to missing {target}"


def test_links_to_doc_sections_name_existing_headings() -> None:
    def anchor(heading: str) -> str:
        return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")

    for doc in ALL_DOCS:
        for target, section in re.findall(r"\]\(([^)#:]+\.md)#([^)]+)\)", doc.read_text()):
            headings = re.findall(r"^#+ (.+)$", (doc.parent / target).read_text(), re.MULTILINE)
            assert section in {anchor(h) for h in headings}, f"{doc.name}: {target}#{section}"
