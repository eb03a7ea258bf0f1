"""Dataset uploads (bearer keys, line-numbered rejections) and the operator CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, jsonl


def post_file(server: LiveServer, api_key: str, body: bytes, purpose: str = "fine-tune") -> httpx.Response:
    return httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("train.jsonl", body)},
        data={"purpose": purpose},
        timeout=30,
    )


def test_an_upload_answers_an_openai_file_object(server: LiveServer, alice: dict[str, str]) -> None:
    r = post_file(server, alice["api_key"], jsonl(CHAT_ROWS))
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("file-") and body["object"] == "file" and body["status"] == "processed"
    assert body["bytes"] == len(jsonl(CHAT_ROWS)) and body["purpose"] == "fine-tune"


def test_a_malformed_line_fails_the_upload_naming_its_line(server: LiveServer, alice: dict[str, str]) -> None:
    bad = jsonl(CHAT_ROWS[:2]) + b'{"messages": [{"role": "robot", "content": "beep"}]}\n' + b"{not json\n"
    r = post_file(server, alice["api_key"], bad)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "file" and err["code"] == "invalid_file_format"
    assert "line 3" in err["message"] and "role" in err["message"] and "line 4" in err["message"]


def test_an_upload_without_a_valid_key_is_refused_with_401(server: LiveServer) -> None:
    r = post_file(server, "th-not-a-key", jsonl(CHAT_ROWS))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_unknown_purpose_is_rejected(server: LiveServer, alice: dict[str, str]) -> None:
    r = post_file(server, alice["api_key"], jsonl(CHAT_ROWS), purpose="vision")
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


def test_files_are_listed_only_for_their_owner(
    server: LiveServer, alice: dict[str, str], bob: dict[str, str]
) -> None:
    file_id = post_file(server, alice["api_key"], jsonl(CHAT_ROWS)).json()["id"]
    bobs = httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {bob['api_key']}"}).json()
    assert file_id not in [f["id"] for f in bobs["data"]]
    r = httpx.get(server.url + f"/v1/files/{file_id}", headers={"Authorization": f"Bearer {bob['api_key']}"})
    assert r.status_code == 404


def test_keys_create_prints_the_four_fields(server: LiveServer) -> None:
    keys = server.keys("dave")
    assert set(keys) == {"account", "access_key", "secret_key", "api_key"} and keys["account"] == "dave"


def test_the_first_start_on_an_empty_home_says_how_to_get_keys(server: LiveServer) -> None:
    assert "tunehouse keys create --account" in (server.home / "server.log").read_text()


def test_models_add_registers_a_local_model_for_the_apis(
    server: LiveServer, tiny_model: Path, qianfan: Any
) -> None:
    server.cli("models", "add", "my-tiny-copy", str(tiny_model))
    listed = json.loads(server.cli("models", "list", "--json"))
    assert {"tunehouse-tiny", "my-tiny-copy"} <= {m["name"] for m in listed}
    supported = {m["model"] for m in qianfan.V2.supported_models().body["result"]}
    assert "my-tiny-copy" in supported


def test_models_add_refuses_a_directory_without_a_model(server: LiveServer, tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as e:
        server.cli("models", "add", "empty", str(tmp_path))
    assert "config.json" in e.value.stderr


def test_the_cli_shows_help_without_a_database() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunehouse", "--help"], capture_output=True, text=True, check=True
    )
    assert "serve" in out.stdout and "keys" in out.stdout and "models" in out.stdout


def test_metrics_report_runs_by_state_and_executor(server: LiveServer) -> None:
    text = httpx.get(server.url + "/metrics").text
    assert 'tunehouse_runs{executor="none",state="queued"}' in text
    assert 'tunehouse_runs{executor="local",state="succeeded"}' in text


def test_keys_list_shows_credentials_without_secrets_and_revoke_refuses_them_from_then_on(
    server: LiveServer, qianfan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai import AuthenticationError, OpenAI
    from qianfan import config as qianfan_config
    from qianfan.errors import RequestError

    keys = server.keys("erin")
    listed = json.loads(server.cli("keys", "list", "--account", "erin", "--json"))
    assert {(r["kind"], r["revoked_at"]) for r in listed} == {("aksk", None), ("api_key", None)}
    assert keys["access_key"] in {r["key"] for r in listed}
    shown = server.cli("keys", "list", "--json")
    assert keys["secret_key"] not in shown and keys["api_key"] not in shown

    client = OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], max_retries=0)
    client.files.list()
    revoked = json.loads(server.cli("keys", "revoke", keys["api_key"], "--json"))
    assert revoked["kind"] == "api_key" and revoked["revoked_at"] is not None
    # The server remembers a verified key for TUNEHOUSE_CREDENTIAL_CACHE_S (5 s); the CLI is another process.
    refused_within(lambda: client.files.list(), AuthenticationError)

    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setattr(qianfan_config, "_GLOBAL_CONFIG", None)
    qianfan.V2.job_list()
    server.cli("keys", "revoke", keys["access_key"])
    refused_within(lambda: qianfan.V2.job_list(), RequestError)
    after = json.loads(server.cli("keys", "list", "--account", "erin", "--json"))
    assert all(r["revoked_at"] is not None for r in after)


def refused_within(call: Any, error: type[Exception], seconds: float = 60) -> None:
    """Calls until the server refuses with ``error``; fails if it still accepts after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
        except error:
            return
        assert time.monotonic() < deadline, "a revoked key was still accepted"
        time.sleep(0.2)


def test_revoking_an_unknown_key_is_an_error_naming_it(server: LiveServer) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunehouse", "keys", "revoke", "no-such-key"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no-such-key" in out.stderr


def test_runs_create_asks_for_gpus_and_a_node_that_cannot_hold_them_fails_the_run_saying_why(
    server: LiveServer, tmp_path: Path
) -> None:
    import openai

    from tests.integration.conftest import wait_for

    api_key = server.keys("gina")["api_key"]
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(CHAT_ROWS))
    args = ["runs", "create", "--account", "gina", "--model", "tunehouse-tiny", "--file", str(data)]
    created = json.loads(server.cli(*args, "--gpus", "3", "--hp", "epochs=1", "--json"))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key)
    job = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(created["openai_job"])).status == "failed" and j
    )
    # The test server lends no GPU and trains a run on one CPU process at most.
    assert "asks for 3 GPUs" in job.error.message and "TUNEHOUSE_CPU_RANKS" in job.error.message
