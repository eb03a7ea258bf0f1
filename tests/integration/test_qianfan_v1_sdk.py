"""Qianfan V1 (legacy) fine-tuning through the official SDK: integer ids over the same records as V2."""

from __future__ import annotations

from typing import Any

import pytest
from qianfan.errors import APIError

from tests.integration.conftest import CHAT_ROWS, wait_for

FAST = {"epoch": 2, "learningRate": 0.003, "batchSize": 4, "maxSeqLen": 256}


def result(resp: Any) -> Any:
    return resp.body["result"]


def v1_task(ft: Any, name: str = "legacy-bot") -> int:
    return int(
        result(
            ft.create_task(
                name=name, base_train_type="tunehouse-tiny", train_type="tunehouse-tiny", description="legacy"
            )
        )["id"]
    )


def v1_job(
    ft: Any,
    task_id: int,
    file_id: str,
    config: dict[str, Any] | None = None,
    peft: str = "LoRA",
    rate: int = 0,
) -> int:
    body = {
        "taskId": task_id,
        "baseTrainType": "tunehouse-tiny",
        "trainType": "tunehouse-tiny",
        "trainMode": "SFT",
        "peftType": peft,
        "trainConfig": config or FAST,
        "trainset": [{"type": 1, "id": file_id}],
        "trainsetRate": rate,
    }
    return int(result(ft.create_job(body))["id"])


def test_create_task_answers_an_integer_id_and_v2_sees_the_job(qianfan: Any) -> None:
    created = result(
        qianfan.create_task(name="legacy-bot", base_train_type="tunehouse-tiny", train_type="tunehouse-tiny")
    )
    assert isinstance(created["id"], int) and created["name"] == "legacy-bot"
    listed = result(qianfan.V2.job_list(max_keys=100))["jobList"]
    assert created["uuid"] in [j["jobId"] for j in listed]


def test_a_v1_job_trains_to_finish_and_reads_the_same_through_v2(qianfan: Any, upload: Any) -> None:
    task_id = v1_task(qianfan)
    job_id = v1_job(qianfan, task_id, upload(CHAT_ROWS), rate=20)
    seen: list[dict[str, Any]] = []

    def finished() -> bool:
        d = result(qianfan.get_job(task_id=task_id, job_id=job_id))
        seen.append(d)
        return d["trainStatus"] != "RUNNING"

    wait_for(finished)
    last = seen[-1]
    assert last["trainStatus"] == "FINISH" and last["progress"] == 100
    assert last["taskId"] == task_id and last["id"] == job_id and last["version"] == 1
    assert last["peftType"] == "LoRA" and last["finishTime"] != "0000-00-00 00:00:00"
    progress = [d["progress"] for d in seen]
    assert progress == sorted(progress)
    v2_tasks = result(
        qianfan.V2.task_list(
            job_id=result(
                qianfan.create_task(
                    name="other", base_train_type="tunehouse-tiny", train_type="tunehouse-tiny"
                )
            )["uuid"]
        )
    )
    assert v2_tasks["taskList"] == []


def test_stop_job_stops_a_running_job(qianfan: Any, upload: Any) -> None:
    task_id = v1_task(qianfan)
    job_id = v1_job(qianfan, task_id, upload(CHAT_ROWS * 8), config={**FAST, "epoch": 50, "batchSize": 1})
    # The SDK type-hints stop_job's ids as strings: numeric strings must work.
    assert result(qianfan.stop_job(task_id=str(task_id), job_id=str(job_id))) is True
    wait_for(lambda: result(qianfan.get_job(task_id=task_id, job_id=job_id))["trainStatus"] == "STOP")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"trainConfig": {"epoch": 99}}, "epoch"),
        ({"peftType": "Adapters"}, "peftType"),
        ({"trainMode": "RLHF"}, "trainMode"),
        ({"trainsetRate": 50}, "trainsetRate"),
        ({"trainset": [{"type": 1, "id": 999999}]}, "trainset"),
        ({"trainType": "no-such-model", "baseTrainType": "no-such-model"}, "trainType"),
    ],
)
def test_create_job_rejects_invalid_settings_with_500001(
    qianfan: Any, upload: Any, change: dict[str, Any], needle: str
) -> None:
    task_id = v1_task(qianfan)
    body = {
        "taskId": task_id,
        "baseTrainType": "tunehouse-tiny",
        "trainType": "tunehouse-tiny",
        "trainMode": "SFT",
        "peftType": "LoRA",
        "trainConfig": FAST,
        "trainset": [{"type": 1, "id": upload(CHAT_ROWS)}],
        **change,
    }
    with pytest.raises(APIError) as e:
        qianfan.create_job(body)
    assert e.value.error_code == 500001 and needle in e.value.error_msg


def test_create_task_rejects_a_one_character_name(qianfan: Any) -> None:
    with pytest.raises(APIError) as e:
        qianfan.create_task(name="x", base_train_type="tunehouse-tiny", train_type="tunehouse-tiny")
    assert e.value.error_code == 500001


def test_unknown_ids_answer_not_found(qianfan: Any) -> None:
    task_id = v1_task(qianfan)
    with pytest.raises(APIError) as e:
        qianfan.get_job(task_id=task_id, job_id=987654)
    assert e.value.error_code == 500002


def test_another_accounts_v1_ids_are_not_found(qianfan: Any, upload: Any, bob: dict[str, str]) -> None:
    task_id = v1_task(qianfan)
    job_id = v1_job(qianfan, task_id, upload(CHAT_ROWS))
    with pytest.raises(APIError) as e:
        qianfan.get_job(task_id=task_id, job_id=job_id, ak=bob["access_key"], sk=bob["secret_key"])
    assert e.value.error_code == 500002
    wait_for(lambda: result(qianfan.get_job(task_id=task_id, job_id=job_id))["trainStatus"] != "RUNNING")
