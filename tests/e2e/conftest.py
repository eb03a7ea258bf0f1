"""The console in real headless Chromium (Debian's package, driven by Playwright) against a live server."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen

# Line 2 is not JSON, line 3 has no assistant content, line 4 is a bad role: three line-level errors.
BAD_ROWS_TEXT = (
    json.dumps(CHAT_ROWS[0])
    + "\n{not json\n"
    + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    + "\n"
    + json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]})
    + "\n"
)


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _no_postgres() -> str:
    raise AssertionError("the console tests run on SQLite only")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    # One backend: the console only calls the core, whose queries the integration suite runs on both.
    srv = start_server(tmp_path_factory.mktemp("console-srv"), "sqlite", tiny_model, _no_postgres)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> dict[str, str]:
    return server.keys("alice")


@pytest.fixture(scope="module")
def bob(server: LiveServer) -> dict[str, str]:
    return server.keys("bob")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run scripts/ensure-chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def new_page(browser: Any, server: LiveServer) -> Iterator[Callable[[], Any]]:
    """Pages in fresh browser contexts (own cookies); script errors on any page fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make() -> Any:
        ctx = browser.new_context(viewport=VIEWPORT, base_url=server.url)
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"script errors in the page: {errors}"


def sign_in(page: Any, api_key: str) -> None:
    page.goto("/console/login")
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/jobs")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    """Full-page screenshots; TUNEHOUSE_CONSOLE_SCREENSHOTS=docs/console keeps them for the README."""
    target = os.environ.get("TUNEHOUSE_CONSOLE_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screens")
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


class ConsoleClient:
    """Plain HTTP through the console's own forms: sets up records without driving the browser."""

    def __init__(self, url: str, api_key: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
        login = self.http.get("/console/login")
        self.csrf = self._token(login.text)
        r = self.http.post("/console/login", data={"api_key": api_key, "csrf_token": self.csrf})
        assert r.status_code == 303, r.text
        self.csrf = self._token(self.http.get("/console/jobs").text)

    @staticmethod
    def _token(html: str) -> str:
        m = re.search(r'name="csrf-token" content="([^"]+)"', html)
        assert m, "no CSRF token in the page"
        return m.group(1)

    def post(self, path: str, data: dict[str, Any], files: Any = None) -> httpx.Response:
        return self.http.post(path, data={**data, "csrf_token": self.csrf}, files=files)

    def create_job(self, name: str) -> str:
        r = self.post("/console/jobs", {"name": name})
        assert r.status_code == 303, r.text
        return r.headers["location"].split("/")[3].split("?")[0]

    def create_run(
        self,
        job_key: str,
        rows: str,
        hp: dict[str, Any],
        split_ratio: int = 0,
        model: str = "tunehouse-tiny",
    ) -> str:
        data = {
            "model": model,
            "method": "lora",
            "train_mode": "sft",
            "split_ratio": str(split_ratio),
            **{f"hp.{k}": str(v) for k, v in hp.items()},
        }
        r = self.post(f"/console/jobs/{job_key}/runs", data, files={"upload": ("train.jsonl", rows.encode())})
        assert r.status_code == 303, r.text
        return r.headers["location"].rsplit("/", 1)[1]

    def wait_state(self, run_key: str, states: set[str], timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            html = self.http.get(f"/console/runs/{run_key}").text
            m = re.search(r'id="run-state"[^>]*data-state="([a-z]+)"', html)
            if m and m.group(1) in states:
                return m.group(1)
            time.sleep(0.3)
        raise AssertionError(f"run {run_key} did not reach {states}")
