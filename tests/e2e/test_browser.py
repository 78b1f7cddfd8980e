"""The web client in headless Chromium against a real server process.

Each test runs one scenario of `browser.mjs` (playwright-core, from `web/node_modules`)
against `live_server`. Needs Debian's Chromium at /usr/bin/chromium (override with
CHROMIUM_PATH) and the built client (`make web`). Without Chromium the tests skip, except
under CI=true, where they must run.

`UPDATE_DOCS_SCREENSHOT=1` refreshes docs/screenshot-two-collaborators.png from the
two-collaborator test; otherwise its screenshot goes to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("browser.mjs")
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
PLAYWRIGHT = ROOT / "web" / "node_modules" / "playwright-core"
WEB_BUILD = ROOT / "collab_server" / "web_dist" / "index.html"
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot-two-collaborators.png"
SCENARIO_TIMEOUT_S = 120

UNDER_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not UNDER_CI,
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run the browser tests",
    ),
    # The browser checks the client, not the storage backend: one backend is enough.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def browser_ready() -> None:
    missing = [
        problem
        for ok, problem in [
            (CHROMIUM.exists(), f"Chromium at {CHROMIUM} (`apt-get install chromium`)"),
            (shutil.which("node") is not None, "node on PATH"),
            (PLAYWRIGHT.is_dir(), "playwright-core in web/node_modules (`make web`)"),
            (WEB_BUILD.is_file(), "the built web client in collab_server/web_dist (`make web`)"),
        ]
        if not ok
    ]
    if missing:
        pytest.fail("browser tests need: " + "; ".join(missing))


def run_scenario(
    name: str,
    server: ServerProcess,
    *args: str,
    harness: Mapping[str, Callable[[], object]] | None = None,
) -> None:
    """Run one scenario of browser.mjs; `harness` answers its `HARNESS <request>` lines."""
    output: list[str] = []
    with subprocess.Popen(
        ["node", str(SCRIPT), name, server.http_url, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CHROMIUM_PATH": str(CHROMIUM)},
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        deadline = threading.Timer(SCENARIO_TIMEOUT_S, process.kill)
        deadline.start()
        try:
            for line in process.stdout:
                output.append(line)
                if line.startswith("HARNESS "):
                    (harness or {})[line.removeprefix("HARNESS ").strip()]()
                    process.stdin.write("done\n")
                    process.stdin.flush()
        finally:
            deadline.cancel()
    if process.returncode != 0:
        pytest.fail(
            f"browser scenario {name!r} failed (exit {process.returncode}):\n{''.join(output)}\n"
            f"--- server log ---\n{server.log()[-4000:]}"
        )


@pytest.mark.usefixtures("browser_ready")
def test_typing_in_one_browser_shows_in_the_other_with_the_typists_labelled_cursor(
    live_server: ServerProcess, tmp_path: Path
) -> None:
    # Also: both participants lists name both people and both pages reach "saved".
    update_docs = os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1"
    screenshot = DOCS_SCREENSHOT if update_docs else tmp_path / DOCS_SCREENSHOT.name
    screenshot.parent.mkdir(exist_ok=True)
    run_scenario("two-collaborators", live_server, str(screenshot))
    assert screenshot.stat().st_size > 0


@pytest.mark.usefixtures("browser_ready")
def test_saved_text_is_shown_again_after_a_reload(live_server: ServerProcess) -> None:
    run_scenario("reload", live_server)


@pytest.mark.usefixtures("browser_ready")
def test_edits_made_while_the_server_is_down_are_not_saved_until_it_is_back(
    live_server: ServerProcess,
) -> None:
    run_scenario(
        "offline-edits",
        live_server,
        harness={"stop-server": live_server.terminate, "start-server": live_server.start},
    )


@pytest.mark.usefixtures("browser_ready")
def test_unknown_room_shows_room_not_found(live_server: ServerProcess) -> None:
    run_scenario("unknown-room", live_server)


@pytest.mark.usefixtures("browser_ready")
def test_home_page_creates_a_room_and_opens_it(live_server: ServerProcess) -> None:
    run_scenario("create-from-home", live_server)


@pytest.mark.usefixtures("browser_ready")
def test_typing_asks_the_server_for_completions_and_accepting_one_inserts_it(
    live_server: ServerProcess,
) -> None:
    run_scenario("autocomplete", live_server)


@pytest.mark.usefixtures("browser_ready")
def test_language_change_reaches_the_other_browser_and_the_server(
    live_server: ServerProcess,
) -> None:
    run_scenario("language-change", live_server)
