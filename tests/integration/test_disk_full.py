"""A full disk: a run checkpointing onto it fails with the reason, its partial checkpoint removed and the
earlier ones intact, the scheduler carries on, and creates and uploads answer each dialect's 507.

The home is a small tmpfs (tests run as root); where mounting is not permitted the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from qianfan.errors import RequestError

from tests.conftest import LiveServer, kill_trainers
from tests.integration.conftest import CHAT_ROWS, jsonl, run_dir, wait_for

DEADLINE_S = 600
TERMINAL = {"Done", "Stopped", "Failed"}


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(home)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        kill_trainers(home)
        subprocess.run(["umount", "-l", str(home)], check=False)


@pytest.fixture
def server(small_home: Path, tiny_model: Path) -> Iterator[LiveServer]:
    shutil.copytree(tiny_model, small_home / "models" / "tunehouse-tiny")
    srv = LiveServer(
        home=small_home,
        database_url=f"sqlite:///{small_home / 'tunehouse.db'}",  # the default: the database shares the disk
        extra_env={"TUNEHOUSE_MIN_FREE_MB": "4"},
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def keys(server: LiveServer) -> dict[str, str]:
    return server.keys("dora")


@pytest.fixture
def sdk(server: LiveServer, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    return FineTune


def fill(home: Path, leave_bytes: int) -> Path:
    """Take all but ``leave_bytes`` of the volume's free space."""
    filler = home / f"filler-{len(list(home.glob('filler-*')))}"
    take = shutil.disk_usage(home).free - leave_bytes
    with open(filler, "wb") as f:
        if take > 0:
            os.posix_fallocate(f.fileno(), 0, take)
    return filler


def upload(server: LiveServer, keys: dict[str, str]) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {keys['api_key']}"},
        files={"file": ("t.jsonl", jsonl(CHAT_ROWS))},
        data={"purpose": "fine-tune"},
        timeout=60,
    )


def create_task(sdk: Any, file_id: str, hp: dict[str, Any]) -> str:
    job = sdk.V2.create_job(name="disk", model="tunehouse-tiny", train_mode="SFT").body["result"]["jobId"]
    cfg = {"sourceType": "Platform", "versions": [{"versionId": file_id}]}
    task = sdk.V2.create_task(job_id=job, params_scale="LoRA", hyper_params=hp, dataset_config=cfg)
    return str(task.body["result"]["taskId"])


def detail(sdk: Any, task_id: str) -> dict[str, Any]:
    return dict(sdk.V2.task_detail(task_id=task_id).body["result"])


def checkpoints_said(server: LiveServer, task_id: str) -> list[int]:
    events = run_dir(server, task_id) / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    return [json.loads(ln)["payload"]["step"] for ln in lines if '"type": "checkpoint"' in ln]


def test_a_disk_filling_up_while_checkpointing_fails_the_run_cleanly_and_the_scheduler_carries_on(
    server: LiveServer, keys: dict[str, str], sdk: Any
) -> None:
    file_id = upload(server, keys).json()["id"]
    every_step = {"epoch": 50, "batchSize": 1, "learningRate": 0.003, "maxSeqLen": 128, "saveSteps": 1}
    task_id = create_task(sdk, file_id, every_step)
    wait_for(lambda: checkpoints_said(server, task_id), timeout=DEADLINE_S)
    filler = fill(server.home, leave_bytes=6 << 20)  # a few more checkpoints' worth above the 4 MiB reserve
    failed = wait_for(lambda: (d := detail(sdk, task_id))["runStatus"] in TERMINAL and d, timeout=DEADLINE_S)
    assert failed["runStatus"] == "Failed", failed
    ckpt_dir = run_dir(server, task_id) / "checkpoints"
    assert "no space left on device" in failed["errorMessage"]
    assert str(ckpt_dir / "step-") in failed["errorMessage"], "the reason names the checkpoint being written"
    left = sorted(p.name for p in ckpt_dir.iterdir())
    assert not [name for name in left if name.endswith(".tmp")], left
    saved = checkpoints_said(server, task_id)
    assert saved and left == sorted(f"step-{s}" for s in saved)
    for step in saved:
        kept = {p.name for p in (ckpt_dir / f"step-{step}").iterdir()}
        assert {"trainer_state.json", "optimizer.pt", "adapter_model.safetensors"} <= kept, (step, kept)

    filler.unlink()
    again = create_task(sdk, file_id, {"epoch": 1, "batchSize": 4, "maxSeqLen": 128})
    done = wait_for(lambda: (d := detail(sdk, again))["runStatus"] in TERMINAL and d, timeout=DEADLINE_S)
    assert done["runStatus"] == "Done", done


def test_creates_and_uploads_on_a_full_disk_answer_507_in_each_dialect(
    server: LiveServer, keys: dict[str, str], sdk: Any
) -> None:
    file_id = upload(server, keys).json()["id"]
    job = sdk.V2.create_job(name="full", model="tunehouse-tiny", train_mode="SFT").body["result"]["jobId"]
    filler = fill(server.home, leave_bytes=2 << 20)  # below the 4 MiB reserve the server keeps
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=file_id)
    assert (refused.value.status_code, refused.value.code) == (507, "insufficient_storage")
    assert "no space left on device" in refused.value.message
    with pytest.raises(openai.APIStatusError) as refused_upload:
        client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    assert refused_upload.value.status_code == 507

    bearer = {"Authorization": f"Bearer {keys['api_key']}"}
    ds = httpx.post(
        server.url + "/api/v1/fine-tunes",
        headers=bearer,
        json={"model": "tunehouse-tiny", "training_file_ids": [file_id]},
        timeout=60,
    )
    assert (ds.status_code, ds.json()["code"]) == (507, "InsufficientStorage"), ds.text
    cfg = {"sourceType": "Platform", "versions": [{"versionId": file_id}]}
    with pytest.raises(RequestError) as qf:
        sdk.V2.create_task(job_id=job, params_scale="LoRA", hyper_params={"epoch": 1}, dataset_config=cfg)
    assert qf.value.status_code == 507 and "InsufficientStorage" in str(qf.value)

    filler.unlink()
    assert client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=file_id).status == "queued"
