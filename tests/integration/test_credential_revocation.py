"""Credentials are remembered briefly per process; a revoked key stops working at once in the process that
revoked it and within the cache's TTL in every other process on the database."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from openai import AuthenticationError, OpenAI

from tests.conftest import LiveServer, kill_trainers
from tests.integration.conftest import wait_for
from tunehouse.core.accounts import hash_api_key

TTL_S = 2


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers on one database and home (so one master key): one with the scheduler, one API only."""
    home = tmp_path_factory.mktemp("replicas") / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny_model, home / "models" / "tunehouse-tiny")
    url = make_pg_database()
    env = {"TUNEHOUSE_CREDENTIAL_CACHE_S": str(TTL_S)}
    first = LiveServer(home=home, database_url=url, extra_env=env)
    first.start()
    second = LiveServer(home=home, database_url=url, extra_env=env, serve_args=["--no-scheduler"])
    second.start()
    yield first, second
    second.stop()
    first.stop()
    kill_trainers(home)


class Console:
    """The console's own sign-in and revoke forms, over plain HTTP."""

    def __init__(self, server: LiveServer, api_key: str) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
        self.csrf = self._token(self.http.get("/console/login").text)
        r = self.http.post("/console/login", data={"api_key": api_key, "csrf_token": self.csrf})
        assert r.status_code == 303, r.text
        self.csrf = self._token(self.http.get("/console/jobs").text)

    @staticmethod
    def _token(html: str) -> str:
        m = re.search(r'name="csrf-token" content="([^"]+)"', html)
        assert m, "no CSRF token in the page"
        return m.group(1)

    def revoke(self, server: LiveServer, lookup: str) -> None:
        dsn = server.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT id FROM credentials WHERE lookup = %s", (lookup,)).fetchone()
        assert row is not None
        r = self.http.post(f"/console/keys/{row[0]}/revoke", data={"csrf_token": self.csrf})
        assert r.status_code == 303 and "revoked" in r.headers["location"], r.text


def openai_works(server: LiveServer, api_key: str) -> bool:
    try:
        OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0).fine_tuning.jobs.list()
    except AuthenticationError:
        return False
    return True


def dashscope_works(server: LiveServer, api_key: str) -> bool:
    r = httpx.get(server.url + "/api/v1/fine-tunes", headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def qianfan_works(server: LiveServer, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> bool:
    import qianfan.config
    from qianfan.errors import RequestError
    from qianfan.resources.console.finetune import FineTune

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the base URL
    try:
        FineTune.V2.job_list(ak=keys["access_key"], sk=keys["secret_key"])
    except RequestError as e:
        assert e.status_code == 403, str(e)
        return False
    return True


@pytest.fixture
def account(replicas: tuple[LiveServer, LiveServer]) -> tuple[Console, dict[str, str]]:
    """A console signed in on the second server, and a second key set of the same account to revoke."""
    _, second = replicas
    name = f"erin-{uuid.uuid4().hex[:8]}"
    console = Console(second, second.keys(name)["api_key"])
    return console, second.keys(name)


def test_a_revoked_api_key_fails_at_once_where_revoked_and_within_the_ttl_elsewhere(
    replicas: tuple[LiveServer, LiveServer], account: tuple[Console, Any]
) -> None:
    first, second = replicas
    console, victim = account
    for server in replicas:  # both processes now remember the key
        assert openai_works(server, victim["api_key"]) and dashscope_works(server, victim["api_key"])
    console.revoke(second, hash_api_key(victim["api_key"]))
    assert not openai_works(second, victim["api_key"])
    assert not dashscope_works(second, victim["api_key"])
    wait_for(lambda: not openai_works(first, victim["api_key"]), timeout=TTL_S * 4 + 20)
    assert not dashscope_works(first, victim["api_key"])


def test_a_revoked_access_key_fails_at_once_where_revoked_and_within_the_ttl_elsewhere(
    replicas: tuple[LiveServer, LiveServer], account: tuple[Console, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = replicas
    console, victim = account
    assert qianfan_works(first, victim, monkeypatch) and qianfan_works(second, victim, monkeypatch)
    console.revoke(second, victim["access_key"])
    assert not qianfan_works(second, victim, monkeypatch)
    wait_for(lambda: not qianfan_works(first, victim, monkeypatch), timeout=TTL_S * 4 + 20)
