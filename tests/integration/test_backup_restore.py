"""`tunehouse backup` of a live home and `tunehouse restore` into a fresh one: a server started there serves
the same jobs, files, checkpoints and models to the same credentials. Backed up from SQLite, restored into
PostgreSQL, so the copy depends on neither."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

SHORT = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}


def client_of(server: LiveServer, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)


def what_it_serves(client: openai.OpenAI) -> dict[str, Any]:
    jobs = list(client.fine_tuning.jobs.list(limit=100))
    return {
        "jobs": sorted((j.id, j.status, j.fine_tuned_model) for j in jobs),
        "files": sorted((f.id, f.filename, f.bytes) for f in client.files.list()),
        "checkpoints": {
            j.id: sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(j.id)) for j in jobs
        },
        "contents": {f.id: client.files.content(f.id).read() for f in client.files.list()},
    }


def test_a_restored_home_serves_what_the_backed_up_one_did(
    tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = start_server(tmp_path / "old", "sqlite", tiny_model, make_pg_database)
    try:
        keys = old.keys("ines")
        client = client_of(old, keys["api_key"])
        training = client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training, method=SHORT)
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in ("succeeded", "failed"), 900)
        second = client.fine_tuning.jobs.create(model="tunehouse-tiny", training_file=training)
        client.fine_tuning.jobs.cancel(second.id)
        ended = "Fine-tuning job cancelled"  # the record of a run that has really stopped
        wait_for(lambda: client.fine_tuning.jobs.list_events(second.id, limit=1).data[0].message == ended)
        before = what_it_serves(client)
        assert ("succeeded" in {s for _, s, _ in before["jobs"]}) and before["checkpoints"][job.id]
        try:
            old.cli("backup", str(tmp_path / "backup"))  # while it serves
        except subprocess.CalledProcessError as e:
            pytest.fail(f"backup failed ({e.returncode}): {e.stderr}{e.stdout}")
    finally:
        old.stop()
        kill_trainers(old.home)
    shutil.rmtree(old.home)  # nothing of the old home may be needed any more

    new_home = tmp_path / "new" / "home"
    new = LiveServer(home=new_home, database_url=make_pg_database())
    new_home.mkdir(parents=True)
    new.cli("restore", str(tmp_path / "backup"))
    new.start()
    try:
        client = client_of(new, keys["api_key"])
        assert what_it_serves(client) == before
        # The AK/SK still signs: its secret is sealed with the restored master key.
        import qianfan.config
        from qianfan.resources.console.finetune import FineTune

        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", new.url)
        monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
        monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
        assert len(FineTune.V2.job_list(max_keys=100).body["result"]["jobList"]) == 2
        # New rows get fresh ids after the restored ones, and the restored model trains on.
        model = next(m for _, s, m in before["jobs"] if s == "succeeded")
        more = client.fine_tuning.jobs.create(model=model, training_file=training, method=SHORT)
        assert more.id not in {j for j, _, _ in before["jobs"]}
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(more.id)).status in ("succeeded", "failed") and j,
            timeout=600,
        )
        assert done.status == "succeeded", done.error
    finally:
        new.stop()
        kill_trainers(new.home)
