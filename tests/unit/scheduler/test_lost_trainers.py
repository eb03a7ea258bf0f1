"""A trainer that went without a word (killed from outside, or the process vanished) is resumed from its last
checkpoint, up to TUNEHOUSE_MAX_TRAINER_LOSSES times; then the run fails with the reason."""

from __future__ import annotations

from collections.abc import Callable

from tests.unit.scheduler.conftest import Node
from tests.unit.scheduler.fakes import KILLED
from tunehouse.contract.spec import EXIT_STOPPED
from tunehouse.core.states import RunState


def test_a_trainer_killed_from_outside_is_resumed_from_its_last_checkpoint(node: Node) -> None:
    # The kernel's OOM killer, say: SIGKILL, no time to say anything.
    rid = node.create()
    first = node.started(rid)
    first.checkpoint(step=2)
    first.checkpoint(step=4)
    node.tick()

    first.exit(KILLED)
    node.tick()

    run = node.run(rid)
    second = node.trainer(rid)
    assert (run.state, run.losses, run.attempts) == (RunState.RUNNING, 1, 2)
    assert second is not first and second.alive
    assert str(second.spec.resume_from) == first.checkpoint_path(4)
    assert node.logs(rid)[-1] == (
        "trainer process exited with code -9; requeued to resume from checkpoint step 4 (loss 1 of 3)"
    )


def test_a_trainer_lost_before_its_first_checkpoint_is_resumed_from_the_start(node: Node) -> None:
    rid = node.create()
    first = node.started(rid)

    first.exit(KILLED)
    node.tick()

    assert node.trainer(rid).spec.resume_from is None
    assert (
        node.logs(rid)[-1]
        == "trainer process exited with code -9; requeued to resume from the start (loss 1 of 3)"
    )


def test_a_run_whose_trainer_is_lost_as_often_as_allowed_fails_with_the_reason(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(max_trainer_losses=2)
    rid = node.create()
    node.started(rid).exit(KILLED)
    node.tick()
    assert (node.run(rid).state, node.run(rid).losses) == (RunState.RUNNING, 1)

    node.trainer(rid).exit(KILLED)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.losses, run.lease_owner) == (RunState.FAILED, 2, None)
    assert run.error == "the trainer process was lost 2 times (last: exited with code -9); giving up"
    assert len(node.host.alive()) == 0, "no third trainer"


def test_a_run_claimed_but_not_launched_before_a_crash_is_launched_after_the_restart(node: Node) -> None:
    rid = node.create()
    node.scheduler.claim()  # the server dies here, before launching it

    restarted = node.restarted()
    restarted.tick()

    run = node.run(rid)
    assert (run.state, run.losses, run.attempts) == (RunState.RUNNING, 1, 2)
    assert len(node.host.alive()) == 1


def test_a_trainer_stopped_by_a_signal_nobody_here_sent_is_resumed_from_the_checkpoint_it_saved(
    node: Node,
) -> None:
    # The machine shutting down, say: its SIGTERM reaches the trainer, which checkpoints and says stopped.
    rid = node.create()
    first = node.started(rid)

    first.honour_stop(step=7)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.losses, run.attempts) == (RunState.RUNNING, 1, 2)
    assert str(node.trainer(rid).spec.resume_from) == first.checkpoint_path(7)
    assert node.logs(rid)[-1] == (
        "trainer process stopped without being asked; requeued to resume from checkpoint step 7 (loss 1 of 3)"
    )


def test_a_trainer_that_exits_as_stopped_without_a_word_or_a_request_is_resumed(node: Node) -> None:
    rid = node.create()
    node.tick()

    node.trainer(rid).exit(EXIT_STOPPED)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.losses, run.attempts) == (RunState.RUNNING, 1, 2)
