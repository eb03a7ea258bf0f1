"""A run that asks for two GPUs, on a node that lends none, trains on two CPU ranks (torchrun, gloo).

No dialect has a name for the GPU count, so the run is created through the console's form; the
OpenAI SDK follows it to the end like any other run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import psutil
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.http_helpers import console_client

pytestmark = pytest.mark.heavy(3)


@pytest.fixture(scope="module")
def cpu_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(
        tmp_path_factory.mktemp("cpu-ranks"),
        "sqlite",
        tiny_model,
        make_pg_database,
        TUNEHOUSE_GPUS="none",
        TUNEHOUSE_CPU_RANKS="2",
    )
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def test_a_run_asking_for_two_gpus_trains_on_two_cpu_ranks_to_done(cpu_server: LiveServer) -> None:
    api_key = cpu_server.keys("carol")["api_key"]
    with console_client(cpu_server, api_key) as console:
        jobs = console.get("/console/jobs")
        made = console.post("/console/jobs", data={"name": "two-ranks", "csrf_token": csrf(jobs.text)})
        assert made.status_code == 303, made.text[:500]
        job = made.headers["location"].split("/console/jobs/")[1].split("?")[0]
        form = console.get(f"/console/jobs/{job}/runs/new")
        assert 'name="gpus"' in form.text
        fields = {
            "csrf_token": csrf(form.text),
            "model": "tunehouse-tiny",
            "train_mode": "sft",
            "method": "lora",
            "split_ratio": "0",
            "gpus": "2",
            "hp.epochs": "1",
            "hp.batch_size": "4",
        }
        upload = {"upload": ("train.jsonl", jsonl(CHAT_ROWS), "application/jsonl")}
        created = console.post(f"/console/jobs/{job}/runs", data=fields, files=upload)
        assert created.status_code == 303, created.text[:2000]
        run_key = created.headers["location"].rsplit("/", 1)[1]
        assert "<dt>GPUs</dt><dd>2</dd>" in console.get(f"/console/runs/{run_key}").text

    client = openai.OpenAI(base_url=cpu_server.url + "/v1", api_key=api_key)
    job_id = "ftjob-" + run_key
    final = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout=900,
    )
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    assert final.status == "succeeded", (final.error, messages)
    assert "trainer started on 2 CPU ranks (gloo)" in messages
    assert any("distributed: 2 ranks (gloo), DDP" in m for m in messages)
    assert final.fine_tuned_model


def test_cancelling_a_two_rank_run_checkpoints_once_and_leaves_no_rank_running(
    cpu_server: LiveServer, tmp_path: Path
) -> None:
    api_key = cpu_server.keys("dan")["api_key"]
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(CHAT_ROWS))
    args = [
        "runs",
        "create",
        "--account",
        "dan",
        "--model",
        "tunehouse-tiny",
        "--file",
        str(data),
        "--gpus",
        "2",
    ]
    created = json.loads(cpu_server.cli(*args, "--hp", "epochs=50", "--hp", "batch_size=1", "--json"))
    client = openai.OpenAI(base_url=cpu_server.url + "/v1", api_key=api_key)
    job_id = created["openai_job"]
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id)), timeout=900
    )
    spec = str(cpu_server.home / "runs" / created["run"] / "spec.json")
    processes = [p for p in psutil.process_iter(["cmdline"]) if spec in (p.info["cmdline"] or [])]
    assert len(processes) == 3  # torchrun and its two ranks

    client.fine_tuning.jobs.cancel(job_id)

    def messages() -> list[str]:
        return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]

    # "cancelled" is shown at once; the run has ended when its stopped state is.
    wait_for(lambda: "Fine-tuning job cancelled" in messages(), timeout=900)
    assert len(client.fine_tuning.jobs.checkpoints.list(job_id).data) == 1
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def test_a_run_asking_for_more_gpus_than_the_node_can_train_on_is_refused_by_the_form(
    cpu_server: LiveServer,
) -> None:
    api_key = cpu_server.keys("erin")["api_key"]
    with console_client(cpu_server, api_key) as console:
        jobs = console.get("/console/jobs")
        made = console.post("/console/jobs", data={"name": "too-many", "csrf_token": csrf(jobs.text)})
        job = made.headers["location"].split("/console/jobs/")[1].split("?")[0]
        form = console.get(f"/console/jobs/{job}/runs/new")
        fields = {
            "csrf_token": csrf(form.text),
            "model": "tunehouse-tiny",
            "train_mode": "sft",
            "method": "lora",
            "split_ratio": "0",
            "gpus": "3",
            "hp.epochs": "1",
        }
        upload = {"upload": ("train.jsonl", jsonl(CHAT_ROWS), "application/jsonl")}
        refused = console.post(f"/console/jobs/{job}/runs", data=fields, files=upload)
    # Refused at create, on the form: no run was queued to fail later.
    assert refused.status_code != 303, refused.headers
    assert "the run cannot be placed" in refused.text and "at most 2 CPU process(es)" in refused.text
