"""Pause and stop land safely whenever they come: at every phase of a trainer's start-up a pause ends paused
and a stop ends stopped, and a stop decided while the scheduler claims the run reaches its trainer.

The real scheduler, driven tick by tick, launches real trainer subprocesses on SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import CHAT_ROWS, jsonl
from tunehouse.config import Settings
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import register_builtin
from tunehouse.core.runs import DatasetChoice, create_run, request_pause, request_stop
from tunehouse.core.states import ACTIVE, RunState
from tunehouse.executors.local import LocalExecutor
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.store.db import Database
from tunehouse.store.models import File, Run

DEADLINE_S = 240.0  # start-up of six trainers at once on a loaded 2-core machine, with room to spare
# Long enough that no run finishes by itself while the test works through the phases.
SLOW = {"epochs": 50, "batch_size": 1}  # long enough to pause or stop while it trains


@dataclass
class Node:
    db: Database
    scheduler: Scheduler
    file_id: int
    account_id: int

    def create(self) -> int:
        with self.db.session() as s:
            job = create_job(s, self.account_id, "lifecycle", model="tunehouse-tiny", train_mode="sft")
            file = s.get_one(File, self.file_id)
            return create_run(s, job, "lora", dict(SLOW), [DatasetChoice(file)]).id

    def run(self, run_id: int) -> Run:
        with self.db.session() as s:
            return s.get_one(Run, run_id)

    def ask(self, run_id: int, action: str) -> None:
        """What every dialect's pause and stop/cancel endpoints do."""
        with self.db.session() as s:
            run = s.get_one(Run, run_id)
            if action == "pause":
                request_pause(s, run)
            else:
                request_stop(s, run)


@pytest.fixture(params=["sqlite", "postgres"])
def node(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[Node]:
    home = tmp_path / "home"
    shutil.copytree(tiny_model, home / "models" / "tunehouse-tiny")
    url = make_pg_database() if request.param == "postgres" else f"sqlite:///{home / 'tunehouse.db'}"
    db = Database(url)
    db.migrate()
    settings = Settings(home=home, database_url=url, max_running=8, public_url="")
    with db.session() as s:
        register_builtin(s, settings.models_dir)
        account = get_or_create_account(s, "lifecycle")
        file = upload_file(s, settings.files_dir, account.id, "t.jsonl", jsonl(CHAT_ROWS), "fine-tune")
        ids = (file.id, account.id)
    yield Node(db, Scheduler(db, settings, LocalExecutor(), owner="test-node"), *ids)
    for p in psutil.process_iter(["cmdline"]):
        if any(str(home) in c for c in p.info.get("cmdline") or []):
            p.kill()
    db.dispose()


def trainer_alive(run: Run) -> bool:
    spec = str(Path(run.run_dir or "/nonexistent") / "spec.json")
    return any(spec in (p.info.get("cmdline") or []) for p in psutil.process_iter(["cmdline"]))


def tick_until_settled(node: Node, run_ids: list[int], on_tick: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        node.scheduler.tick()
        on_tick()
        if all(node.run(r).state not in ACTIVE | {RunState.QUEUED} for r in run_ids):
            return
        time.sleep(0.1)  # the scheduler's own pace is 0.3 s; the test ticks it faster
    states = {r: node.run(r).state for r in run_ids}
    raise AssertionError(f"runs not settled in {DEADLINE_S} s: {states}")


def test_pause_and_stop_at_every_phase_of_start_up_end_paused_and_stopped(node: Node) -> None:
    # Phases: queued; claimed but not launched; launched before the trainer has said a word (its SIGTERM
    # handler may not be installed yet); loading (torch, data, weights); training before any checkpoint.
    phases = ["queued", "claimed", "spawned", "loading", "running"]
    plan = {(phase, action): node.create() for phase in phases for action in ("pause", "stop")}
    for (phase, action), rid in plan.items():
        if phase == "queued":
            node.ask(rid, action)
    claimed = node.scheduler.claim()
    assert sorted(claimed) == sorted(rid for (phase, _), rid in plan.items() if phase != "queued")
    for (phase, action), rid in plan.items():
        if phase == "claimed":
            node.ask(rid, action)
    for (phase, action), rid in plan.items():
        if phase != "queued":
            node.scheduler.launch(rid)
            if phase == "spawned":
                node.ask(rid, action)

    asked = {rid for (phase, _), rid in plan.items() if phase in ("queued", "claimed", "spawned")}

    def ask_when_the_trainer_reaches_its_phase() -> None:
        for (phase, action), rid in plan.items():
            if rid not in asked and node.run(rid).handle.get("trainer_state") == phase:
                node.ask(rid, action)
                asked.add(rid)

    tick_until_settled(node, list(plan.values()), ask_when_the_trainer_reaches_its_phase)
    assert asked == set(plan.values()), "every run was asked in its phase"
    ended = {key: (node.run(rid).state, node.run(rid).error) for key, rid in plan.items()}
    assert ended == {
        (phase, action): (RunState.PAUSED if action == "pause" else RunState.STOPPED, None)
        for phase, action in plan
    }
    assert not any(trainer_alive(node.run(rid)) for rid in plan.values())


def test_a_stop_decided_on_a_read_from_before_the_claim_reaches_the_claimed_runs_trainer(node: Node) -> None:
    rid = node.create()
    with node.db.session() as api:
        run = api.get_one(Run, rid)
        assert run.state == RunState.QUEUED  # what the API read...
        assert node.scheduler.claim() == [rid]  # ...before the scheduler claimed it meanwhile
        request_stop(api, run)
    run = node.run(rid)
    assert (run.state, run.stop_requested) == (RunState.STOPPING, True)
    node.scheduler.launch(rid)
    tick_until_settled(node, [rid])
    run = node.run(rid)
    assert run.state == RunState.STOPPED
    assert not trainer_alive(run), "the stopped run's trainer was left running"
