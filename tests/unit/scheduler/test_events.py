"""A running trainer's events are folded into the run once each, whenever and however often they are read."""

from __future__ import annotations

import json

from tests.unit.scheduler.conftest import Node
from tunehouse.core.events import TRAINER_STATUS
from tunehouse.core.states import RunState
from tunehouse.store.models import Checkpoint


def trainer_seqs(node: Node, rid: int) -> list[int]:
    """The trainer events stored for the run, by the seq the trainer gave them (in the order stored)."""
    kinds = {TRAINER_STATUS, "progress", "checkpoint", "log", "metrics", "error", "model"}
    return [e.seq for e in node.events(rid) if e.type in kinds]


def test_progress_and_checkpoints_a_trainer_reports_show_on_the_run(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    trainer.progress(step=3, total_steps=10)
    path = trainer.checkpoint(step=3)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.step, run.total_steps, run.progress) == (RunState.RUNNING, 3, 10, 30)
    with node.db.session() as s:
        assert [(c.step, c.path) for c in s.query(Checkpoint).filter_by(run_id=rid)] == [(3, path)]


def test_the_trainers_own_status_is_kept_apart_from_the_runs_state(node: Node) -> None:
    rid = node.create()

    node.started(rid)

    said = [e.payload["state"] for e in node.events(rid, TRAINER_STATUS)]
    assert said == ["loading", "running"]
    assert node.run(rid).handle["trainer_state"] == "running"
    assert [e.payload["state"] for e in node.events(rid, "status")] == ["queued", "running"]


def test_each_event_is_stored_once_however_often_the_scheduler_ticks(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    trainer.progress(step=1, total_steps=4)

    node.tick(times=3)

    assert len(node.events(rid, "progress")) == 1
    assert node.run(rid).last_event_seq == 3


def test_a_replaced_event_log_is_read_again_and_only_events_with_new_seqs_are_stored(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    trainer.progress(step=1, total_steps=4)
    node.tick()
    old = trainer.events_path.read_text().splitlines()

    # Shorter than what was read, so it is read from the start: its first line was stored already.
    fourth = {"seq": 4, "time": "2026-01-01T12:00:00.000Z", "type": "progress", "payload": {"step": 2}}
    replaced = old[-1] + "\n" + json.dumps(fourth) + "\n"
    assert len(replaced) < trainer.events_path.stat().st_size
    trainer.events_path.write_text(replaced)
    node.tick()

    assert [e.payload["step"] for e in node.events(rid, "progress")] == [1, 2]
    assert node.run(rid).step == 2


def test_an_event_line_still_being_written_is_stored_once_it_is_complete(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    line = json.dumps(
        {"seq": 3, "time": "2026-01-01T12:00:00.000Z", "type": "log", "payload": {"message": "x"}}
    )
    with open(trainer.events_path, "a") as fh:
        fh.write(line[:10])

    node.tick()
    assert "x" not in node.logs(rid)

    with open(trainer.events_path, "a") as fh:
        fh.write(line[10:] + "\n")
    node.tick()
    assert node.logs(rid).count("x") == 1


def test_events_written_just_before_the_trainer_exits_are_stored_before_the_run_settles(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    trainer.progress(step=4, total_steps=4)
    trainer.checkpoint(step=4)
    trainer.succeed()
    node.tick()

    run = node.run(rid)
    assert (run.state, run.step) == (RunState.SUCCEEDED, 4)
    assert node.events(rid)[-1].type == "status", "the run's end is the last event"
