"""The one event follower behind the DashScope log stream and the console's live page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.events import record_event
from tunehouse.core.files import upload_file
from tunehouse.core.follow import KEEP_ALIVE, RunFollower, Tick
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import register_builtin
from tunehouse.core.runs import MIN_EXAMPLES, DatasetChoice, create_run, get_run, move
from tunehouse.core.states import RunState
from tunehouse.store.db import Database
from tunehouse.store.models import Run

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def run_key(sqlite_db: Database, tmp_path: Path) -> str:
    with sqlite_db.session() as s:
        register_builtin(s, tmp_path / "models")
        account = get_or_create_account(s, "alice")
        data = (json.dumps(CHAT) + "\n").encode() * MIN_EXAMPLES
        file = upload_file(s, tmp_path / "files", account.id, "t.jsonl", data, "fine-tune")
        job = create_job(s, account.id, "follow", model="tunehouse-tiny", train_mode="sft")
        run = create_run(s, job, "lora", {}, [DatasetChoice(file)])
        move(s, run, RunState.RUNNING)
        return run.key


def follower(db: Database, key: str, **kw: Any) -> RunFollower[str]:
    def find(s: Any) -> Run | None:
        return get_run(s, get_or_create_account(s, "alice").id, key=key)

    return RunFollower(db.session, find, lambda s, run: run.state, **kw)


def change(db: Database, key: str, log: str | None = None, state: RunState | None = None) -> None:
    with db.session() as s:
        run = get_run(s, get_or_create_account(s, "alice").id, key=key)
        if log is not None:
            record_event(s, run, "log", {"message": log})
        if state is not None:
            move(s, run, state)


def test_each_read_brings_only_the_events_after_the_last_one_read(sqlite_db, run_key):
    f = follower(sqlite_db, run_key)
    first = f.poll()
    assert first is not None and [e.type for e in first.events] == ["status", "status"]
    change(sqlite_db, run_key, log="step 1")
    second = f.poll()
    assert second is not None and [e.payload for e in second.events] == [{"message": "step 1"}]
    assert second.events[0].seq == f.after and second.view == "running" and not second.ended


def test_a_run_is_over_only_once_its_last_batch_is_read(sqlite_db, run_key):
    for i in range(3):
        change(sqlite_db, run_key, log=f"line {i}")
    change(sqlite_db, run_key, state=RunState.SUCCEEDED)
    f = follower(sqlite_db, run_key, batch=4)
    full = f.poll()
    assert full is not None and len(full.events) == 4 and not full.ended
    rest = f.poll()
    assert rest is not None and len(rest.events) == 2 and rest.ended and rest.view == "succeeded"


def test_a_run_that_is_gone_ends_the_following(sqlite_db, run_key):
    with sqlite_db.session() as s:
        run = get_run(s, get_or_create_account(s, "alice").id, key=run_key)
        move(s, run, RunState.FAILED)
        run.deleted_at = run.finished_at
    assert follower(sqlite_db, run_key).poll() is None


def test_the_stream_sends_a_keep_alive_after_quiet_polls_and_ends_with_the_run(sqlite_db, run_key):
    f = follower(sqlite_db, run_key, poll_s=0.001, keepalive_s=0.002)
    seen: list[Any] = []

    async def follow() -> None:
        async for item in f.ticks():
            seen.append(item)
            if item is KEEP_ALIVE:
                change(sqlite_db, run_key, log="done soon", state=RunState.SUCCEEDED)

    anyio.run(follow)
    ticks = [t for t in seen if isinstance(t, Tick)]
    assert KEEP_ALIVE in seen and ticks[-1].ended and ticks[-1].view == "succeeded"
    assert [e.type for e in ticks[-1].events] == ["log", "status"]


def test_the_stream_stops_when_the_client_has_gone(sqlite_db, run_key):
    f = follower(sqlite_db, run_key, poll_s=0.001)

    async def gone() -> bool:
        return True

    async def follow() -> list[Any]:
        return [item async for item in f.ticks(disconnected=gone)]

    seen = anyio.run(follow)
    assert len(seen) == 1 and isinstance(seen[0], Tick) and not seen[0].ended
