"""The HTTP surface at its edges: unknown paths, wrong methods and hostile input each answer in the
dialect's own envelope, bounded, never a 500 or FastAPI's bare `{"detail": ...}` (PostgreSQL: the stricter
store, where NUL text and 64-bit overflows used to surface)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.http_helpers import bce_headers, console_client, no_traceback, signed_post

BIG = 2**63
DEEP = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path_factory.mktemp("edges"),
        "postgres",
        tiny_model,
        make_pg_database,
        TUNEHOUSE_LOG_LEVEL="DEBUG",
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> dict[str, str]:
    return server.keys("edgy")


@pytest.fixture(scope="module")
def bearer(keys: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys['api_key']}"}


@pytest.fixture(scope="module")
def openai_client(server: LiveServer, keys: dict[str, str]) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], max_retries=0)


@pytest.fixture(scope="module")
def failed_job(openai_client: OpenAI) -> str:
    """A job that exists without a trainer: too few examples, so it fails in validation."""
    f = openai_client.files.create(file=("few.jsonl", jsonl(CHAT_ROWS[:2])), purpose="fine-tune")
    return openai_client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=f.id).id


def envelope_of(r: httpx.Response) -> str:
    """Which dialect's error envelope the body is, by its shape."""
    no_traceback(r)
    if r.headers.get("content-type", "").startswith("text/html"):
        return "console"
    body = r.json()
    if "requestId" in body and "code" in body:
        return "qianfan_v2"
    if "error_code" in body and "log_id" in body:
        return "qianfan_v1"
    if "request_id" in body and "code" in body:
        return "dashscope"
    if isinstance(body.get("error"), dict) and "message" in body["error"]:
        return "openai"
    return "unknown"


PREFIXES = [
    ("/v2", "qianfan_v2"),
    ("/wenxinworkshop", "qianfan_v1"),
    ("/wenxinworkshop/finetune", "qianfan_v1"),
    ("/api/v1", "dashscope"),
    ("/api/v1/fine-tunes/x/y/z", "dashscope"),
    ("/v1", "openai"),
    ("/v1/fine_tuning", "openai"),
    ("/console", "console"),
]


# ---- defect 3: every path under a prefix answers in its dialect -----------------------------------


@pytest.mark.parametrize(("prefix", "dialect"), PREFIXES)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_an_unknown_path_under_a_prefix_is_a_404_in_that_dialect(
    server: LiveServer, prefix: str, dialect: str, method: str
) -> None:
    r = httpx.request(method, f"{server.url}{prefix}/no-such-thing")
    assert r.status_code == 404
    assert envelope_of(r) == dialect


@pytest.mark.parametrize(
    ("path", "dialect"),
    [("/v2/finetuning", "qianfan_v2"), ("/api/v1/files", "dashscope"), ("/v1/files", "openai")],
)
def test_a_method_a_route_does_not_take_is_a_405_in_that_dialect(
    server: LiveServer, path: str, dialect: str
) -> None:
    r = httpx.request("OPTIONS", server.url + path)
    assert r.status_code == 405
    assert envelope_of(r) == dialect


def test_the_qianfan_sdk_with_a_trailing_slash_base_url_reaches_v2(
    server: LiveServer, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    # The SDK then requests `//v2/finetuning` (signed as `/v2/finetuning`), as the Node SDK does.
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url + "/")
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    created = FineTune.V2.create_job(name="slashes", model="tunehouse-tiny", train_mode="SFT")
    assert created.body["result"]["jobId"].startswith("job-")


def test_duplicate_slashes_anywhere_reach_the_route(server: LiveServer, bearer: dict[str, str]) -> None:
    r = httpx.get(server.url + "//v1///files", headers=bearer)
    assert r.status_code == 200 and r.json()["object"] == "list"


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/v1/files/file-abc%0A", "openai"),
        ("/v1/fine_tuning/jobs%0A", "openai"),
        ("/api/v1/fine-tunes/ft-x%0D%0A", "dashscope"),
        ("/v2/finetuning%00", "qianfan_v2"),
    ],
)
def test_a_path_with_control_characters_is_a_bad_request_in_its_dialect(
    server: LiveServer, bearer: dict[str, str], path: str, dialect: str
) -> None:
    r = httpx.get(server.url + path, headers=bearer)
    assert r.status_code == 400
    assert envelope_of(r) == dialect


# ---- defect 9: inputs that used to reach a 500 ----------------------------------------------------


def test_deeply_nested_json_is_refused_by_every_json_route(
    server: LiveServer, keys: dict[str, str], bearer: dict[str, str]
) -> None:
    json_headers = {**bearer, "Content-Type": "application/json"}
    openai = httpx.post(server.url + "/v1/fine_tuning/jobs", headers=json_headers, content=DEEP)
    assert openai.status_code == 400 and envelope_of(openai) == "openai"
    ds = httpx.post(server.url + "/api/v1/fine-tunes", headers=json_headers, content=DEEP)
    assert ds.status_code == 400 and envelope_of(ds) == "dashscope"
    assert ds.json()["code"] == "InvalidParameter"
    v2 = signed_post(server, keys, "/v2/finetuning", DEEP, {"Action": "CreateFineTuningJob"})
    assert v2.status_code == 400 and v2.json()["code"] == "InvalidParameter"
    v1 = signed_post(server, keys, "/wenxinworkshop/finetune/createTask", DEEP)
    assert envelope_of(v1) == "qianfan_v1" and v1.json()["error_code"] == 500001


def test_a_deeply_nested_upload_line_is_named_as_invalid(
    server: LiveServer, openai_client: OpenAI, bearer: dict[str, str]
) -> None:
    deep_line = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    with pytest.raises(BadRequestError) as exc:
        openai_client.files.create(file=("deep.jsonl", deep_line), purpose="fine-tune")
    assert "line 1" in str(exc.value)
    r = httpx.post(server.url + "/api/v1/files", headers=bearer, files={"files": ("deep.jsonl", deep_line)})
    assert r.status_code == 400 and envelope_of(r) == "dashscope"


def test_64_bit_overflowing_integers_are_invalid_parameters(
    server: LiveServer, keys: dict[str, str], openai_client: OpenAI, failed_job: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", keys["api_key"])
    listed = dashscope.FineTunes.list(page_no=BIG)
    assert (listed.status_code, listed.code) == (400, "InvalidParameter")
    logs = httpx.get(
        f"{server.url}/api/v1/fine-tunes/{failed_job}/logs",
        params={"offset": BIG},
        headers={"Authorization": f"Bearer {keys['api_key']}"},
    )
    assert logs.status_code in (400, 404) and envelope_of(logs) == "dashscope"
    with pytest.raises(BadRequestError) as exc:
        openai_client.fine_tuning.jobs.list_events(failed_job, after=f"ftevent-{failed_job[6:]}-{BIG}")
    assert exc.value.body["param"] == "after"  # type: ignore[index]
    v1 = signed_post(
        server, keys, "/wenxinworkshop/finetune/jobDetail", json.dumps({"taskId": BIG, "jobId": BIG}).encode()
    )
    assert v1.json()["error_code"] == 500001  # not 500000, which the SDK retries
    v2 = signed_post(
        server,
        keys,
        "/v2/finetuning",
        json.dumps({"maxKeys": BIG}).encode(),
        {"Action": "DescribeFineTuningJobs"},
    )
    assert v2.status_code == 400 and v2.json()["code"] == "InvalidParameter"


def test_console_paging_and_stream_resumption_refuse_what_is_not_a_number(
    server: LiveServer, keys: dict[str, str], failed_job: str
) -> None:
    with console_client(server, keys["api_key"]) as console:
        for page in ("abc", str(BIG)):
            r = console.get("/console/jobs", params={"page": page})
            assert r.status_code == 400 and envelope_of(r) == "console"
        run_key = failed_job.removeprefix("ftjob-")
        stream = console.get(f"/console/runs/{run_key}/stream", headers={"Last-Event-ID": str(BIG)})
        assert stream.status_code == 200 and "event: end" in stream.text
        after = console.get(f"/console/runs/{run_key}/stream", params={"after": BIG})
        assert after.status_code == 400 and envelope_of(after) == "console"


def test_nul_characters_in_text_are_invalid_parameters_on_postgresql(
    server: LiveServer, keys: dict[str, str], bearer: dict[str, str], openai_client: OpenAI
) -> None:
    from qianfan.resources.console.finetune import FineTune  # noqa: F401 - the SDK signs below

    v2 = signed_post(
        server,
        keys,
        "/v2/finetuning",
        json.dumps({"name": "a\x00b", "model": "tunehouse-tiny", "trainMode": "SFT"}).encode(),
        {"Action": "CreateFineTuningJob"},
    )
    assert v2.status_code == 400 and v2.json()["code"] == "InvalidParameter"
    marker = signed_post(
        server,
        keys,
        "/v2/finetuning",
        json.dumps({"marker": "job-\x00"}).encode(),
        {"Action": "DescribeFineTuningJobs"},
    )
    assert marker.status_code == 400
    with pytest.raises(BadRequestError):
        openai_client.fine_tuning.jobs.list(extra_query={"metadata[k]": "v\x00"})
    upload = httpx.post(
        server.url + "/api/v1/files",
        headers=bearer,
        files={"files": ("a\x00.jsonl", jsonl(CHAT_ROWS))},
        data={"descriptions": "d\x00"},
    )
    assert upload.status_code == 400 and envelope_of(upload) == "dashscope"
    with console_client(server, keys["api_key"]) as console:
        form = console.get("/console/jobs")
        csrf = form.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        r = console.post("/console/jobs", data={"csrf_token": csrf, "name": "n\x00", "description": "x"})
        assert r.status_code == 400 and envelope_of(r) == "console"


@pytest.mark.parametrize("task_id", ["task-\r\nX-Injected: 1", "task-\x00", "task-" + "x" * 100_000])
def test_qianfan_error_headers_carry_no_raw_user_text(
    server: LiveServer, keys: dict[str, str], task_id: str
) -> None:
    r = signed_post(
        server,
        keys,
        "/v2/finetuning",
        json.dumps({"taskId": task_id}).encode(),
        {"Action": "DescribeFineTuningTask"},
    )
    assert r.status_code in (400, 404) and envelope_of(r) == "qianfan_v2"
    header = r.headers["X-Bce-Error-Message"]
    assert len(header) <= 300 and "X-Injected" not in r.headers
    assert len(r.content) < 4096


def test_error_bodies_echo_input_only_boundedly(
    server: LiveServer, bearer: dict[str, str], openai_client: OpenAI
) -> None:
    huge = "m" * 5_000_000
    with pytest.raises(BadRequestError) as exc:
        openai_client.fine_tuning.jobs.create(model=huge, training_file="file-nope")
    assert len(exc.value.response.content) < 4096
    with pytest.raises(NotFoundError) as missing:
        openai_client.fine_tuning.jobs.retrieve("ftjob-" + "x" * 50_000)
    assert len(missing.value.response.content) < 4096
    ds = httpx.get(server.url + "/api/v1/fine-tunes", params={"page_size": "9" * 50_000}, headers=bearer)
    assert ds.status_code == 400 and len(ds.content) < 4096


def test_the_bce_signature_headers_are_what_the_sdk_sends(server: LiveServer, keys: dict[str, str]) -> None:
    headers = bce_headers(server, keys, "/v2/finetuning", {"Action": "DescribeFineTuningJobs"})
    assert "x-bce-date" in headers and headers["Authorization"].startswith("bce-auth-v1/")


# ---- defect 5: a client that goes away is not an error --------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/fine_tuning/jobs", "application/json"),
        ("/v1/files", "multipart/form-data; boundary=x"),
        ("/api/v1/fine-tunes", "application/json"),
        ("/v2/finetuning?Action=CreateFineTuningJob", "application/json"),
    ],
)
def test_a_client_that_disconnects_mid_body_is_logged_at_debug_only(
    server: LiveServer, keys: dict[str, str], path: str, content_type: str
) -> None:
    log = server.home / "server.log"
    start = log.stat().st_size
    route, _, action = path.partition("?Action=")
    signed = bce_headers(server, keys, route, {"Action": action}) if action else {}
    headers = {
        "Authorization": f"Bearer {keys['api_key']}",
        **signed,
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": content_type,
        "Content-Length": "100000",
    }
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # The start of a well-formed body of its kind, so the one thing wrong is that the client is gone.
        if content_type.startswith("multipart/"):
            body = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"text": '
        else:
            body = b'{"model": "tunehouse-tiny", '
        sock.sendall(head.encode() + body)  # and then the client is gone

    def logged() -> list[dict[str, Any]]:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [json.loads(line) for line in f.read().splitlines() if line.startswith(b"{")]
        return lines if any("client disconnected" in r["message"] for r in lines) else []

    records = wait_for(logged, timeout=60)
    assert [r for r in records if "client disconnected" in r["message"]][0]["level"] == "DEBUG"
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]


# ---- defect 12: the BCE date header is required --------------------------------------------------


@pytest.mark.parametrize("date", [None, "yesterday"])
def test_a_bce_request_without_a_valid_x_bce_date_is_a_401(
    server: LiveServer, keys: dict[str, str], date: str | None
) -> None:
    query = {"Action": "DescribeFineTuningJobs"}
    headers = bce_headers(server, keys, "/v2/finetuning", query)
    if date is None:
        del headers["x-bce-date"]
    else:
        headers["x-bce-date"] = date
    r = httpx.post(server.url + "/v2/finetuning", params=query, headers=headers, content=b"{}")
    assert r.status_code == 401 and r.json()["code"] == "AccessDenied"
    assert "x-bce-date" in r.json()["message"]


# ---- guarantee 4: structured logs joined to envelopes by request id, and no secrets in them ---------


def log_records(server: LiveServer) -> list[dict[str, Any]]:
    lines = (server.home / "server.log").read_bytes().splitlines()
    return [json.loads(line) for line in lines if line.startswith(b"{")]


def test_every_dialects_error_envelope_carries_the_request_id_of_its_log_lines(
    server: LiveServer, keys: dict[str, str], bearer: dict[str, str]
) -> None:
    ids = {
        "openai": httpx.get(server.url + "/v1/files/file-nope", headers=bearer).headers["x-request-id"],
        "dashscope": httpx.get(server.url + "/api/v1/fine-tunes/ft-nope", headers=bearer).json()[
            "request_id"
        ],
        "qianfan_v2": signed_post(
            server, keys, "/v2/finetuning", b'{"taskId": "task-nope"}', {"Action": "DescribeFineTuningTask"}
        ).json()["requestId"],
        "qianfan_v1": signed_post(
            server, keys, "/wenxinworkshop/finetune/jobDetail", b'{"taskId": 1, "jobId": 1}'
        ).json()["log_id"],
    }
    wait_for(lambda: set(ids.values()) <= {r.get("request_id") for r in log_records(server)}, timeout=60)
    assert len(set(ids.values())) == len(ids)


def test_the_log_of_a_full_sdk_workflow_holds_none_of_its_secrets(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    secrets = server.keys("secretive")
    client = OpenAI(base_url=server.url + "/v1", api_key=secrets["api_key"])
    training = client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tunehouse-tiny",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "succeeded", timeout=600)
    list(client.fine_tuning.jobs.list_events(job.id))
    list(client.fine_tuning.jobs.checkpoints.list(job.id))
    client.files.content(training.id)

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", secrets["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", secrets["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    job_id = FineTune.V2.create_job(name="quiet", model="tunehouse-tiny", train_mode="SFT").body["result"][
        "jobId"
    ]
    FineTune.V2.job_list()
    cfg = {"sourceType": "Platform", "versions": [{"versionId": training.id}]}
    task = FineTune.V2.create_task(
        job_id=job_id, params_scale="LoRA", hyper_params={"epoch": 1}, dataset_config=cfg
    ).body["result"]["taskId"]
    FineTune.V2.stop_task(task_id=task)

    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", secrets["api_key"])
    listed = dashscope.FineTunes.list()
    assert listed.status_code == 200
    assert dashscope.FineTunes.get(listed.output["jobs"][0]["job_id"]).status_code == 200
    with console_client(server, secrets["api_key"]) as console:
        assert console.get("/console/jobs").status_code == 200

    log = (server.home / "server.log").read_text()
    assert log_records(server), "the server logs JSON lines"
    for name in ("secret_key", "api_key"):
        assert secrets[name] not in log, f"the {name} is in the server log"
