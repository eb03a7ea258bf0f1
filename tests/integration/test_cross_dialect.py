"""One core, three dialects: a run created through any of them is read and controlled through the others."""

from __future__ import annotations

from typing import Any

import dashscope
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

LONG_QIANFAN = {"epoch": 50, "learningRate": 0.001, "batchSize": 1, "maxSeqLen": 128}


@pytest.fixture
def openai_client(server: LiveServer, alice: dict[str, str]) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=alice["api_key"], _strict_response_validation=True)


@pytest.fixture
def ds(server: LiveServer, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", alice["api_key"])
    return dashscope


def key_of(ident: str) -> str:
    return ident.rsplit("-", 1)[-1]


def read_everywhere(qianfan: Any, openai_client: OpenAI, ds: Any, key: str) -> tuple[str, str, str]:
    q = qianfan.V2.task_detail(task_id="task-" + key).body["result"]["runStatus"]
    o = openai_client.fine_tuning.jobs.retrieve("ftjob-" + key).status
    d = vars(ds.FineTunes.get("ft-" + key).output)["status"]
    return q, o, d


def finished(qianfan: Any, openai_client: OpenAI, ds: Any, key: str) -> tuple[str, str, str]:
    return wait_for(
        lambda: (
            (st := read_everywhere(qianfan, openai_client, ds, key))[0] in {"Done", "Failed", "Stopped"}
            and st
        ),
        timeout=240,
    )


def test_runs_created_through_each_dialect_read_the_same_through_the_other_two(
    qianfan: Any, openai_client: OpenAI, ds: Any
) -> None:
    file_id = openai_client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id

    job = qianfan.V2.create_job(name="cross", model="tunehouse-tiny", train_mode="SFT").body["result"][
        "jobId"
    ]
    via_qianfan = key_of(
        qianfan.V2.create_task(
            job_id=job,
            params_scale="LoRA",
            hyper_params={"epoch": 1, "learningRate": 0.003},
            dataset_config={"sourceType": "Platform", "versions": [{"versionId": file_id}]},
        ).body["result"]["taskId"]
    )
    via_openai = key_of(
        openai_client.fine_tuning.jobs.create(
            model="tunehouse-tiny",
            training_file=file_id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        ).id
    )
    via_dashscope = key_of(
        vars(
            ds.FineTunes.call(
                model="tunehouse-tiny",
                training_file_ids=file_id,
                mode="efficient_sft",
                hyper_parameters={"n_epochs": 1, "max_length": 256},
            ).output
        )["job_id"]
    )

    for key in (via_qianfan, via_openai, via_dashscope):
        assert finished(qianfan, openai_client, ds, key) == ("Done", "succeeded", "SUCCEEDED")
        output = openai_client.fine_tuning.jobs.retrieve("ftjob-" + key).fine_tuned_model
        assert output and vars(ds.FineTunes.get("ft-" + key).output)["finetuned_output"] == output


def test_a_cancel_through_one_dialect_is_seen_by_all(qianfan: Any, openai_client: OpenAI, ds: Any) -> None:
    file_id = openai_client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS * 8)), purpose="fine-tune").id
    job = qianfan.V2.create_job(name="cancelled", model="tunehouse-tiny", train_mode="SFT").body["result"][
        "jobId"
    ]
    key = key_of(
        qianfan.V2.create_task(
            job_id=job,
            params_scale="LoRA",
            hyper_params=LONG_QIANFAN,
            dataset_config={"sourceType": "Platform", "versions": [{"versionId": file_id}]},
        ).body["result"]["taskId"]
    )
    ds.FineTunes.cancel("ft-" + key)
    assert finished(qianfan, openai_client, ds, key) == ("Stopped", "cancelled", "CANCELED")


def test_another_account_sees_none_of_it_in_any_dialect(
    server: LiveServer, qianfan: Any, openai_client: OpenAI, ds: Any, bob: dict[str, str]
) -> None:
    file_id = openai_client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    job = openai_client.fine_tuning.jobs.create(
        model="tunehouse-tiny",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    key = key_of(job.id)
    as_bob = OpenAI(base_url=server.url + "/v1", api_key=bob["api_key"], max_retries=0)
    with pytest.raises(Exception) as e:
        as_bob.fine_tuning.jobs.retrieve(job.id)
    assert getattr(e.value, "status_code", None) == 404
    resp = ds.FineTunes.get("ft-" + key, api_key=bob["api_key"])
    assert resp.status_code in (400, 404) and resp.output is None
    bobs_keys = {"ak": bob["access_key"], "sk": bob["secret_key"]}
    with pytest.raises(Exception) as e:
        qianfan.V2.task_detail(task_id="task-" + key, **bobs_keys)
    assert getattr(e.value, "status_code", None) == 404
    wait_for(
        lambda: openai_client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed"}, timeout=240
    )
