"""A node for the scheduler's unit tests: a real migrated store, a fake executor on a fake host, a clock that
moves only when a test says so. Tests call tick(), claim() and launch() themselves: no thread, no sleep."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.unit.conftest import sqlite_database
from tests.unit.scheduler.fakes import FakeClock, FakeExecutor, FakeHost, FakeTrainer
from tunehouse.config import Settings
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import add_base_model
from tunehouse.core.runs import MIN_EXAMPLES, DatasetChoice, create_run, request_pause, request_stop, resume
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.store.db import Database
from tunehouse.store.models import Event, File, Run

BASE = "acme-base"
CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@dataclass
class Node:
    """One scheduler (a `tunehouse worker` or `serve`) with its executor on its host, over a shared store."""

    db: Database
    settings: Settings
    clock: FakeClock
    host: FakeHost
    owner: str
    account_id: int
    file_id: int
    executor: FakeExecutor = field(init=False)
    scheduler: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        self.executor = FakeExecutor(self.host)
        self.scheduler = Scheduler(self.db, self.settings, self.executor, owner=self.owner, clock=self.clock)

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.scheduler.tick()

    def restarted(self) -> Node:
        """The same node after its server restarted: same id and host, a fresh executor and scheduler."""
        return replace(self)

    def elsewhere(self, owner: str, host: FakeHost | None = None) -> Node:
        """Another replica on the same store and clock, on its own machine unless told otherwise."""
        return replace(self, owner=owner, host=host or FakeHost())

    # ---- what the API does -------------------------------------------------------------------------
    def create(self, output_name: str | None = None, **hyperparameters: Any) -> int:
        with self.db.session() as s:
            job = create_job(s, self.account_id, "sched", model=BASE, train_mode="sft")
            file = s.get_one(File, self.file_id)
            run = create_run(s, job, "lora", hyperparameters, [DatasetChoice(file)], output_name=output_name)
            return run.id

    def ask(self, run_id: int, action: str) -> None:
        """What every dialect's pause, resume and stop/cancel endpoints do."""
        act = {"pause": request_pause, "stop": request_stop, "resume": resume}[action]
        with self.db.session() as s:
            act(s, s.get_one(Run, run_id))

    # ---- what a test looks at ----------------------------------------------------------------------
    def run(self, run_id: int) -> Run:
        with self.db.session() as s:
            return s.get_one(Run, run_id)

    def trainer(self, run_id: int) -> FakeTrainer:
        """The trainer this node's host runs for the run now."""
        return self.host.processes[int(self.run(run_id).handle["pid"])]

    def events(self, run_id: int, type_: str | None = None) -> list[Event]:
        with self.db.session() as s:
            q = select(Event).where(Event.run_id == run_id).order_by(Event.seq)
            if type_ is not None:
                q = q.where(Event.type == type_)
            return list(s.scalars(q))

    def logs(self, run_id: int) -> list[str]:
        return [str(e.payload.get("message")) for e in self.events(run_id, "log")]

    def started(self, run_id: int) -> FakeTrainer:
        """Claim and launch the run, then have its trainer report that it is training."""
        self.tick()
        trainer = self.trainer(run_id)
        trainer.status("loading")
        trainer.status("running")
        self.tick()
        return trainer


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": home, "database_url": "", "max_running": 4, "public_url": ""}
    return Settings(**{**values, **overrides})


def seed(db: Database, settings: Settings) -> tuple[int, int]:
    """A base model, an account and a training file: what a run needs to be created and launched."""
    model_dir = settings.home / "base-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    with db.session() as s:
        add_base_model(s, BASE, model_dir)
        account = get_or_create_account(s, "scheduler-tests")
        data = (json.dumps(CHAT_ROW) + "\n").encode() * MIN_EXAMPLES  # the fewest a run trains on
        file = upload_file(s, settings.files_dir, account.id, "t.jsonl", data, "fine-tune")
        return account.id, file.id


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``make_node(max_running=2, gpus=("0", "1"))``: a node on a fresh SQLite store of its own."""
    made: list[Database] = []

    def make(**overrides: Any) -> Node:
        db = sqlite_database(tmp_path)
        made.append(db)
        settings = make_settings(tmp_path / "home", **overrides)
        account_id, file_id = seed(db, settings)
        return Node(db, settings, FakeClock(), FakeHost(), "node-a", account_id, file_id)

    yield make
    for db in made:
        db.dispose()


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    return make_node()
