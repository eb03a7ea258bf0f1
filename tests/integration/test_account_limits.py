"""An account limited to N active runs: every dialect refuses the next with its own rate-limit error, marked
not to be retried, and accepts it again once a run ends. Driven by the official SDKs against a live server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import openai
import pytest
from dashscope.v2.errors import RateLimitError as DashScopeRateLimitError
from qianfan.errors import APIError, RequestError

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

LONG = {"n_epochs": 50, "batch_size": 1, "learning_rate_multiplier": 1.0}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("limits"), "postgres", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def limited_account(server: LiveServer, name: str, limit: int) -> dict[str, str]:
    keys = server.keys(name)
    said = json.loads(server.cli("accounts", "limit", name, "--max-active-runs", str(limit), "--json"))
    assert said == {"account": name, "max_active_runs": limit}
    return keys


def openai_client(server: LiveServer, keys: dict[str, str], sent: list[str] | None = None) -> openai.OpenAI:
    hooks = {"request": [lambda request: sent.append(request.url.path)]} if sent is not None else {}
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=keys["api_key"], http_client=httpx.Client(event_hooks=hooks)
    )


def start_long_job(client: openai.OpenAI) -> tuple[str, str]:
    training = client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tunehouse-tiny",
        training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": LONG}},
    )
    return job.id, training


@pytest.fixture(scope="module")
def erin(server: LiveServer) -> Iterator[dict[str, str]]:
    """An account limited to one active run, which it already has."""
    keys = limited_account(server, "erin", 1)
    client = openai_client(server, keys)
    job_id, training = start_long_job(client)
    yield {**keys, "job_id": job_id, "training_file": training}
    client.fine_tuning.jobs.cancel(job_id)


@pytest.fixture
def qianfan_sdk(server: LiveServer, erin: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", erin["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", erin["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    return FineTune


def test_openai_refuses_with_a_rate_limit_error_that_is_not_retried(
    server: LiveServer, erin: dict[str, str]
) -> None:
    sent: list[str] = []
    client = openai_client(server, erin, sent)
    with pytest.raises(openai.RateLimitError) as refused:
        client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=erin["training_file"])
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert "1 queued or running at once" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert sent == ["/v1/fine_tuning/jobs"]  # one request: the SDK's retries were told off
    assert [j.id for j in client.fine_tuning.jobs.list()] == [erin["job_id"]]


def test_dashscope_refuses_with_throttling_in_both_sdk_styles(
    server: LiveServer, erin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", erin["api_key"])
    args = {"model": "tunehouse-tiny", "training_file_ids": erin["training_file"], "mode": "efficient_sft"}
    old_style = dashscope.FineTunes.call(**args)
    assert (old_style.status_code, old_style.code) == (429, "Throttling")
    client = dashscope.Client(base_url=server.url + "/api/v1", api_key=erin["api_key"])
    try:
        with pytest.raises(DashScopeRateLimitError) as refused:
            client.fine_tunes.create(model="tunehouse-tiny", training_file_ids=erin["training_file"])
    finally:
        client.close()
    assert refused.value.status_code == 429 and "Too many active fine-tuning jobs" in refused.value.message


def test_qianfan_v2_refuses_with_429_and_v1_with_its_request_limit_code(
    qianfan_sdk: Any, erin: dict[str, str]
) -> None:
    job = qianfan_sdk.V2.create_job(name="limited", model="tunehouse-tiny", train_mode="SFT").body["result"]
    dataset = {"sourceType": "Platform", "versions": [{"versionId": erin["training_file"]}]}
    with pytest.raises(RequestError) as refused:
        qianfan_sdk.V2.create_task(
            job_id=job["jobId"], params_scale="LoRA", hyper_params={"epoch": 1}, dataset_config=dataset
        )
    assert refused.value.status_code == 429 and "QuotaLimitExceeded" in str(refused.value)
    task = qianfan_sdk.create_task(
        name="limited-v1", base_train_type="tunehouse-tiny", train_type="tunehouse-tiny"
    ).body["result"]
    with pytest.raises(APIError) as legacy:
        qianfan_sdk.create_job(
            {
                "taskId": task["id"],
                "baseTrainType": "tunehouse-tiny",
                "trainType": "tunehouse-tiny",
                "trainMode": "SFT",
                "peftType": "LoRA",
                "trainConfig": {"epoch": 1},
                "trainset": [{"type": 1, "id": erin["training_file"]}],
            }
        )
    assert legacy.value.error_code == 4 and "Too many active fine-tuning jobs" in legacy.value.error_msg


def test_a_run_that_ends_frees_its_place_and_the_limit_can_be_lifted(server: LiveServer) -> None:
    keys = limited_account(server, "frank", 1)
    client = openai_client(server, keys)
    first, training = start_long_job(client)
    with pytest.raises(openai.RateLimitError):
        start_long_job(client)
    client.fine_tuning.jobs.cancel(first)
    # "cancelled" is shown at once; the place is free when the trainer has saved its checkpoint and exited.
    ended = "Fine-tuning job cancelled"
    wait_for(lambda: ended in [e.message for e in client.fine_tuning.jobs.list_events(first)])
    second, _ = start_long_job(client)
    lifted = json.loads(server.cli("accounts", "limit", "frank", "--no-limit", "--json"))
    assert lifted == {"account": "frank", "max_active_runs": None}
    third = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training)
    for job_id in (second, third.id):
        client.fine_tuning.jobs.cancel(job_id)


def test_the_cli_wants_exactly_one_of_a_limit_or_no_limit(server: LiveServer) -> None:
    for args in ([], ["--max-active-runs", "2", "--no-limit"]):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            server.cli("accounts", "limit", "gail", *args)
        assert refused.value.returncode == 2
        assert "exactly one of --max-active-runs N and --no-limit" in refused.value.stderr
