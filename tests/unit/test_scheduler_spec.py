"""The spec the scheduler hands the trainer: the typed run contract, with what the run was created with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunehouse.config import Settings
from tunehouse.contract.hyperparameters import STEP_DELAY_ENV
from tunehouse.contract.spec import RunSpec, load_spec
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import add_base_model
from tunehouse.core.runs import MIN_EXAMPLES, DatasetChoice, create_run
from tunehouse.executors.local import LocalExecutor
from tunehouse.scheduler.scheduler import Scheduler, _write_spec
from tunehouse.store.db import Database

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
KNOBS = {
    "lr_scheduler_type": "cosine",
    "gradient_checkpointing": True,
    "lora_target_modules": "q_proj,v_proj",
    "merge_adapter": True,
}


def spec_of(db: Database, home: Path, hyperparameters: dict[str, object]) -> RunSpec:
    """Create a LoRA SFT run on a registered base model and build the spec its launch would write."""
    settings = Settings(home=home, database_url="", max_running=1, public_url="")
    model_dir = home / "base-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    with db.session() as s:
        add_base_model(s, "acme-base", model_dir)
        account = get_or_create_account(s, "spec-tests")
        data = (json.dumps(CHAT_ROW) + "\n").encode() * MIN_EXAMPLES
        file = upload_file(s, settings.files_dir, account.id, "t.jsonl", data, "fine-tune")
        job = create_job(s, account.id, "spec", model="acme-base", train_mode="sft")
        run = create_run(s, job, "lora", hyperparameters, [DatasetChoice(file)], split_ratio=10)
        spec, _ = Scheduler(db, settings, LocalExecutor())._spec(s, run)
    return spec


def test_the_spec_is_the_typed_contract_with_the_knobs_the_run_was_created_with(sqlite_db, tmp_path) -> None:
    spec = spec_of(sqlite_db, tmp_path, KNOBS)

    hp = spec.hyperparameters
    assert isinstance(spec, RunSpec)
    assert (hp.lr_scheduler_type, hp.gradient_checkpointing, hp.merge_adapter) == ("cosine", True, True)
    assert hp.lora_target_modules == ["q_proj", "v_proj"]
    assert (hp.max_seq_len, hp.split_ratio) == (4096, 10)


def test_the_written_spec_loads_back_equal(sqlite_db, tmp_path) -> None:
    spec = spec_of(sqlite_db, tmp_path, KNOBS)

    assert load_spec(_write_spec(tmp_path, spec)) == spec


def test_a_step_delay_given_as_a_hyperparameter_never_reaches_the_trainer(sqlite_db, tmp_path) -> None:
    assert spec_of(sqlite_db, tmp_path, {"step_delay": 5}).hyperparameters.step_delay == 0


def test_a_test_server_slows_every_step_through_the_environment(
    sqlite_db, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STEP_DELAY_ENV, "0.25")

    assert spec_of(sqlite_db, tmp_path, {}).hyperparameters.step_delay == 0.25
