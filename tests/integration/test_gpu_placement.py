"""A node lends each running trainer a GPU of its own, queues the rest, and remembers across restarts.

The machine needs no GPU for this: the scheduler decides which device a trainer may see and the local executor
sets CUDA_VISIBLE_DEVICES in the trainer's environment, which is what is checked here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import find_trainer, start_long_task, task_status, wait_for


@pytest.fixture
def two_gpu_server(
    tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path, "postgres", tiny_model, make_pg_database, TUNEHOUSE_GPUS="0,1", TUNEHOUSE_MAX_RUNNING="4"
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture
def sdk(two_gpu_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    keys = two_gpu_server.keys("dora")
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", two_gpu_server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    return FineTune, keys["api_key"]


def visible_devices(server: LiveServer, task_id: str) -> str | None:
    proc = find_trainer(server, task_id)
    return None if proc is None else proc.environ().get("CUDA_VISIBLE_DEVICES")


def test_each_running_trainer_gets_its_own_gpu_and_the_next_waits_for_one(
    two_gpu_server: LiveServer, sdk: tuple[Any, str]
) -> None:
    fine_tune, api_key = sdk
    first, second, third = (start_long_task(fine_tune, two_gpu_server, api_key, epochs=50) for _ in range(3))

    def both_placed() -> list[str | None] | None:
        gpus = [visible_devices(two_gpu_server, t) for t in (first, second)]
        return gpus if all(gpus) else None

    placed = wait_for(both_placed)
    assert sorted(placed) == ["0", "1"]
    # Both GPUs are lent, so the third run stays queued although TUNEHOUSE_MAX_RUNNING would allow it.
    assert task_status(fine_tune, third)["runStatus"] == "Waiting"
    assert find_trainer(two_gpu_server, third) is None

    # Free GPU 1, the one a scheduler that only counted, or forgot who holds what, would not hand out first.
    holder, keeper = (first, second) if placed[0] == "1" else (second, first)
    fine_tune.V2.stop_task(task_id=holder)
    wait_for(lambda: task_status(fine_tune, holder)["runStatus"] == "Stopped")
    assert wait_for(lambda: visible_devices(two_gpu_server, third)) == "1"
    assert visible_devices(two_gpu_server, keeper) == "0"


def test_a_restarted_server_does_not_lend_a_gpu_twice(
    two_gpu_server: LiveServer, sdk: tuple[Any, str]
) -> None:
    fine_tune, api_key = sdk
    running = [start_long_task(fine_tune, two_gpu_server, api_key, epochs=50) for _ in range(2)]
    wait_for(lambda: all(visible_devices(two_gpu_server, t) for t in running))
    two_gpu_server.crash()
    two_gpu_server.start()  # the trainers outlived the server and are reattached with their GPUs
    waiting = start_long_task(fine_tune, two_gpu_server, api_key, epochs=50)
    time.sleep(3)  # ten scheduler ticks: both GPUs are still lent, so the new run must wait
    assert task_status(fine_tune, waiting)["runStatus"] == "Waiting"
    on_gpu = {visible_devices(two_gpu_server, t): t for t in running}
    assert sorted(on_gpu) == ["0", "1"]
    fine_tune.V2.stop_task(task_id=on_gpu["1"])
    # Only a server that remembers who holds GPU 0 hands the waiting run GPU 1.
    assert wait_for(lambda: visible_devices(two_gpu_server, waiting)) == "1"
    assert visible_devices(two_gpu_server, on_gpu["0"]) == "0"
    client = openai.OpenAI(base_url=two_gpu_server.url + "/v1", api_key=api_key)
    events = client.fine_tuning.jobs.list_events("ftjob-" + waiting.removeprefix("task-"), limit=100)
    assert [e.message for e in events if e.message.startswith("trainer started on GPU ")] == [
        "trainer started on GPU 1"
    ]


def test_a_malformed_gpu_setting_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunehouse", "serve", "--port", "1"],
        env={"TUNEHOUSE_HOME": str(tmp_path), "TUNEHOUSE_GPUS": "0,,1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "TUNEHOUSE_GPUS='0,,1'" in out.stderr and "Traceback" not in out.stderr
