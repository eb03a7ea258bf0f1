"""/metrics after a workflow through all three SDKs, on two API processes beside a worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, kill_trainers
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.processes import start_api_only, start_worker, stop

FAST = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 3}
RETRIEVE = "/v1/fine_tuning/jobs/{job_id}"


@pytest.fixture
def api_only(tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]) -> Iterator[LiveServer]:
    srv = start_api_only(tmp_path, tiny_model, make_pg_database(), workers=2)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def scrape(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as (name, labels) → value."""
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def families(server: LiveServer) -> set[str]:
    return {f.name for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}


def test_metrics_count_requests_runs_queue_and_tokens_across_api_processes(
    api_only: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = api_only.keys("fay")
    client = OpenAI(base_url=api_only.url + "/v1", api_key=keys["api_key"])
    training = client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    method: Any = {"type": "supervised", "supervised": {"hyperparameters": FAST}}
    job = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training, method=method)

    queued = scrape(api_only)  # no scheduler anywhere yet: the run waits
    assert value(queued, "tunehouse_queue_depth") == 1
    assert value(queued, "tunehouse_runs", state="queued", executor="none") == 1

    worker = start_worker(api_only, "node-m")
    retrieves = 0
    try:

        def finished() -> bool:
            nonlocal retrieves
            retrieves += 1
            return client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed", "cancelled"}

        wait_for(finished, timeout=300)
    finally:
        stop(worker)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    retrieves += 1

    monkeypatch.setattr(dashscope, "base_http_api_url", api_only.url + "/api/v1")
    assert dashscope.FineTunes.list(api_key=keys["api_key"]).status_code == 200
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", api_only.url)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    jobs = FineTune.V2.job_list(ak=keys["access_key"], sk=keys["secret_key"]).body["result"]["jobList"]
    assert len(jobs) == 1
    refused = httpx.get(api_only.url + "/api/v1/fine-tunes", headers={"Authorization": "Bearer th-wrong"})
    assert refused.status_code == 401

    done = scrape(api_only)
    # Requests are counted in whichever API process answered, and summed over both.
    assert value(done, "tunehouse_http_requests_total", dialect="openai", route=RETRIEVE, method="GET",
                 status="200") == retrieves  # fmt: skip
    assert value(done, "tunehouse_http_requests_total", dialect="openai", route="/v1/fine_tuning/jobs",
                 method="POST", status="200") == 1  # fmt: skip
    assert value(done, "tunehouse_http_requests_total", dialect="dashscope", route="/api/v1/fine-tunes",
                 method="GET", status="401") == 1  # fmt: skip
    assert value(done, "tunehouse_http_requests_total", dialect="dashscope", route="/api/v1/fine-tunes",
                 method="GET", status="200") == 1  # fmt: skip
    assert value(done, "tunehouse_http_requests_total", dialect="qianfan", method="POST", status="200",
                 route="/v2/finetuning?Action=DescribeFineTuningJobs") == 1  # fmt: skip
    latency = "tunehouse_http_request_duration_seconds"
    assert value(done, latency + "_count", dialect="openai", route=RETRIEVE) == retrieves
    assert value(done, latency + "_bucket", dialect="openai", route=RETRIEVE, le="+Inf") == retrieves
    assert value(done, latency + "_sum", dialect="openai", route=RETRIEVE) > 0

    assert value(done, "tunehouse_queue_depth") == 0
    assert value(done, "tunehouse_runs", state="succeeded", executor="local") == 1
    assert value(done, "tunehouse_runs", state="queued", executor="none") == 0
    assert value(done, "tunehouse_trained_tokens") == client.fine_tuning.jobs.retrieve(job.id).trained_tokens
    assert value(done, "tunehouse_trained_tokens") > 0
    # Declared always; samples only for trainers running on a GPU of the scraped machine.
    assert {"tunehouse_trainer_gpu_memory_bytes", "tunehouse_trainer_gpu_utilization_ratio"} <= families(
        api_only
    )
