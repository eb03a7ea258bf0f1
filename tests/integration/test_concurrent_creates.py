"""Many creates at once from one account, against a live server on SQLite and PostgreSQL: each is accepted or
refused under the account's limit (never a 500 from a lock cycle), and runs of one job get distinct versions.

The server runs no trainers (TUNEHOUSE_MAX_RUNNING=0): these are about the API's transactions alone.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl

PARALLEL = 200


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    make_pg_database: Callable[[], str],
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp(f"creates-{request.param}")
    srv = start_server(home, request.param, tiny_model, make_pg_database, TUNEHOUSE_MAX_RUNNING="0")
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def upload(server: LiveServer, api_key: str) -> str:
    r = httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("t.jsonl", jsonl(CHAT_ROWS))},
        data={"purpose": "fine-tune"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def create_in_parallel(server: LiveServer, api_key: str, n: int) -> Counter[int]:
    """Half through OpenAI, half through DashScope, all released at once; the HTTP status of each."""
    training = upload(server, api_key)
    headers = {"Authorization": f"Bearer {api_key}"}
    openai_body = {"model": "tunehouse-tiny", "training_file": training}
    ds_body = {"model": "tunehouse-tiny", "training_file_ids": [training]}
    start = threading.Barrier(n)

    def create(i: int) -> int:
        path, body = ("/v1/fine_tuning/jobs", openai_body) if i % 2 else ("/api/v1/fine-tunes", ds_body)
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            start.wait()
            r = http.post(path, json=body)
        assert r.status_code in (200, 429), f"{path}: {r.status_code} {r.text[:500]}"
        return r.status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        return Counter(pool.map(create, range(n)))


def test_parallel_creates_beyond_the_accounts_limit_are_refused_with_429_and_the_rest_accepted(
    server: LiveServer,
) -> None:
    keys = server.keys("capped")
    server.cli("accounts", "limit", "capped", "--max-active-runs", "5")
    assert create_in_parallel(server, keys["api_key"], PARALLEL) == {200: 5, 429: PARALLEL - 5}


def test_runs_created_at_once_in_one_job_get_distinct_versions(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    keys = server.keys("versions")
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    training = upload(server, keys["api_key"])
    tiny = "tunehouse-tiny"
    task = FineTune.create_task(name="versions", base_train_type=tiny, train_type=tiny)
    task_id = int(task.body["result"]["id"])
    body: dict[str, Any] = {
        "taskId": task_id,
        "baseTrainType": "tunehouse-tiny",
        "trainType": "tunehouse-tiny",
        "trainMode": "SFT",
        "peftType": "LoRA",
        "trainConfig": {"epoch": 1},
        "trainset": [{"type": 1, "id": training}],
    }
    n = 50
    start = threading.Barrier(n)

    def create(_: int) -> int:
        start.wait()
        return int(FineTune.create_job(json.loads(json.dumps(body))).body["result"]["id"])

    with ThreadPoolExecutor(max_workers=n) as pool:
        run_ids = list(pool.map(create, range(n)))
    assert len(set(run_ids)) == n, run_ids
    versions = [FineTune.get_job(task_id=task_id, job_id=r).body["result"]["version"] for r in run_ids]
    assert sorted(versions) == list(range(1, n + 1))
