"""With the artifacts in S3, the spec sends the trainer to a local scratch folder, names what it must fetch
from the store first, and where its run lives there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunehouse import storage
from tunehouse.config import Settings
from tunehouse.contract.spec import RunSpec
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import add_base_model
from tunehouse.core.runs import DatasetChoice, create_run
from tunehouse.executors.local import LocalExecutor
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.store.db import Database

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def remote_spec(db: Database, home: Path, root: str, resume_step: int | None = None) -> tuple[RunSpec, str]:
    settings = Settings(home=home, database_url="", max_running=1, public_url="", storage_url=root)
    base = storage.join(root, "models", "acme-base")
    storage.write_bytes(storage.join(base, "config.json"), b"{}")
    with db.session() as s:
        add_base_model(s, "acme-base", base)
        account = get_or_create_account(s, "storage-tests")
        data = (json.dumps(CHAT_ROW) + "\n").encode() * 2
        file = upload_file(s, settings.files_dir, account.id, "t.jsonl", data, "fine-tune")
        job = create_job(s, account.id, "spec", model="acme-base", train_mode="sft")
        run = create_run(s, job, "lora", {}, [DatasetChoice(file)])
        if resume_step is not None:
            run.resume_from = storage.join(settings.runs_root, run.key, "checkpoints", f"step-{resume_step}")
        spec, location = Scheduler(db, settings, LocalExecutor())._spec(s, run)
    return spec, location


@pytest.mark.s3
def test_the_trainer_works_in_scratch_and_syncs_to_the_runs_folder_in_the_store(
    sqlite_db, tmp_path, s3_root
) -> None:
    spec, location = remote_spec(sqlite_db, tmp_path, s3_root)

    assert location.startswith(f"{s3_root}/runs/") and spec.storage_dir == location
    assert spec.output_dir == tmp_path / "cache" / "scratch" / spec.run_id
    assert spec.token_cache_url == f"{s3_root}/cache/tokenized"


@pytest.mark.s3
def test_the_base_model_and_the_data_are_fetched_to_where_the_spec_expects_them(
    sqlite_db, tmp_path, s3_root
) -> None:
    spec, _ = remote_spec(sqlite_db, tmp_path, s3_root)

    fetched = {f.dest: f for f in spec.fetch}
    model = fetched[spec.model_path]
    assert (model.url, model.kind, model.cached) == (f"{s3_root}/models/acme-base", "dir", True)
    assert spec.model_path.parent == tmp_path / "cache" / "models"  # one copy per node, for every run
    (data,) = spec.train_files
    assert fetched[data].url.startswith(f"{s3_root}/files/") and data.parent == spec.output_dir / "data"


@pytest.mark.s3
def test_a_resume_pulls_the_checkpoint_from_the_store_into_scratch(sqlite_db, tmp_path, s3_root) -> None:
    spec, location = remote_spec(sqlite_db, tmp_path, s3_root, resume_step=4)

    assert spec.resume_from == spec.checkpoints_dir / "step-4"
    assert {f.dest: f.url for f in spec.fetch}[spec.resume_from] == f"{location}/checkpoints/step-4"


def test_a_local_root_keeps_the_run_in_place_with_nothing_to_fetch(sqlite_db, tmp_path) -> None:
    settings = Settings(home=tmp_path, database_url="", max_running=1, public_url="")
    model_dir = tmp_path / "base-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    with sqlite_db.session() as s:
        add_base_model(s, "local-base", model_dir)
        account = get_or_create_account(s, "local-tests")
        file = upload_file(
            s, settings.files_dir, account.id, "t.jsonl", (json.dumps(CHAT_ROW) + "\n").encode(), "fine-tune"
        )
        job = create_job(s, account.id, "spec", model="local-base", train_mode="sft")
        run = create_run(s, job, "lora", {}, [DatasetChoice(file)])
        spec, location = Scheduler(sqlite_db, settings, LocalExecutor())._spec(s, run)

    assert (spec.storage_dir, spec.fetch, spec.token_cache_url) == (None, [], None)
    assert spec.output_dir == tmp_path / "runs" / spec.run_id and location == str(spec.output_dir)
