"""Rules of the platform, kept in the core: every dialect enforces them alike, each in its own terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dashscope
import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, jsonl, task_status, wait_for

LONG_DS = {"n_epochs": 50, "learning_rate": 1e-3, "batch_size": 1, "max_length": 128}
LONG_QIANFAN = {"epoch": 50, "learningRate": 0.001, "batchSize": 1, "maxSeqLen": 128}
FEW = CHAT_ROWS[:7]  # fewer than the ten examples a run needs


@pytest.fixture
def client(server: LiveServer, alice: dict[str, str]) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=alice["api_key"], max_retries=2)


@pytest.fixture
def ds(server: LiveServer, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", alice["api_key"])
    return dashscope


def ds_upload(ds: Any, tmp_path: Path, rows: list[Any]) -> str:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(rows))
    return str(ds.Files.upload(str(path)).output["uploaded_files"][0]["file_id"])


def ds_status(ds: Any, job_id: str) -> dict[str, Any]:
    return dict(vars(ds.FineTunes.get(job_id).output))


def qianfan_task(qianfan: Any, file_id: str, hp: dict[str, Any], name: str = "rules") -> str:
    job = qianfan.V2.create_job(name=name, model="tunehouse-tiny", train_mode="SFT").body["result"]["jobId"]
    cfg = {"sourceType": "Platform", "versions": [{"versionId": file_id}]}
    task = qianfan.V2.create_task(job_id=job, params_scale="LoRA", hyper_params=hp, dataset_config=cfg)
    return str(task.body["result"]["taskId"])


def wait_stopped_in_qianfan(qianfan: Any, task_id: str) -> None:
    # OpenAI reads a stopping run as cancelled already; Qianfan's Stopped means the trainer has exited.
    wait_for(lambda: task_status(qianfan, task_id)["runStatus"] == "Stopped", timeout=240)


# ---- a file a run has not finished with is kept -----------------------------------------------------


def test_openai_refuses_to_delete_a_file_a_dashscope_job_trains_on_until_it_ends(
    client: OpenAI, ds: Any, tmp_path: Path
) -> None:
    file_id = ds_upload(ds, tmp_path, CHAT_ROWS)
    job_id = vars(
        ds.FineTunes.call(
            model="tunehouse-tiny", training_file_ids=file_id, mode="efficient_sft", hyper_parameters=LONG_DS
        ).output
    )["job_id"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.delete(file_id)
    assert exc.value.code == "invalid_state" and job_id.rsplit("-", 1)[-1] in exc.value.message
    # A 400 is not retried: the file is in use until the job ends, not for a moment.
    assert exc.value.response.request.headers["x-stainless-retry-count"] == "0"
    assert client.files.retrieve(file_id).id == file_id

    ds.FineTunes.cancel(job_id)
    wait_for(lambda: ds_status(ds, job_id)["status"] == "CANCELED", timeout=240)
    assert client.files.delete(file_id).deleted is True


def test_dashscope_and_openai_refuse_to_delete_a_file_a_qianfan_task_trains_on(
    qianfan: Any, client: OpenAI, ds: Any
) -> None:
    file_id = client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    task_id = qianfan_task(qianfan, file_id, LONG_QIANFAN)
    refused = ds.Files.delete(file_id)
    assert (refused.status_code, refused.code) == (400, "UnsupportedOperation")
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.delete(file_id)
    assert exc.value.code == "invalid_state"

    qianfan.V2.stop_task(task_id=task_id)
    wait_stopped_in_qianfan(qianfan, task_id)
    assert ds.Files.delete(file_id).status_code == 200


# ---- too few examples --------------------------------------------------------------------------------


def test_a_dashscope_job_on_too_few_examples_is_accepted_then_fails_with_the_reason(
    ds: Any, tmp_path: Path
) -> None:
    resp = ds.FineTunes.call(
        model="tunehouse-tiny", training_file_ids=ds_upload(ds, tmp_path, FEW), mode="efficient_sft"
    )
    assert resp.status_code == 200, str(resp)
    job = ds_status(ds, vars(resp.output)["job_id"])
    assert job["status"] == "FAILED" and job["code"]
    assert job["message"] == "Training file has 7 example(s), but must have at least 10 examples"


def test_a_qianfan_task_on_too_few_examples_is_created_then_fails_with_the_reason(
    qianfan: Any, client: OpenAI
) -> None:
    file_id = client.files.create(file=("few.jsonl", jsonl(FEW)), purpose="fine-tune").id
    detail = task_status(qianfan, qianfan_task(qianfan, file_id, {"epoch": 1}))
    assert detail["runStatus"] == "Failed"
    assert detail["errorMessage"] == "Training file has 7 example(s), but must have at least 10 examples"


# ---- the output name, read from its own column by every dialect ---------------------------------------


def test_openai_continues_from_a_checkpoint_of_a_qianfan_task_by_its_model_name(
    qianfan: Any, client: OpenAI
) -> None:
    file_id = client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    hp = {"epoch": 1, "learningRate": 0.003, "batchSize": 4, "maxSeqLen": 128, "saveSteps": 2}
    task_id = qianfan_task(qianfan, file_id, hp, name="ckpt-source")
    wait_for(lambda: task_status(qianfan, task_id)["runStatus"] in {"Done", "Failed"}, timeout=240)
    assert task_status(qianfan, task_id)["runStatus"] == "Done"

    key = task_id.removeprefix("task-")
    checkpoints = client.fine_tuning.jobs.checkpoints.list("ftjob-" + key).data
    names = {c.fine_tuned_model_checkpoint for c in checkpoints}
    assert f"tunehouse-tiny-ft-{key}:ckpt-step-2" in names
    job = client.fine_tuning.jobs.create(model=f"tunehouse-tiny-ft-{key}:ckpt-step-2", training_file=file_id)
    try:
        assert job.model == f"tunehouse-tiny-ft-{key}:ckpt-step-2" and job.status != "failed"
    finally:
        client.fine_tuning.jobs.cancel(job.id)
