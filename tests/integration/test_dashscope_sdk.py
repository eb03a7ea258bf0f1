"""DashScope fine-tunes and files driven by the official dashscope SDK (1.x classes and the 2.x Client)
against a live server on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
from dashscope.v2.errors import APIStatusError, AuthenticationError, BadRequestError, NotFoundError

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, TEXT_ROWS, jsonl, wait_for

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED"}
FAST = {"n_epochs": 2, "learning_rate": "3e-3", "batch_size": 4, "max_length": 256}
LONG = {"n_epochs": 50, "learning_rate": 1e-3, "batch_size": 1, "max_length": 128}
JOB_ID = re.compile(r"^ft-\d{12}-[a-z0-9]{12}$")


# ---- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def ds(server: LiveServer, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The 1.x-style module API, configured through its documented module attributes."""
    monkeypatch.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(dashscope, "api_key", alice["api_key"])
    return dashscope


@pytest.fixture
def client(server: LiveServer, alice: dict[str, str]) -> Iterator[Any]:
    c = dashscope.Client(base_url=server.url + "/api/v1", api_key=alice["api_key"])
    yield c
    c.close()


def data_file(tmp_path: Path, rows: list[Any], name: str = "train.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(rows))
    return str(path)


def upload(ds: Any, tmp_path: Path, rows: list[Any] = CHAT_ROWS, **kw: Any) -> str:
    resp = ds.Files.upload(data_file(tmp_path, rows), **kw)
    assert resp.status_code == 200, str(resp)
    return str(resp.output["uploaded_files"][0]["file_id"])


def fields(output: Any) -> dict[str, Any]:
    """The 1.x job object's fields (its dataclass repr needs every field, which only finished jobs have)."""
    return dict(vars(output))


def create(ds: Any, file_id: str, hp: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("mode", "efficient_sft")
    resp = ds.FineTunes.call(
        model="tunehouse-tiny", training_file_ids=file_id, hyper_parameters=hp or FAST, **kw
    )
    assert resp.status_code == 200, str(resp)
    return fields(resp.output)


def get(ds: Any, job_id: str, **kw: Any) -> dict[str, Any]:
    resp = ds.FineTunes.get(job_id, **kw)
    assert resp.status_code == 200, str(resp)
    return fields(resp.output)


def wait_terminal(ds: Any, job_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (j := get(ds, job_id))["status"] in TERMINAL and j, timeout=240))


def cancel_now(ds: Any, job_id: str) -> None:
    """Stops a job the test only needed as a record, so it does not occupy a trainer slot."""
    assert ds.FineTunes.cancel(job_id).output["status"] == "success"
    wait_terminal(ds, job_id)


def raw(server: LiveServer, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.request(method, server.url + "/api/v1" + path, headers=headers, timeout=30, **kw)


def error_of(resp: Any) -> tuple[int, str, str]:
    assert resp.output is None, str(resp)
    return int(resp.status_code), str(resp.code), str(resp.message)


# ---- files -----------------------------------------------------------------------------------------


def test_1x_upload_answers_a_file_id_that_get_and_list_show(ds: Any, tmp_path: Path) -> None:
    resp = ds.Files.upload(data_file(tmp_path, CHAT_ROWS), description="sums")
    assert resp.status_code == 200 and resp.output["failed_uploads"] == []
    uploaded = resp.output["uploaded_files"][0]
    assert uploaded["name"] == "train.jsonl" and uploaded["file_id"].startswith("file-")
    got = ds.Files.get(uploaded["file_id"]).output
    assert got["file_id"] == uploaded["file_id"] and got["name"] == "train.jsonl"
    assert got["size"] == len(jsonl(CHAT_ROWS)) and got["description"] == "sums"
    assert got["purpose"] == "fine-tune" and len(got["md5"]) == 32
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", got["gmt_create"])
    listed = ds.Files.list(page=1, page_size=100).output
    assert uploaded["file_id"] in [f["file_id"] for f in listed["files"]]
    assert listed["total"] >= 1 and listed["page_no"] == 1 and listed["page_size"] == 100


def test_1x_delete_removes_the_file_and_later_lookups_say_file_not_found(ds: Any, tmp_path: Path) -> None:
    file_id = upload(ds, tmp_path)
    assert ds.Files.delete(file_id).status_code == 200
    assert error_of(ds.Files.get(file_id)) == (400, "InvalidParameter", "File not found.")
    assert error_of(ds.Files.delete(file_id)) == (400, "InvalidParameter", "File not found.")


def test_2x_files_upload_get_list_delete_and_not_found_error(client: Any, tmp_path: Path) -> None:
    f = client.files.upload(file_path=data_file(tmp_path, TEXT_ROWS, "corpus.jsonl"), description="river")
    assert f.file_id.startswith("file-") and f.name == "corpus.jsonl"
    got = client.files.get(f.file_id)
    assert got.size == len(jsonl(TEXT_ROWS)) and got.uploaded_at
    assert f.file_id in [x.file_id for x in client.files.list(page_size=100).files]
    assert client.files.delete(f.file_id).deleted is True
    with pytest.raises(NotFoundError):
        client.files.get(f.file_id)


def test_upload_with_bad_lines_is_rejected_naming_the_lines(ds: Any, tmp_path: Path) -> None:
    bad = [CHAT_ROWS[0], {"messages": [{"role": "user", "content": "hi"}]}, {"messages": "nope"}]
    status, code, message = error_of(ds.Files.upload(data_file(tmp_path, bad)))
    assert (status, code) == (400, "InvalidParameter")
    assert "line 2" in message and "line 3" in message


def test_a_multi_file_upload_reports_bad_files_in_failed_uploads(server: LiveServer, alice: Any) -> None:
    files = [("files", ("good.jsonl", jsonl(CHAT_ROWS))), ("files", ("bad.jsonl", b'{"text": ""}\n'))]
    r = raw(server, "POST", "/files", alice["api_key"], files=files, data={"descriptions": ["a", "b"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    data = r.json()["data"]
    assert [u["name"] for u in data["uploaded_files"]] == ["good.jsonl"]
    assert data["failed_uploads"][0]["name"] == "bad.jsonl"
    assert "line 1" in data["failed_uploads"][0]["message"]


def test_file_list_rejects_a_page_size_out_of_range(ds: Any) -> None:
    assert error_of(ds.Files.list(page=1, page_size=101))[:2] == (400, "InvalidParameter")


def test_deleting_a_file_an_unfinished_job_trains_on_is_unsupported(ds: Any, tmp_path: Path) -> None:
    file_id = upload(ds, tmp_path)
    job = create(ds, file_id, LONG)
    assert error_of(ds.Files.delete(file_id))[:2] == (400, "UnsupportedOperation")
    cancel_now(ds, job["job_id"])
    assert ds.Files.delete(file_id).status_code == 200


# ---- auth ------------------------------------------------------------------------------------------


def test_an_unknown_api_key_is_401_invalid_api_key(ds: Any, server: LiveServer) -> None:
    assert error_of(ds.FineTunes.list(api_key="sk-nobody"))[:2] == (401, "InvalidApiKey")
    with pytest.raises(AuthenticationError):
        dashscope.Client(base_url=server.url + "/api/v1", api_key="sk-nobody").fine_tunes.list()


def test_a_request_without_a_bearer_token_is_401_in_json(server: LiveServer) -> None:
    r = httpx.get(server.url + "/api/v1/fine-tunes", timeout=10)
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "InvalidApiKey" and r.json()["request_id"]


# ---- create: the job object and validation ---------------------------------------------------------


def test_create_answers_a_pending_job_echoing_only_the_declared_settings(ds: Any, tmp_path: Path) -> None:
    file_id = upload(ds, tmp_path)
    hp = {**LONG, "learning_rate": "1e-3", "max_length": 200, "warmup_ratio": 0.1, "my_knob": "x"}
    job = create(ds, file_id, hp, validation_file_ids=file_id, finetuned_output=f"echo-{tmp_path.name[-8:]}")
    try:
        assert JOB_ID.match(job["job_id"]) and job["job_name"] == job["job_id"]
        assert job["status"] == "PENDING" and job["training_type"] == "efficient_sft"
        assert job["hyper_parameters"] == hp
        assert job["model"] == job["base_model"] == "tunehouse-tiny"
        assert job["training_file_ids"] == [file_id] and job["validation_file_ids"] == [file_id]
        assert job["group"] == "llm" and job["creator"] == "alice"
        assert not {"code", "message", "end_time", "finetuned_output", "usage"} & set(job)
    finally:
        cancel_now(ds, job["job_id"])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"training_file_ids": []}, "Missing training files"),
        ({"model": ""}, "Missing model"),
        ({"model": "no-such-model"}, "model"),
        ({"training_file_ids": ["file-000000000000"]}, "file-000000000000"),
        ({"validation_file_ids": ["file-zzz"]}, "validation_file_ids"),
        ({"mode": "rlhf"}, "training_type"),
        ({"hp": {"n_epochs": 0}}, "n_epochs"),
        ({"hp": {"n_epochs": 51}}, "n_epochs"),
        ({"hp": {"n_epochs": "three"}}, "n_epochs"),
        ({"hp": {"learning_rate": "fast"}}, "learning_rate"),
        ({"hp": {"learning_rate": -1e-4}}, "learning_rate"),
        ({"hp": {"learning_rate": 0.5}}, "learning_rate"),
        ({"hp": {"batch_size": 0}}, "batch_size"),
        ({"hp": {"max_length": 4096}}, "max_length"),
        ({"hp": {"split": 1.2}}, "split"),
        ({"hp": {"split": 0.3}}, "split"),
        ({"hp": {"lora_rank": 3}}, "lora_rank"),
        ({"hp": {"lora_dropout": 0.9}}, "lora_dropout"),
        ({"hp": {"target_modules": "SOME"}}, "target_modules"),
        ({"hp": {"max_grad_norm": 0}}, "max_grad_norm"),
        ({"finetuned_output": "bad name!"}, "model_name"),
    ],
)
def test_create_rejects_each_invalid_field_with_400_invalid_parameter(
    ds: Any, tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    args: dict[str, Any] = {
        "model": "tunehouse-tiny",
        "training_file_ids": [upload(ds, tmp_path)],
        "mode": "efficient_sft",
        "hyper_parameters": change.get("hp", FAST),
    }
    # The parametrized dict is shared by both backends' runs: read it, never pop from it.
    args.update({k: v for k, v in change.items() if k != "hp"})
    status, code, message = error_of(ds.FineTunes.call(**args))
    assert (status, code) == (400, "InvalidParameter") and needle in message


def test_2x_create_raises_bad_request_for_an_invalid_setting(client: Any, tmp_path: Path, ds: Any) -> None:
    with pytest.raises(BadRequestError) as e:
        client.fine_tunes.create(
            model="tunehouse-tiny", training_file_ids=upload(ds, tmp_path), hyper_parameters={"n_epochs": 0}
        )
    assert e.value.code == "InvalidParameter" and e.value.status_code == 400


def test_a_malformed_body_is_400_invalid_parameter(server: LiveServer, alice: Any) -> None:
    r = raw(server, "POST", "/fine-tunes", alice["api_key"], content=b"[1,2]")
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


def test_a_taken_model_name_is_409_conflict_and_not_retried(
    ds: Any, client: Any, server: LiveServer, alice: Any, tmp_path: Path
) -> None:
    file_id = upload(ds, tmp_path)
    name = f"sums-{tmp_path.name[-8:]}"
    first = client.fine_tunes.create(
        model="tunehouse-tiny", training_file_ids=file_id, hyper_parameters=LONG, finetuned_model=name
    )
    try:
        with pytest.raises(APIStatusError) as e:
            client.fine_tunes.create(model="tunehouse-tiny", training_file_ids=file_id, finetuned_model=name)
        assert (e.value.status_code, e.value.code) == (409, "Conflict") and name in e.value.message
        body = {"model": "tunehouse-tiny", "training_file_ids": [file_id], "model_name": "tunehouse-tiny"}
        r = raw(server, "POST", "/fine-tunes", alice["api_key"], json=body)
        assert r.status_code == 409 and r.json()["code"] == "Conflict"
        assert r.headers["x-should-retry"] == "false"
    finally:
        cancel_now(ds, first.job_id)


def test_dpo_on_chat_data_is_refused_with_400(ds: Any, tmp_path: Path) -> None:
    status, code, message = error_of(
        ds.FineTunes.call(model="tunehouse-tiny", training_file_ids=upload(ds, tmp_path), mode="dpo_lora")
    )
    assert (status, code) == (400, "InvalidParameter") and "dpo" in message


# ---- unknown ids, accounts, workspaces -------------------------------------------------------------


def test_unknown_job_ids_are_404_not_found_everywhere(ds: Any) -> None:
    for resp in (
        ds.FineTunes.get("nope"),
        ds.FineTunes.get("ft-202611230040-aaaaaaaaaaaa"),
        ds.FineTunes.cancel("ft-aaaaaaaaaaaa"),
        ds.FineTunes.delete("nope"),
        ds.FineTunes.logs("nope", offset=0, line=10),
    ):
        assert error_of(resp)[:2] == (404, "NotFound")
    events = list(ds.FineTunes.stream_events("nope"))
    assert len(events) == 1 and events[0].status_code == 404 and events[0].code == "NotFound"


def test_2x_raises_not_found_for_an_unknown_job(client: Any) -> None:
    for call in (client.fine_tunes.get, client.fine_tunes.cancel, client.fine_tunes.delete):
        with pytest.raises(NotFoundError):
            call("ft-202611230040-aaaaaaaaaaaa")


def test_another_accounts_jobs_and_files_are_invisible(ds: Any, bob: Any, tmp_path: Path) -> None:
    file_id = upload(ds, tmp_path)
    job_id = create(ds, file_id, LONG)["job_id"]
    try:
        assert error_of(ds.FineTunes.get(job_id, api_key=bob["api_key"]))[:2] == (404, "NotFound")
        assert error_of(ds.FineTunes.cancel(job_id, api_key=bob["api_key"]))[:2] == (404, "NotFound")
        assert error_of(ds.Files.get(file_id, api_key=bob["api_key"]))[:2] == (400, "InvalidParameter")
        theirs = ds.FineTunes.list(page_size=100, api_key=bob["api_key"]).output["jobs"]
        assert job_id not in [j["job_id"] for j in theirs]
        borrowed = ds.FineTunes.call(
            model="tunehouse-tiny", training_file_ids=file_id, api_key=bob["api_key"]
        )
        assert error_of(borrowed)[:2] == (400, "InvalidParameter")
    finally:
        cancel_now(ds, job_id)


def test_a_workspace_header_scopes_files_and_jobs(ds: Any, tmp_path: Path) -> None:
    ws = f"ws-{tmp_path.name[-8:]}"
    file_id = upload(ds, tmp_path, workspace=ws)
    other = ds.FineTunes.call(model="tunehouse-tiny", training_file_ids=file_id, workspace=ws + "-b")
    assert error_of(other)[:2] == (400, "InvalidParameter") and "workspace" in other.message
    job = create(ds, file_id, LONG, workspace=ws)
    try:
        assert job["workspace_id"] == ws
        mine = ds.FineTunes.list(page_size=100, workspace=ws).output
        assert [j["job_id"] for j in mine["jobs"]] == [job["job_id"]] and mine["total"] == 1
        assert ds.FineTunes.list(page_size=100, workspace=ws + "-b").output["total"] == 0
        assert error_of(ds.FineTunes.get(job["job_id"], workspace=ws + "-b"))[:2] == (404, "NotFound")
        assert error_of(ds.Files.get(file_id, workspace=ws + "-b"))[:2] == (400, "InvalidParameter")
        assert [f["file_id"] for f in ds.Files.list(workspace=ws).output["files"]] == [file_id]
        # Without the header the account sees all of its workspaces.
        assert get(ds, job["job_id"])["workspace_id"] == ws
    finally:
        cancel_now(ds, job["job_id"])


# ---- list, cancel, delete --------------------------------------------------------------------------


def test_list_pages_newest_first_with_total(ds: Any, server: LiveServer, tmp_path: Path) -> None:
    key = server.keys(f"pager-{tmp_path.name[-6:]}")["api_key"]
    file_id = upload(ds, tmp_path, api_key=key)
    ids = []
    for _ in range(3):
        resp = ds.FineTunes.call(model="tunehouse-tiny", training_file_ids=file_id, api_key=key)
        ids.append(resp.output["job_id"])
        ds.FineTunes.cancel(ids[-1], api_key=key)
    first = ds.FineTunes.list(page_no=1, page_size=2, api_key=key).output
    assert (first["page_no"], first["page_size"], first["total"]) == (1, 2, 3)
    assert [j["job_id"] for j in first["jobs"]] == ids[::-1][:2]
    second = ds.FineTunes.list(page_no=2, page_size=2, api_key=key).output
    assert [j["job_id"] for j in second["jobs"]] == ids[:1] and second["total"] == 3
    assert ds.FineTunes.list(page_no=3, page_size=2, api_key=key).output["jobs"] == []
    # The SDKs do not send the model filter; the spec's query parameter still works.
    assert raw(server, "GET", "/fine-tunes?model=tunehouse-tiny", key).json()["output"]["total"] == 3
    assert raw(server, "GET", "/fine-tunes?model=other-model", key).json()["output"]["total"] == 0


@pytest.mark.parametrize("query", ["page_size=0", "page_size=101", "page_no=0", "page_no=x"])
def test_list_rejects_bad_paging(server: LiveServer, alice: Any, query: str) -> None:
    r = raw(server, "GET", "/fine-tunes?" + query, alice["api_key"])
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


def test_a_canceled_pending_job_can_be_deleted_and_is_gone(ds: Any, tmp_path: Path) -> None:
    job_id = create(ds, upload(ds, tmp_path), LONG)["job_id"]
    cancel_now(ds, job_id)
    done = get(ds, job_id)
    assert done["status"] == "CANCELED" and "end_time" in done and isinstance(done["usage"], int)
    again = ds.FineTunes.cancel(job_id)
    assert error_of(again)[:2] == (400, "UnsupportedOperation") and "CANCELED" in again.message
    assert ds.FineTunes.delete(job_id).output.status == "success"
    assert error_of(ds.FineTunes.get(job_id))[:2] == (404, "NotFound")
    assert job_id not in [j["job_id"] for j in ds.FineTunes.list(page_size=100).output["jobs"]]


def test_logs_reject_a_line_count_out_of_range(
    ds: Any, server: LiveServer, alice: Any, tmp_path: Path
) -> None:
    job_id = create(ds, upload(ds, tmp_path), LONG)["job_id"]
    cancel_now(ds, job_id)
    for query in ("line=0", "line=1001", "offset=-1"):
        r = raw(server, "GET", f"/fine-tunes/{job_id}/logs?{query}", alice["api_key"])
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


# ---- training workflows ----------------------------------------------------------------------------

OUTPUT_NAME = "sums-adapter"


@pytest.fixture(scope="module")
def trained(
    server: LiveServer, alice: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One job trained to the end through the 1.x API, its event stream read while it ran."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
        mp.setattr(dashscope, "api_key", alice["api_key"])
        file_id = upload(dashscope, tmp_path_factory.mktemp("ds-trained"))
        job = create(dashscope, file_id, {**FAST, "n_epochs": 3}, finetuned_output=OUTPUT_NAME)
        events = list(dashscope.FineTunes.stream_events(job["job_id"]))
        return {"job": job, "events": events, "done": get(dashscope, job["job_id"])}


def test_a_job_trains_to_succeeded_with_its_output_model_and_usage(trained: dict[str, Any]) -> None:
    done = trained["done"]
    assert done["status"] == "SUCCEEDED" and done["finetuned_output"] == OUTPUT_NAME
    assert isinstance(done["usage"], int) and done["usage"] >= 0
    assert done["end_time"] >= done["create_time"] and done["output_cnt"] >= 1
    assert "code" not in done and "message" not in done


def test_the_stream_replays_status_changes_and_progress_then_closes(trained: dict[str, Any]) -> None:
    frames = [json.loads(e.output) for e in trained["events"]]
    assert all(e.status_code == 200 for e in trained["events"])
    assert {f["job_id"] for f in frames} == {trained["job"]["job_id"]}
    statuses = [f["status"] for f in frames]
    changes = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert changes == ["QUEUING", "RUNNING", "SUCCEEDED"]
    assert any(f["log"].split(" ", 2)[2].startswith("progress: step") for f in frames)
    assert frames[-1]["log"].endswith("status: SUCCEEDED")
    lines = [f["log"].split(" ", 2)[2] for f in frames]
    said = [line for line in lines if line.startswith("status: ")]
    assert said == list(dict.fromkeys(said)), said  # each status once: the trainer's echoes read as such
    assert "trainer: running" in lines and "trainer: succeeded" in lines


def test_logs_page_by_offset_and_end_with_a_short_page(ds: Any, trained: dict[str, Any]) -> None:
    job_id = trained["job"]["job_id"]
    everything = ds.FineTunes.logs(job_id, offset=0, line=1000).output
    assert everything["total"] == len(everything["logs"]) == len(trained["events"])
    pages: list[str] = []
    while True:
        page = ds.FineTunes.logs(job_id, offset=len(pages), line=7).output["logs"]
        pages += page
        if len(page) < 7:
            break
    assert pages == everything["logs"]
    assert ds.FineTunes.logs(job_id, offset=everything["total"], line=7).output["logs"] == []


def test_2x_get_wait_and_logs_report_the_finished_job(client: Any, trained: dict[str, Any]) -> None:
    job_id = trained["job"]["job_id"]
    job = client.fine_tunes.get(job_id)
    assert job.succeeded and job.finetuned_model == OUTPUT_NAME and job.base_model == "tunehouse-tiny"
    assert job.usage is not None and job.created_at and job.finished_at
    assert client.fine_tunes.wait(job_id).status == "SUCCEEDED"
    assert "status: SUCCEEDED" in client.fine_tunes.logs(job_id, offset=0, lines=1000).content


def test_training_continues_from_a_finetuned_output(
    client: Any, ds: Any, tmp_path: Path, trained: Any
) -> None:
    job = client.fine_tunes.create(
        model=OUTPUT_NAME,
        training_file_ids=[upload(ds, tmp_path)],
        mode="efficient_sft",
        hyper_parameters={**FAST, "n_epochs": 1},
        finetuned_model=OUTPUT_NAME + "-v2",
    )
    assert job.status == "PENDING" and job.model == OUTPUT_NAME and job.base_model == "tunehouse-tiny"
    done = client.fine_tunes.wait(job, poll_interval=0.3, max_interval=1.0, timeout=240)
    assert done.status == "SUCCEEDED" and done.finetuned_model == OUTPUT_NAME + "-v2"
    assert done.model == OUTPUT_NAME


def test_a_running_job_cannot_be_deleted_but_cancels_to_canceled(ds: Any, tmp_path: Path) -> None:
    job_id = create(ds, upload(ds, tmp_path, CHAT_ROWS * 8), LONG)["job_id"]
    wait_for(lambda: get(ds, job_id)["status"] == "RUNNING", timeout=120)
    refused = ds.FineTunes.delete(job_id)
    assert error_of(refused)[:2] == (400, "UnsupportedOperation") and "RUNNING" in refused.message
    assert ds.FineTunes.cancel(job_id).output.status == "success"
    # The trainer checkpoints before it exits, so the job is CANCELING for a while; cancel again is a no-op.
    assert get(ds, job_id)["status"] == "CANCELING"
    assert ds.FineTunes.cancel(job_id).output.status == "success"
    done = wait_terminal(ds, job_id)
    assert done["status"] == "CANCELED" and isinstance(done["usage"], int)
    assert "finetuned_output" not in done and "code" not in done
    assert ds.FineTunes.delete(job_id).status_code == 200


def test_a_job_whose_data_cannot_train_fails_with_code_and_message(
    ds: Any, client: Any, tmp_path: Path
) -> None:
    prologue = " ".join(f"word{i}" for i in range(600))
    rows = [{"messages": [{"role": "system", "content": prologue}, *r["messages"][1:]]} for r in CHAT_ROWS]
    job_id = create(ds, upload(ds, tmp_path, rows), {**FAST, "max_length": 128})["job_id"]
    done = wait_terminal(ds, job_id)
    assert done["status"] == "FAILED" and done["code"] and "max_seq_len" in done["message"]
    with pytest.raises(dashscope.v2.errors.DashScopeError):
        client.fine_tunes.wait(job_id)
