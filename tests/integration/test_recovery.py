"""Crashes lose nothing: server crash mid-run, trainer crash, trainer lost while the server was down."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import run_dir, start_long_task, task_status, trainer_process, wait_for


@pytest.fixture(params=["sqlite", "postgres"])
def own_server(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(tmp_path, request.param, tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture
def carol(own_server: LiveServer) -> dict[str, str]:
    return own_server.keys("carol")


@pytest.fixture
def sdk(own_server: LiveServer, carol: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    keys = carol
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", own_server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    return FineTune


def checkpoint_written(server: LiveServer, task_id: str) -> bool:
    events = run_dir(server, task_id) / "events.jsonl"
    return events.exists() and '"checkpoint"' in events.read_text()


def terminal(sdk: Any, task_id: str) -> dict[str, Any]:
    return dict(
        wait_for(lambda: (d := task_status(sdk, task_id))["runStatus"] in {"Done", "Stopped", "Failed"} and d)
    )


def test_a_server_crash_mid_run_reattaches_and_the_run_finishes(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"], epochs=6)
    wait_for(lambda: checkpoint_written(own_server, task_id))
    trainer = trainer_process(own_server, task_id)
    own_server.crash()
    assert trainer.is_running(), "the trainer outlives the server"
    own_server.start()
    done = terminal(sdk, task_id)
    assert done["runStatus"] == "Done", done
    assert done["checkpointList"]
    seqs = [json.loads(line)["seq"] for line in (run_dir(own_server, task_id) / "events.jsonl").open()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_killed_trainer_ends_the_task_failed_with_the_reason(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"])
    wait_for(
        lambda: (
            task_status(sdk, task_id)["runStatus"] == "Running" and checkpoint_written(own_server, task_id)
        )
    )
    trainer_process(own_server, task_id).send_signal(signal.SIGKILL)
    failed = terminal(sdk, task_id)
    assert failed["runStatus"] == "Failed"
    assert "exited with code -9" in failed["errorMessage"]


def test_a_trainer_lost_while_the_server_was_down_resumes_from_its_checkpoint(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"], epochs=4)
    wait_for(lambda: checkpoint_written(own_server, task_id))
    trainer = trainer_process(own_server, task_id)
    own_server.crash()
    trainer.kill()
    trainer.wait(10)
    own_server.start()
    done = terminal(sdk, task_id)
    assert done["runStatus"] == "Done", done
    spec = json.loads((run_dir(own_server, task_id) / "spec.json").read_text())
    assert spec["resume_from"] and Path(spec["resume_from"]).name.startswith("step-")
