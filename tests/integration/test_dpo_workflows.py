"""Preference training (DPO) end to end through each dialect, on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dashscope
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.integration.conftest import jsonl, wait_for

DASHSCOPE_PAIRS = [
    {
        "messages": [{"role": "user", "content": f"Pick a colour for item {i}."}],
        "chosen": {"role": "assistant", "content": "Blue."},
        "rejected": {"role": "assistant", "content": "No."},
    }
    for i in range(12)
]
OPENAI_PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Pick a colour for item {i}."}]},
        "preferred_output": [{"role": "assistant", "content": "Blue."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(12)
]


def test_a_dashscope_dpo_lora_job_succeeds(
    server: LiveServer, alice: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", alice["api_key"])
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(DASHSCOPE_PAIRS))
    file_id = dashscope.Files.upload(str(path)).output["uploaded_files"][0]["file_id"]
    job = vars(
        dashscope.FineTunes.call(
            model="tunehouse-tiny",
            training_file_ids=file_id,
            mode="dpo_lora",
            hyper_parameters={"n_epochs": 2, "max_length": 128},
        ).output
    )
    done = wait_for(
        lambda: (
            (j := vars(dashscope.FineTunes.get(job["job_id"]).output))["status"]
            in {"SUCCEEDED", "FAILED", "CANCELED"}
            and j
        ),
        timeout=240,
    )
    assert done["status"] == "SUCCEEDED", done
    assert done["finetuned_output"]


def test_an_openai_dpo_job_succeeds_with_reward_metrics(server: LiveServer, alice: dict[str, str]) -> None:
    client = OpenAI(base_url=server.url + "/v1", api_key=alice["api_key"], _strict_response_validation=True)
    file_id = client.files.create(file=("pairs.jsonl", jsonl(OPENAI_PAIRS)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tunehouse-tiny",
        training_file=file_id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.2}}},
    )
    done = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status in {"succeeded", "failed", "cancelled"}
            and j
        ),
        timeout=240,
    )
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.trained_tokens


def test_a_qianfan_dpo_task_reaches_done(qianfan: Any, upload: Any) -> None:
    job = qianfan.V2.create_job(name="prefs", model="tunehouse-tiny", train_mode="DPO").body["result"][
        "jobId"
    ]
    task = qianfan.V2.create_task(
        job_id=job,
        params_scale="FullFineTuning",
        hyper_params={"epoch": 2, "dpoBeta": 0.1},
        dataset_config={"sourceType": "Platform", "versions": [{"versionId": upload(DASHSCOPE_PAIRS)}]},
    ).body["result"]["taskId"]
    done = wait_for(
        lambda: (
            (d := qianfan.V2.task_detail(task_id=task).body["result"])["runStatus"]
            in {"Done", "Failed", "Stopped"}
            and d
        ),
        timeout=240,
    )
    assert done["runStatus"] == "Done", done
