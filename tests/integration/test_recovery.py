"""Crashes lose nothing: server crash mid-run, trainer killed under a live server, trainer lost while the
server was down."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import (
    find_trainer,
    run_dir,
    start_long_task,
    task_status,
    trainer_process,
    wait_for,
)

pytestmark = pytest.mark.heavy(9)

# Each wait ends on what it waits for; the deadline only bounds a hang, with room for a machine 4x slower
# than a loaded 2-core CI box.
DEADLINE_S = 900
MAX_LOSSES = 2  # the run fails at its second lost trainer; the first is resumed


@pytest.fixture(params=["sqlite", "postgres"])
def own_server(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path, request.param, tiny_model, make_pg_database, TUNEHOUSE_MAX_TRAINER_LOSSES=str(MAX_LOSSES)
    )
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
        wait_for(
            lambda: (d := task_status(sdk, task_id))["runStatus"] in {"Done", "Stopped", "Failed"} and d,
            timeout=DEADLINE_S,
        )
    )


def test_a_server_crash_mid_run_reattaches_and_the_run_finishes(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"], epochs=2)
    wait_for(lambda: checkpoint_written(own_server, task_id), timeout=DEADLINE_S)
    trainer = trainer_process(own_server, task_id)
    own_server.crash()
    assert trainer.is_running(), "the trainer outlives the server"
    own_server.start()
    done = terminal(sdk, task_id)
    assert done["runStatus"] == "Done", done
    assert done["checkpointList"]
    seqs = [json.loads(line)["seq"] for line in (run_dir(own_server, task_id) / "events.jsonl").open()]
    assert seqs == list(range(1, len(seqs) + 1))


def trainer_log(server: LiveServer, task_id: str) -> str:
    events = run_dir(server, task_id) / "events.jsonl"
    return events.read_text() if events.exists() else ""


def server_events(server: LiveServer, api_key: str, task_id: str) -> list[str]:
    """The run's own record (server and trainer events), read through the OpenAI dialect."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key)
    job = "ftjob-" + task_id.removeprefix("task-")
    return [e.message for e in client.fine_tuning.jobs.list_events(job, limit=100).data]


def kill_when_training(server: LiveServer, sdk: Any, task_id: str, resumes: int) -> None:
    """SIGKILL the trainer once it has checkpointed and (after `resumes` resumptions) trains again."""
    wait_for(
        lambda: (
            task_status(sdk, task_id)["runStatus"] == "Running"
            and checkpoint_written(server, task_id)
            and trainer_log(server, task_id).count("resumed from") == resumes
            and find_trainer(server, task_id) is not None
        ),
        timeout=DEADLINE_S,
    )
    trainer = trainer_process(server, task_id)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(30)


def test_a_killed_trainer_resumes_from_its_checkpoint_and_fails_with_the_reason_at_the_bound(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"])
    kill_when_training(own_server, sdk, task_id, resumes=0)
    kill_when_training(own_server, sdk, task_id, resumes=1)  # the first loss was resumed: kill it again
    failed = terminal(sdk, task_id)
    assert failed["runStatus"] == "Failed"
    assert failed["errorMessage"] == (
        f"the trainer process was lost {MAX_LOSSES} times (last: exited with code -9); giving up"
    )
    record = server_events(own_server, carol["api_key"], task_id)
    requeued = [m for m in record if "requeued to resume from checkpoint step" in m]
    assert len(requeued) == MAX_LOSSES - 1 and requeued[0].endswith(f"(loss 1 of {MAX_LOSSES})")
    assert "trainer process exited with code -9" in requeued[0]


def test_a_trainer_lost_while_the_server_was_down_resumes_from_its_checkpoint(
    own_server: LiveServer, sdk: Any, carol: dict[str, str]
) -> None:
    task_id = start_long_task(sdk, own_server, carol["api_key"], epochs=2)
    wait_for(lambda: checkpoint_written(own_server, task_id), timeout=DEADLINE_S)
    trainer = trainer_process(own_server, task_id)
    own_server.crash()
    trainer.kill()
    trainer.wait(10)
    own_server.start()
    done = terminal(sdk, task_id)
    assert done["runStatus"] == "Done", done
    spec = json.loads((run_dir(own_server, task_id) / "spec.json").read_text())
    assert spec["resume_from"] and Path(spec["resume_from"]).name.startswith("step-")
