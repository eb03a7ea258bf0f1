"""Live servers on SQLite and PostgreSQL, driven by the official qianfan SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server

CHAT_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
        ]
    }
    for a in range(4)
    for b in range(4)
]
PROMPT_RESPONSE_ROWS = [
    [{"prompt": f"Say the word number {i}.", "response": [[f"Word {i}."]]}] for i in range(12)
]
TEXT_ROWS = [
    {"text": f"The river runs past mill number {i} and turns the wheel once more."} for i in range(12)
]


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    make_pg_database: Callable[[], str],
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path_factory.mktemp(f"srv-{request.param}"), request.param, tiny_model, make_pg_database
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> dict[str, str]:
    return server.keys("alice")


@pytest.fixture(scope="module")
def bob(server: LiveServer) -> dict[str, str]:
    return server.keys("bob")


@pytest.fixture
def qianfan(server: LiveServer, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The unmodified SDK, configured only through its documented environment variables."""
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", alice["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", alice["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the environment
    return FineTune


@pytest.fixture
def upload(server: LiveServer, alice: dict[str, str]) -> Callable[..., str]:
    def do(rows: list[Any], keys: dict[str, str] | None = None, name: str = "train.jsonl") -> str:
        r = httpx.post(
            server.url + "/v1/files",
            headers={"Authorization": f"Bearer {(keys or alice)['api_key']}"},
            files={"file": (name, jsonl(rows))},
            data={"purpose": "fine-tune"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    return do


def wait_for(check: Callable[[], Any], timeout: float = 180, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def start_long_task(sdk: Any, server: LiveServer, api_key: str, epochs: int = 12) -> str:
    up = httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("t.jsonl", jsonl(CHAT_ROWS * 4))},
        data={"purpose": "fine-tune"},
    )
    job = sdk.V2.create_job(name="durable", model="tunehouse-tiny", train_mode="SFT").body["result"]["jobId"]
    hp = {"epoch": epochs, "learningRate": 0.003, "batchSize": 1, "maxSeqLen": 256, "saveSteps": 20}
    cfg = {"sourceType": "Platform", "versions": [{"versionId": up.json()["id"]}]}
    return str(
        sdk.V2.create_task(job_id=job, params_scale="LoRA", hyper_params=hp, dataset_config=cfg).body[
            "result"
        ]["taskId"]
    )


def run_dir(server: LiveServer, task_id: str) -> Path:
    return server.home / "runs" / task_id.removeprefix("task-")


def find_trainer(server: LiveServer, task_id: str) -> psutil.Process | None:
    spec = str(run_dir(server, task_id) / "spec.json")
    for p in psutil.process_iter(["cmdline"]):
        if spec in (p.info.get("cmdline") or []):
            return p
    return None


def trainer_process(server: LiveServer, task_id: str) -> psutil.Process:
    found = find_trainer(server, task_id)
    assert found is not None, "no trainer process"
    return found


def task_status(sdk: Any, task_id: str) -> dict[str, Any]:
    return dict(sdk.V2.task_detail(task_id=task_id).body["result"])
