"""The run view the polled status calls render, read in one statement, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tunehouse.core.clock import utcnow
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import register_builtin
from tunehouse.core.run_views import RunView, checkpoint_steps, fetch_run_view, find_run_view, view_of
from tunehouse.core.runs import DatasetChoice, create_run
from tunehouse.store.db import Database
from tunehouse.store.models import Checkpoint, Model, Run

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def make_run(database: Database, make_account: Callable[[], int], tmp_path: Path) -> Callable[..., str]:
    """A queued run in a fresh account (with `checkpoint_steps` saved and, if named, an output model)."""

    def make(checkpoint_steps: tuple[int, ...] = (), output_model: str | None = None) -> str:
        account = make_account()
        with database.session() as s:
            register_builtin(s, tmp_path / "models")
            data = "".join(json.dumps(CHAT_ROW) + "\n" for _ in range(2)).encode()
            f = upload_file(s, tmp_path / "files", account, "train.jsonl", data, "fine-tune")
            job = create_job(s, account, "faq bot", model="tunehouse-tiny", train_mode="sft")
            job.workspace = "ws-1"
            run = create_run(s, job, "lora", {}, [DatasetChoice(f)])
            s.flush()
            for step in checkpoint_steps:
                s.add(
                    Checkpoint(
                        run_id=run.id,
                        step=step,
                        path=f"/ck/{step}",
                        metrics={"eval_loss": 1.0},
                        created_at=utcnow(),
                    )
                )
            if output_model is not None:
                model = Model(
                    account_id=account,
                    name=output_model,
                    path="/m",
                    kind="lora_adapter",
                    base_model="tunehouse-tiny",
                    source_run_id=run.id,
                    created_at=utcnow(),
                )
                s.add(model)
                s.flush()
                run.output_model_id = model.id
            return run.key

    return make


def account_of(database: Database, key: str) -> int:
    with database.session() as s:
        run = s.query(Run).filter_by(key=key).one()
        return run.account_id


def polled(database: Database, key: str, account: int | None = None) -> RunView | None:
    with database.read_connection() as conn:
        return find_run_view(conn, account_of(database, key) if account is None else account, key)


def test_the_view_carries_its_jobs_columns_the_output_models_name_and_the_checkpoint_count(
    database: Database, make_run: Callable[..., str]
) -> None:
    key = make_run(checkpoint_steps=(10, 20), output_model="faq-bot-v1")
    view = polled(database, key)
    assert view is not None
    assert (view.key, view.job_name, view.job_workspace, view.job_base_model) == (
        key,
        "faq bot",
        "ws-1",
        "tunehouse-tiny",
    )
    assert (view.output_model_name, view.checkpoint_count) == ("faq-bot-v1", 2)


def test_the_polled_read_agrees_with_the_view_of_the_loaded_run(
    database: Database, make_run: Callable[..., str]
) -> None:
    key = make_run(checkpoint_steps=(5,), output_model="faq-bot-v2")
    with database.session() as s:
        loaded = view_of(s, s.query(Run).filter_by(key=key).one())
    assert polled(database, key) == loaded


def test_another_accounts_run_is_not_found(database: Database, make_run: Callable[..., str]) -> None:
    mine, theirs = make_run(), make_run()
    assert polled(database, theirs, account=account_of(database, mine)) is None


def test_a_deleted_run_is_not_found(database: Database, make_run: Callable[..., str]) -> None:
    key = make_run()
    with database.session() as s:
        s.query(Run).filter_by(key=key).one().deleted_at = utcnow()
    assert polled(database, key) is None


def test_a_run_that_produced_no_model_yet_is_found_with_no_output_model_and_no_checkpoints(
    database: Database, make_run: Callable[..., str]
) -> None:
    view = polled(database, make_run())
    assert view is not None
    assert (view.output_model_name, view.checkpoint_count) == (None, 0)


def test_checkpoints_come_in_step_order(database: Database, make_run: Callable[..., str]) -> None:
    key = make_run(checkpoint_steps=(30, 10, 20))
    view = polled(database, key)
    assert view is not None
    with database.read_connection() as conn:
        assert [step for step, _ in checkpoint_steps(conn, view.id)] == [10, 20, 30]


def loop_read(database: Database, key: str, checkpoints: bool) -> RunView | None:
    async def main() -> RunView | None:
        reads = database.loop_reads()
        assert reads is not None
        try:
            return await fetch_run_view(
                reads, database.engine.dialect, account_of(database, key), key, checkpoints
            )
        finally:
            await database.close_loop_reads()

    return asyncio.run(main())


def test_the_read_on_the_event_loop_is_the_threaded_read(
    database: Database, make_run: Callable[..., str]
) -> None:
    if not database.is_postgres:
        pytest.skip("reads on the loop are PostgreSQL's")
    key = make_run(checkpoint_steps=(5,), output_model="faq-bot-v3")
    assert loop_read(database, key, checkpoints=False) == polled(database, key)


def test_the_read_on_the_event_loop_can_bring_the_checkpoints_in_step_order(
    database: Database, make_run: Callable[..., str]
) -> None:
    if not database.is_postgres:
        pytest.skip("reads on the loop are PostgreSQL's")
    key = make_run(checkpoint_steps=(30, 10, 20))
    view = loop_read(database, key, checkpoints=True)
    assert view is not None
    with database.read_connection() as conn:
        assert view.checkpoints == checkpoint_steps(conn, view.id)
    assert [step for step, _ in view.checkpoints] == [10, 20, 30]
