"""The API and the scheduler in separate processes: `serve --no-scheduler --workers N` beside `worker`s."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.processes import start_api_only, start_worker, stop

RUNS = 3
FAST = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 3}


@pytest.fixture
def api_only(tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]) -> Iterator[LiveServer]:
    srv = start_api_only(tmp_path, tiny_model, make_pg_database())
    yield srv
    srv.stop()
    kill_trainers(srv.home)


def test_two_workers_beside_an_api_only_server_train_each_run_exactly_once(api_only: LiveServer) -> None:
    client = OpenAI(base_url=api_only.url + "/v1", api_key=api_only.keys("dana")["api_key"])
    training = client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
    method = {"type": "supervised", "supervised": {"hyperparameters": FAST}}
    # Queued before any scheduler exists: the API processes only record them.
    jobs = [
        client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training, method=method)  # type: ignore[arg-type]
        for _ in range(RUNS)
    ]
    workers = [start_worker(api_only, node) for node in ("node-a", "node-b")]
    try:
        for job in jobs:
            done = wait_for(
                lambda job_id=job.id: (
                    (j := client.fine_tuning.jobs.retrieve(job_id)).status
                    in {"succeeded", "failed", "cancelled"}
                    and j
                ),
                timeout=360,
            )
            assert done.status == "succeeded", done.error
        assert all(w.poll() is None for w in workers), "both workers are still up"
    finally:
        for w in workers:
            stop(w)

    dsn = api_only.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT r.key, r.attempts, (SELECT count(*) FROM events e WHERE e.run_id = r.id"
            " AND e.type = 'status' AND e.payload->>'state' = 'running') FROM runs r ORDER BY r.id"
        ).fetchall()
    assert len(rows) == RUNS
    for key, attempts, claims in rows:
        assert (attempts, claims) == (1, 1), f"run {key}: {attempts} attempts, claimed {claims} times"
        trainer_events = [
            json.loads(line)
            for line in (api_only.home / "runs" / key / "events.jsonl").read_text().splitlines()
        ]
        starts = [e for e in trainer_events if e["type"] == "status" and e["payload"]["state"] == "running"]
        assert len(starts) == 1, f"run {key}: its trainer started {len(starts)} times"
