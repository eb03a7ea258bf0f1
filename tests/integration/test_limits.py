"""Configured limits (body size, upload size, JSON depth, string length, request rate per account), each
answered in the dialect's own terms: 413, the invalid-parameter error, or the rate-limit error with
Retry-After. The server here is configured small so that small requests reach every limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import dashscope
import httpx
import pytest
from openai import APIStatusError, BadRequestError, OpenAI, RateLimitError

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.http_helpers import signed_post

BURST = 6


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path_factory.mktemp("limits"),
        "sqlite",
        tiny_model,
        make_pg_database,
        TUNEHOUSE_MAX_BODY_BYTES="4096",
        TUNEHOUSE_MAX_UPLOAD_BYTES="65536",
        TUNEHOUSE_MAX_JSON_DEPTH="4",
        TUNEHOUSE_MAX_STRING_CHARS="100",
        TUNEHOUSE_RATE_LIMIT_PER_S="0.5",
        TUNEHOUSE_RATE_BURST=str(BURST),
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def client(server: LiveServer, account: str) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=server.keys(account)["api_key"], max_retries=0)


def test_a_json_body_over_the_size_limit_is_a_413(server: LiveServer) -> None:
    with pytest.raises(APIStatusError) as exc:
        client(server, "big-body").fine_tuning.jobs.create(
            model="tunehouse-tiny", training_file="file-x", metadata={f"k{i}": "v" * 40 for i in range(100)}
        )
    assert exc.value.status_code == 413 and exc.value.code == "request_too_large"


def test_an_upload_over_the_upload_limit_is_a_413(server: LiveServer) -> None:
    with pytest.raises(APIStatusError) as exc:
        client(server, "big-upload").files.create(
            file=("t.jsonl", jsonl(CHAT_ROWS * 40)), purpose="fine-tune"
        )
    assert exc.value.status_code == 413


def test_json_deeper_than_the_limit_is_an_invalid_parameter(server: LiveServer) -> None:
    keys = server.keys("deep")
    nested = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    with pytest.raises(BadRequestError) as exc:
        client(server, "deep-openai").fine_tuning.jobs.create(
            model="tunehouse-tiny", training_file="file-x", extra_body={"extra": nested}
        )
    assert "deeper than 4" in exc.value.message
    v2 = signed_post(
        server,
        keys,
        "/v2/finetuning",
        json.dumps({"name": "x", "model": "m", "trainMode": "SFT", "hyperParameterConfig": nested}).encode(),
        {"Action": "CreateFineTuningJob"},
    )
    assert v2.status_code == 400 and v2.json()["code"] == "InvalidParameter"


def test_a_string_longer_than_the_limit_is_an_invalid_parameter(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = server.keys("long")
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", keys["api_key"])
    resp = dashscope.FineTunes.call(model="m" * 101, training_file_ids=["file-x"])
    assert (resp.status_code, resp.code) == (400, "InvalidParameter")
    assert "longer than 100" in resp.message


def test_an_account_over_its_request_rate_gets_openais_rate_limit_error_with_retry_after(
    server: LiveServer,
) -> None:
    c = client(server, "eager-openai")
    for _ in range(BURST):
        c.files.list()
    with pytest.raises(RateLimitError) as exc:
        c.files.list()
    retry_after = int(exc.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 120  # the SDKs honour values up to two minutes
    wait_for(lambda: _succeeds(c.files.list), timeout=4 * retry_after + 30, interval=0.5)
    # Another account's requests are its own.
    client(server, "calm-openai").files.list()


def _succeeds(call: Callable[[], object]) -> bool:
    try:
        call()
    except RateLimitError:
        return False
    return True


def test_dashscope_and_qianfan_callers_over_their_rate_get_their_dialects_error(server: LiveServer) -> None:
    ds_key = server.keys("eager-ds")["api_key"]
    answers = [
        httpx.get(server.url + "/api/v1/fine-tunes", headers={"Authorization": f"Bearer {ds_key}"})
        for _ in range(BURST + 1)
    ]
    assert [r.status_code for r in answers[:BURST]] == [200] * BURST
    assert answers[-1].status_code == 429 and answers[-1].json()["code"] == "Throttling"
    assert int(answers[-1].headers["retry-after"]) >= 1
    qf = server.keys("eager-qf")
    v2 = [
        signed_post(server, qf, "/v2/finetuning", b"{}", {"Action": "DescribeFineTuningJobs"})
        for _ in range(BURST + 1)
    ]
    assert v2[-1].status_code == 429 and v2[-1].json()["code"] == "RequestLimitExceeded"
    assert int(v2[-1].headers["retry-after"]) >= 1
    v1 = signed_post(server, qf, "/wenxinworkshop/finetune/jobDetail", b'{"taskId": 1, "jobId": 1}')
    assert v1.json()["error_code"] == 18  # the SDK's "QPS limit reached"
