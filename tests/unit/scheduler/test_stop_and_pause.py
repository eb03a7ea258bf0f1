"""Stop and pause reach the trainer as SIGTERM (checkpoint, then exit), held back until the trainer can take
it, and made a SIGKILL when it does not answer within the grace period."""

from __future__ import annotations

from tests.unit.scheduler.conftest import Node
from tests.unit.scheduler.fakes import KILLED, SIGKILL, SIGTERM
from tunehouse.contract.spec import EXIT_FAILED
from tunehouse.core.states import RunState
from tunehouse.scheduler.scheduler import STOP_GRACE_S


def test_a_stopped_run_asks_its_trainer_to_checkpoint_and_exit(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    node.ask(rid, "stop")
    assert node.run(rid).state == RunState.STOPPING
    node.tick()

    assert trainer.signals == [SIGTERM]


def test_a_run_whose_trainer_honoured_the_stop_ends_stopped(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "stop")
    node.tick()

    trainer.honour_stop(step=4)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.error, run.lease_owner) == (RunState.STOPPED, None, None)
    assert run.finished_at is not None


def test_the_stop_signal_is_sent_once_however_often_the_scheduler_ticks(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "stop")

    node.tick(times=3)
    node.clock.advance(STOP_GRACE_S - 1)
    node.tick()

    assert trainer.signals == [SIGTERM]


def test_a_stop_waits_for_the_trainer_to_say_something_before_signalling_it(node: Node) -> None:
    # It reports only once its SIGTERM handler is installed; a SIGTERM before that would kill it outright.
    rid = node.create()
    node.tick()
    trainer = node.trainer(rid)
    node.ask(rid, "stop")

    node.tick(times=2)
    assert trainer.signals == []

    trainer.status("loading")
    node.tick()
    assert trainer.signals == [SIGTERM]


def test_a_trainer_that_never_speaks_is_killed_after_the_grace_period_and_the_run_ends_stopped(
    node: Node,
) -> None:
    rid = node.create()
    node.tick()
    trainer = node.trainer(rid)
    node.ask(rid, "stop")
    node.tick()

    node.clock.advance(STOP_GRACE_S)
    node.tick()
    assert trainer.signals == [], "not before the grace period is over"

    node.clock.advance(1)
    node.tick()

    assert (trainer.signals, trainer.code) == ([SIGKILL], KILLED)
    node.tick()
    assert node.run(rid).state == RunState.STOPPED


def test_a_trainer_that_ignores_the_stop_is_killed_a_grace_period_after_the_signal(node: Node) -> None:
    rid = node.create()
    node.tick()
    trainer = node.trainer(rid)
    node.ask(rid, "stop")
    node.tick()
    node.clock.advance(STOP_GRACE_S - 5)  # it takes a while to load, then gets the signal
    trainer.status("loading")
    node.tick()
    assert trainer.signals == [SIGTERM]

    node.clock.advance(STOP_GRACE_S)
    node.tick()
    assert trainer.signals == [SIGTERM], "the grace period counts from the signal"

    node.clock.advance(1)
    node.tick(times=2)
    assert trainer.signals == [SIGTERM, SIGKILL]
    assert node.run(rid).state == RunState.STOPPED


def test_a_run_stopped_between_claim_and_launch_ends_stopped_without_a_trainer(node: Node) -> None:
    rid = node.create()
    node.scheduler.claim()
    node.ask(rid, "stop")

    node.scheduler.launch(rid)
    node.tick()

    assert node.run(rid).state == RunState.STOPPED
    assert node.host.processes == {}


def test_a_trainer_that_fails_while_being_stopped_ends_the_run_stopped(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "stop")
    node.tick()

    trainer.error("RuntimeError: interrupted mid-step")
    trainer.status("failed")
    trainer.exit(EXIT_FAILED)
    node.tick()

    assert node.run(rid).state == RunState.STOPPED


def test_a_paused_run_asks_its_trainer_to_checkpoint_and_exit(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    node.ask(rid, "pause")
    assert node.run(rid).state == RunState.PAUSING
    node.tick()

    assert trainer.signals == [SIGTERM]


def test_a_run_whose_trainer_honoured_the_pause_is_paused_at_its_last_checkpoint(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "pause")
    node.tick()

    trainer.honour_stop(step=6)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.resume_from, run.lease_owner) == (
        RunState.PAUSED,
        trainer.checkpoint_path(6),
        None,
    )


def test_a_pause_of_a_trainer_that_never_speaks_ends_paused_from_the_start(node: Node) -> None:
    rid = node.create()
    node.tick()
    trainer = node.trainer(rid)
    node.ask(rid, "pause")
    node.tick()

    node.clock.advance(STOP_GRACE_S + 1)
    node.tick(times=2)

    run = node.run(rid)
    assert trainer.signals == [SIGKILL]
    assert (run.state, run.resume_from, run.losses) == (RunState.PAUSED, None, 0)


def test_a_run_paused_between_claim_and_launch_is_paused_without_a_trainer(node: Node) -> None:
    rid = node.create()
    node.scheduler.claim()
    node.ask(rid, "pause")

    node.scheduler.launch(rid)
    node.tick()

    assert node.run(rid).state == RunState.PAUSED
    assert node.host.processes == {}


def test_a_resumed_run_starts_a_trainer_from_the_checkpoint_it_paused_at(node: Node) -> None:
    rid = node.create()
    first = node.started(rid)
    node.ask(rid, "pause")
    node.tick()
    first.honour_stop(step=6)
    node.tick()

    node.ask(rid, "resume")
    node.tick()

    run = node.run(rid)
    second = node.trainer(rid)
    assert (run.state, run.attempts) == (RunState.RUNNING, 2)
    assert second is not first
    assert str(second.spec.resume_from) == first.checkpoint_path(6)


def test_a_stop_while_pausing_ends_the_run_stopped(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "pause")
    node.tick()

    node.ask(rid, "stop")
    trainer.honour_stop(step=2)
    node.tick()

    assert node.run(rid).state == RunState.STOPPED
    assert trainer.signals == [SIGTERM]


def test_a_trainer_that_finished_before_the_pause_reached_it_succeeds(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "pause")

    trainer.succeed()
    node.tick()

    assert node.run(rid).state == RunState.SUCCEEDED
