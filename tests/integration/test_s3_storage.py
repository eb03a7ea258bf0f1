"""A server whose artifacts live in S3 (TUNEHOUSE_STORAGE_URL=s3://…), on a real SeaweedFS server, driven
by the official openai SDK: everything a run writes is in the bucket under the root, nothing of it in the
local home, and a paused run resumes from the store's state alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.s3server import SeaweedS3

pytestmark = [pytest.mark.s3, pytest.mark.heavy(3)]

MODEL = "tunehouse-tiny"
TERMINAL = {"succeeded", "failed", "cancelled"}
# What the local home may hold with the artifacts in S3: the records, the key, node-local caches (base
# models fetched from the store, trainers' scratch), the built-in model and this test server's log.
LOCAL_ONLY = {
    "tunehouse.db",
    "tunehouse.db-wal",
    "tunehouse.db-shm",
    "master.key",
    "cache",
    "models",
    "server.log",
}


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedS3) -> str:
    """A bucket of this module's own, so that "nothing outside the root" can be checked on all of it."""
    name = f"th-{uuid.uuid4().hex[:8]}"
    s3_server.filesystem().mkdir(name)
    return name


@pytest.fixture(scope="module")
def root(bucket: str) -> str:
    return f"s3://{bucket}/tunehouse"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    make_pg_database: Callable[[], str],
    s3_server: SeaweedS3,
    root: str,
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path_factory.mktemp("srv-s3"),
        "sqlite",
        tiny_model,
        make_pg_database,
        TUNEHOUSE_STORAGE_URL=root,
        TUNEHOUSE_TEST_STEP_DELAY="0.2",  # long enough to pause a run mid-way
        **s3_server.env,
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> OpenAI:
    keys = server.keys("alice")
    return OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], _strict_response_validation=False)


@pytest.fixture(scope="module")
def fs(s3_server: SeaweedS3) -> Any:
    return s3_server.filesystem()


def key_of(job_id: str) -> str:
    return job_id.removeprefix("ftjob-")


def objects(fs: Any, prefix: str) -> list[str]:
    """Keys of the objects under ``prefix`` (an emptied prefix that still lists as a folder is none)."""
    found = fs.find(prefix, detail=True)
    return sorted(name for name, info in found.items() if info.get("type") == "file")


def wait_done(client: OpenAI, job_id: str, timeout: float = 300) -> Any:
    def check() -> Any:
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in TERMINAL else None

    return wait_for(check, timeout=timeout)


def sft(hp: dict[str, Any]) -> Any:
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


@pytest.fixture(scope="module")
def finished(client: OpenAI) -> tuple[str, bytes, str]:
    """(file id, its bytes, job id) of a run trained to the end."""
    data = (
        jsonl(CHAT_ROWS)
        + b'{"messages": [{"role": "user", "content": "\\u00e9t\\u00e9"}, '
        + (
            b'{"role": "assistant", "content": "summer"}]}'  # no newline at the end: stored as sent
        )
    )
    file_id = client.files.create(file=("chat.jsonl", data), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file_id,
        method=sft({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 3}),
    )
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    return file_id, data, job.id


def test_an_uploaded_file_is_stored_byte_identical_in_the_bucket(
    fs: Any, root: str, client: OpenAI, finished: tuple[str, bytes, str]
) -> None:
    file_id, data, _ = finished
    stored = root.removeprefix("s3://") + f"/files/{hashlib.sha256(data).hexdigest()}.jsonl"
    assert fs.cat_file(stored) == data
    assert client.files.content(file_id).content == data  # and served back from there


def test_checkpoints_the_api_lists_are_in_the_bucket_under_the_run(
    fs: Any, root: str, client: OpenAI, finished: tuple[str, bytes, str]
) -> None:
    _, _, job_id = finished
    run = root.removeprefix("s3://") + f"/runs/{key_of(job_id)}"
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id).data]
    assert steps
    for step in steps:
        assert fs.isfile(f"{run}/checkpoints/step-{step}/trainer_state.json"), step
    stored_steps = {int(p.split("/")[-1].removeprefix("step-")) for p in fs.ls(f"{run}/checkpoints")}
    assert set(steps) <= stored_steps


def test_the_output_model_is_beside_the_checkpoints_not_inside_them(
    fs: Any, root: str, finished: tuple[str, bytes, str]
) -> None:
    _, _, job_id = finished
    run = root.removeprefix("s3://") + f"/runs/{key_of(job_id)}"
    outputs = objects(fs, f"{run}/model")
    assert any(k.endswith("config.json") for k in outputs), outputs
    assert not any("/checkpoints/" in k for k in outputs)


def test_the_event_log_in_the_bucket_ends_with_the_final_status(
    fs: Any, root: str, finished: tuple[str, bytes, str]
) -> None:
    _, _, job_id = finished
    log = fs.cat_file(root.removeprefix("s3://") + f"/runs/{key_of(job_id)}/events.jsonl").decode()
    events = [json.loads(line) for line in log.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "status" and events[-1]["payload"]["state"] == "succeeded"


def test_nothing_is_written_outside_the_root(fs: Any, bucket: str, finished: tuple[str, bytes, str]) -> None:
    everything = objects(fs, bucket)
    assert everything
    assert [k for k in everything if not k.startswith(f"{bucket}/tunehouse/")] == []


def test_the_local_home_holds_only_the_database_and_caches(
    server: LiveServer, finished: tuple[str, bytes, str]
) -> None:
    assert {p.name for p in server.home.iterdir()} <= LOCAL_ONLY
    assert [p.name for p in (server.home / "models").iterdir()] == [MODEL]  # built in, per node


def test_a_paused_run_resumes_from_the_store_on_a_node_without_its_scratch(
    server: LiveServer, fs: Any, root: str, client: OpenAI
) -> None:
    data = client.files.create(file=("pause.jsonl", jsonl(CHAT_ROWS * 2)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=data,
        method=sft({"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2}),
    )

    def stepped() -> bool:
        events = client.fine_tuning.jobs.list_events(job.id, limit=5).data
        return any(e.type == "metrics" and int(e.data["step"]) >= 2 for e in events)  # type: ignore[index]

    wait_for(stepped)
    client.fine_tuning.jobs.pause(job.id)  # type: ignore[attr-defined]
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "paused")
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    run = root.removeprefix("s3://") + f"/runs/{key_of(job.id)}"
    assert fs.isfile(f"{run}/checkpoints/step-{paused_at}/trainer_state.json")
    # Another node would have no scratch folder of this run: all it has is the store.
    shutil.rmtree(server.home / "cache" / "scratch" / key_of(job.id))

    client.fine_tuning.jobs.resume(job.id)  # type: ignore[attr-defined]
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any(f"at step {paused_at} of " in m for m in messages), messages
    assert any(m.startswith(f"fetched s3://{run}/checkpoints/step-{paused_at}") for m in messages), messages
    log = fs.cat_file(f"{run}/events.jsonl").decode()
    seqs = [json.loads(line)["seq"] for line in log.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))  # one log across both trainers, on two "nodes"


def test_a_base_model_in_the_bucket_can_be_registered_by_its_url(
    server: LiveServer, fs: Any, bucket: str, tiny_model: Path
) -> None:
    url = f"s3://{bucket}/tunehouse/models/base-from-s3"
    fs.put(str(tiny_model / "config.json"), url.removeprefix("s3://") + "/config.json")
    server.cli("models", "add", "base-from-s3", url)
    listed = json.loads(server.cli("models", "list", "--json"))
    assert {"name": "base-from-s3", "path": url} in [{"name": m["name"], "path": m["path"]} for m in listed]
    with pytest.raises(subprocess.CalledProcessError) as refused:
        server.cli("models", "add", "not-a-model", f"s3://{bucket}/tunehouse/nothing-here")
    assert "no config.json" in " ".join(refused.value.stderr.split())  # the console wraps long lines
