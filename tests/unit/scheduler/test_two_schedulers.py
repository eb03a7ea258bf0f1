"""Several schedulers (`tunehouse worker`s, `serve` replicas) on one PostgreSQL never start a run twice: the
claim and the lease takeover are decided by the database, whoever asks at the same moment."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.unit.scheduler.conftest import Node, make_settings, seed
from tests.unit.scheduler.fakes import KILLED, FakeClock, FakeHost
from tunehouse.core.states import RunState
from tunehouse.scheduler.scheduler import LEASE
from tunehouse.store.db import Database
from tunehouse.store.models import Event, Run

pytestmark = pytest.mark.postgres

RUNS = 12
ROUNDS = 20  # far more than needed: each round at least one node claims up to its capacity


@pytest.fixture
def nodes_on_one_database(
    make_pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Callable[[str], Node]]:
    """``node("node-b")``: another replica, on its own machine, over the same PostgreSQL and clock."""
    db = Database(make_pg_database())
    db.migrate()
    settings = make_settings(tmp_path / "home", max_running=3)
    account_id, file_id = seed(db, settings)
    clock = FakeClock()
    yield lambda owner: Node(db, settings, clock, FakeHost(), owner, account_id, file_id)
    db.dispose()


def tick_at_once(*nodes: Node) -> None:
    """One tick of every node, all let go at the same moment."""
    barrier = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def tick(node: Node) -> None:
        barrier.wait()
        try:
            node.tick()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def running_claims(db: Database) -> Counter[int]:
    """How many times each run was moved to running (once per claim)."""
    with db.session() as s:
        rows = s.execute(
            select(Event.run_id, func.count())
            .where(Event.type == "status", Event.payload["state"].as_string() == RunState.RUNNING)
            .group_by(Event.run_id)
        )
        return Counter({run_id: n for run_id, n in rows})


def test_two_schedulers_claiming_the_same_queued_runs_at_once_start_each_exactly_once(
    nodes_on_one_database: Callable[[str], Node],
) -> None:
    a, b = nodes_on_one_database("node-a"), nodes_on_one_database("node-b")
    runs = [a.create() for _ in range(RUNS)]

    for _ in range(ROUNDS):
        tick_at_once(a, b)
        for trainer in a.host.alive() + b.host.alive():
            trainer.succeed()
        if all(a.run(r).state == RunState.SUCCEEDED for r in runs):
            break

    started = Counter(t.spec.run_id for t in [*a.host.processes.values(), *b.host.processes.values()])
    assert sorted(started.values()) == [1] * RUNS, "one trainer per run, on one node or the other"
    assert {a.run(r).state for r in runs} == {RunState.SUCCEEDED}
    assert {a.run(r).attempts for r in runs} == {1}
    assert running_claims(a.db) == Counter(dict.fromkeys(runs, 1))
    assert a.host.processes and b.host.processes, "both nodes did some of the work"


def test_runs_whose_node_died_are_taken_over_by_exactly_one_of_the_replicas_left(
    nodes_on_one_database: Callable[[str], Node],
) -> None:
    dead = nodes_on_one_database("node-a")
    runs = [dead.create() for _ in range(3)]
    dead.tick()  # node-a starts all three, then dies with its machine
    for trainer in dead.host.alive():
        trainer.exit(KILLED)
    b, c = nodes_on_one_database("node-b"), nodes_on_one_database("node-c")

    b.clock.advance(LEASE.total_seconds() + 1)
    tick_at_once(b, c)

    with b.db.session() as s:
        taken = {r.id: (r.state, r.attempts, r.losses, r.lease_owner) for r in s.scalars(select(Run))}
    assert {rid: state[:3] for rid, state in taken.items()} == dict.fromkeys(runs, (RunState.RUNNING, 2, 1))
    assert {owner for *_, owner in taken.values()} <= {"node-b", "node-c"}
    relaunched = Counter(t.spec.run_id for t in [*b.host.processes.values(), *c.host.processes.values()])
    assert sorted(relaunched.values()) == [1, 1, 1], "each run resumed once, on one of the two"
