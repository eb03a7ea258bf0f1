"""Runs are followed by the node that holds their lease. A restarted node reattaches to its live trainers and
settles the ones that ended while it was down; a lapsed lease is taken over by another replica."""

from __future__ import annotations

from tests.unit.scheduler.conftest import Node
from tests.unit.scheduler.fakes import SIGKILL, SIGTERM
from tunehouse.core.states import RunState
from tunehouse.scheduler.scheduler import LEASE

LEASE_S = LEASE.total_seconds()


def test_a_restarted_node_reattaches_to_a_trainer_that_is_still_running(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    trainer.progress(step=1, total_steps=4)
    node.tick()

    restarted = node.restarted()
    trainer.progress(step=2, total_steps=4)
    restarted.tick(times=2)

    run = node.run(rid)
    assert (run.state, run.attempts, run.losses, run.step) == (RunState.RUNNING, 1, 0, 2)
    assert node.trainer(rid) is trainer and len(node.host.processes) == 1
    assert [e.payload["step"] for e in node.events(rid, "progress")] == [1, 2], "each event stored once"


def test_a_reattached_trainer_that_succeeds_settles_the_run_though_its_exit_code_is_unknown(
    node: Node,
) -> None:
    rid = node.create()
    trainer = node.started(rid)
    restarted = node.restarted()
    restarted.tick()

    trainer.succeed()
    restarted.tick()

    run = node.run(rid)
    assert (run.state, run.output_model_id is not None) == (RunState.SUCCEEDED, True)


def test_a_trainer_that_succeeded_while_its_node_was_down_settles_the_run_succeeded(node: Node) -> None:
    rid = node.create()
    node.started(rid).succeed()

    node.restarted().tick()

    assert node.run(rid).state == RunState.SUCCEEDED


def test_a_trainer_that_failed_while_its_node_was_down_fails_the_run_with_its_reason(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    trainer.error("loss is NaN at step 9", kind="nan")
    trainer.status("failed")
    trainer.exit(1)

    node.restarted().tick()

    assert (node.run(rid).state, node.run(rid).error) == (RunState.FAILED, "loss is NaN at step 9")


def test_a_trainer_that_vanished_while_its_node_was_down_is_resumed(node: Node) -> None:
    rid = node.create()
    first = node.started(rid)
    first.checkpoint(step=3)
    node.tick()
    first.exit(-9)  # the machine rebooted, say: nobody saw it go

    node.restarted().tick()

    run = node.run(rid)
    assert (run.state, run.losses, run.attempts) == (RunState.RUNNING, 1, 2)
    assert str(node.trainer(rid).spec.resume_from) == first.checkpoint_path(3)
    assert (
        node.logs(rid)[-1] == "trainer process lost; requeued to resume from checkpoint step 3 (loss 1 of 3)"
    )


def test_a_stop_asked_while_the_node_was_down_reaches_the_reattached_trainer(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    node.ask(rid, "stop")
    restarted = node.restarted()
    restarted.tick()
    assert trainer.signals == [SIGTERM]

    trainer.honour_stop(step=2)
    restarted.tick()
    assert node.run(rid).state == RunState.STOPPED


def test_another_replica_leaves_a_run_alone_while_its_lease_holds(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)  # node-a then stops ticking: dead, or just slow
    other = node.elsewhere("node-b")

    node.clock.advance(LEASE_S)
    other.tick()

    run = node.run(rid)
    assert (run.lease_owner, run.attempts, run.losses) == ("node-a", 1, 0)
    assert other.host.processes == {} and trainer.alive


def test_another_replica_takes_over_a_run_whose_lease_lapsed_and_resumes_it_there(node: Node) -> None:
    rid = node.create()
    first = node.started(rid)
    first.checkpoint(step=5)
    node.tick()  # and node-a dies with its machine
    other = node.elsewhere("node-b")

    node.clock.advance(LEASE_S + 1)
    other.tick()

    run = node.run(rid)
    (second,) = other.host.alive()
    assert (run.state, run.lease_owner, run.losses, run.attempts) == (RunState.RUNNING, "node-b", 1, 2)
    assert run.handle["pid"] == second.pid
    assert str(second.spec.resume_from) == first.checkpoint_path(5)


def test_a_node_whose_lease_was_taken_over_no_longer_follows_the_run(node: Node) -> None:
    rid = node.create()
    stale = node.started(rid)
    other = node.elsewhere("node-b")
    node.clock.advance(LEASE_S + 1)
    other.tick()

    stale.succeed()  # what node-a's trainer says is no longer node-a's to settle
    node.tick()

    run = node.run(rid)
    assert (run.state, run.lease_owner, run.attempts) == (RunState.RUNNING, "node-b", 2)
    assert len(node.host.processes) == 1, "node-a started nothing"


def test_a_node_whose_run_was_taken_over_ends_the_trainer_it_had_left_running(node: Node) -> None:
    rid = node.create()
    stale = node.started(rid)  # node-a then loses the database for longer than the lease
    other = node.elsewhere("node-b")
    node.clock.advance(LEASE_S + 1)
    other.tick()
    (fresh,) = other.host.alive()

    node.tick()  # node-a is back

    assert SIGKILL in stale.signals and not stale.alive, "one run, one trainer"
    assert fresh.alive and fresh.signals == []
    run = node.run(rid)
    assert (run.state, run.lease_owner, run.handle["pid"]) == (RunState.RUNNING, "node-b", fresh.pid)


def test_a_trainer_another_scheduler_of_the_same_machine_follows_on_is_left_running(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.tick()
    neighbour = node.elsewhere("node-b", host=node.host)
    node.clock.advance(LEASE_S + 1)
    neighbour.tick()  # it adopts the run and finds its trainer alive

    node.tick()

    run = node.run(rid)
    assert trainer.alive and trainer.signals == []
    assert (run.lease_owner, run.handle["pid"], run.attempts) == ("node-b", trainer.pid, 1)


def test_a_settled_run_holds_no_lease(node: Node) -> None:
    rid = node.create()
    node.started(rid).succeed()

    node.tick()

    run = node.run(rid)
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
