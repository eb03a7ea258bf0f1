"""Through the official OpenAI SDK against a live server: a cancel at any moment after create ends the job
cancelled with its trainer gone, and a pause the moment a job reads running ends it paused, not failed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

CYCLES = 15
LONG = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    make_pg_database: Callable[[], str],
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp(f"races-{request.param}")
    srv = start_server(home, request.param, tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> OpenAI:
    # Not strict: `paused` is our extension, outside the SDK's status enum.
    return OpenAI(base_url=server.url + "/v1", api_key=server.keys("racer")["api_key"])


@pytest.fixture(scope="module")
def training(client: OpenAI) -> str:
    return client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id


def trainers_under(home: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "tunehouse.trainer" in cmd and any(str(home) in c for c in cmd):
            found.append(p)
    return found


def last_message(client: OpenAI, job_id: str) -> str:
    return client.fine_tuning.jobs.list_events(job_id, limit=1).data[0].message


def test_cancels_at_random_moments_after_create_leave_no_trainer_running(
    server: LiveServer, client: OpenAI, training: str
) -> None:
    rng = random.Random(8)
    jobs = []
    for _ in range(CYCLES):
        job = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training, method=LONG)
        time.sleep(rng.uniform(0, 0.5))  # the input under test: when the cancel lands
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        jobs.append(job.id)
    # "Fine-tuning job cancelled" is the record of a run that has really ended, trainer and all.
    wait_for(lambda: all(last_message(client, j) == "Fine-tuning job cancelled" for j in jobs), timeout=300)
    assert trainers_under(server.home) == [], "a cancelled job's trainer is still running"
    assert {client.fine_tuning.jobs.retrieve(j).status for j in jobs} == {"cancelled"}


def test_a_pause_the_moment_the_job_reads_running_ends_it_paused(client: OpenAI, training: str) -> None:
    job = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training, method=LONG)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", interval=0.02)
    client.fine_tuning.jobs.pause(job.id)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in ("paused", "failed"), timeout=300)
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert (paused.status, paused.error) == ("paused", None)
    assert last_message(client, job.id) == "Job paused"
