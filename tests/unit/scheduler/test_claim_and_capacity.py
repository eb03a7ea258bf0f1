"""Claiming and launching: queued runs start under this node's lease, as many as it has room and GPUs for."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from tests.unit.scheduler.conftest import Node
from tests.unit.scheduler.fakes import SIGTERM
from tunehouse.core.states import RunState
from tunehouse.scheduler.scheduler import LEASE


def test_a_claimed_run_is_running_under_this_nodes_lease(node: Node) -> None:
    rid = node.create()

    assert node.scheduler.claim() == [rid]

    run = node.run(rid)
    assert (run.state, run.attempts, run.lease_owner) == (RunState.RUNNING, 1, "node-a")
    assert run.lease_expires_at == node.clock.now + LEASE
    assert run.started_at is not None


def test_a_launched_run_has_one_trainer_started_on_its_spec(node: Node) -> None:
    rid = node.create()

    node.tick()

    run = node.run(rid)
    (trainer,) = node.host.alive()
    assert run.handle["pid"] == trainer.pid
    assert (run.executor, run.run_dir) == ("fake", str(trainer.run_dir))
    assert trainer.spec.run_id == run.key
    assert trainer.spec.output_dir == trainer.run_dir


def test_a_run_is_launched_once_however_often_the_scheduler_ticks(node: Node) -> None:
    rid = node.create()

    node.tick(times=5)

    assert len(node.host.processes) == 1
    assert node.run(rid).attempts == 1


def test_queued_runs_are_claimed_oldest_first_up_to_the_nodes_capacity(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(max_running=2)
    first, second, third = node.create(), node.create(), node.create()

    node.tick()

    assert [node.run(r).state for r in (first, second, third)] == [
        RunState.RUNNING,
        RunState.RUNNING,
        RunState.QUEUED,
    ]
    assert len(node.host.alive()) == 2


def test_a_finished_run_frees_its_slot_for_the_next_queued_run(make_node: Callable[..., Node]) -> None:
    node = make_node(max_running=1)
    first, second = node.create(), node.create()
    node.tick()
    assert node.run(second).state == RunState.QUEUED

    node.trainer(first).succeed()
    node.tick()

    assert node.run(first).state == RunState.SUCCEEDED
    assert node.run(second).state == RunState.RUNNING


def test_a_paused_run_frees_its_slot(make_node: Callable[..., Node]) -> None:
    node = make_node(max_running=1)
    first, second = node.create(), node.create()
    trainer = node.started(first)
    node.ask(first, "pause")
    node.tick()
    assert trainer.signals == [SIGTERM]

    trainer.honour_stop(step=2)
    node.tick()

    assert node.run(first).state == RunState.PAUSED
    assert node.run(second).state == RunState.RUNNING


def test_each_trainer_gets_a_gpu_no_other_running_trainer_holds(make_node: Callable[..., Node]) -> None:
    node = make_node(max_running=8, gpus=("0", "1", "2"))
    runs = [node.create() for _ in range(4)]

    node.tick()

    assert sorted(t.gpu or "" for t in node.host.alive()) == ["0", "1", "2"]
    assert [node.run(r).state for r in runs].count(RunState.QUEUED) == 1, "one run per GPU"
    assert all(node.run(r).handle.get("gpu") == node.trainer(r).gpu for r in runs[:3])


def test_a_settled_runs_gpu_goes_to_the_next_run(make_node: Callable[..., Node]) -> None:
    node = make_node(max_running=2, gpus=("0", "1"))
    first, second, third = node.create(), node.create(), node.create()
    node.tick()
    freed = node.trainer(first).gpu

    node.trainer(first).succeed()
    node.tick()

    assert node.trainer(third).gpu == freed
    assert {node.trainer(second).gpu, node.trainer(third).gpu} == {"0", "1"}


def test_the_gpu_is_part_of_the_claim_so_a_restart_before_launch_keeps_it(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(max_running=2, gpus=("0", "1"))
    first, second = node.create(), node.create()
    node.scheduler.claim()  # and the server dies before launching either
    gpus = {node.run(r).handle["gpu"] for r in (first, second)}
    third = node.create()

    node.restarted().scheduler.claim()

    assert gpus == {"0", "1"}
    assert node.run(third).state == RunState.QUEUED, "no GPU is free for it"


def test_a_run_whose_trainer_cannot_start_fails_with_the_reason(node: Node) -> None:
    rid = node.create()
    node.executor.refuse_start = "no such interpreter"

    node.tick()

    run = node.run(rid)
    assert run.state == RunState.FAILED
    assert run.error == "could not start the trainer: no such interpreter"
    assert run.lease_owner is None


def test_a_lease_is_renewed_on_every_tick(node: Node) -> None:
    rid = node.create()
    node.tick()

    node.clock.advance(LEASE.total_seconds() - 1)
    node.tick()

    assert node.run(rid).lease_expires_at == node.clock.now + LEASE


def test_one_runs_trouble_keeps_neither_the_others_nor_new_work_waiting(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(max_running=3)
    broken, healthy = node.create(), node.create()
    node.tick()
    node.executor.poll_errors[node.trainer(broken).pid] = RuntimeError("cannot poll")
    node.trainer(healthy).succeed()
    later = node.create()

    node.tick()

    assert node.run(broken).state == RunState.RUNNING
    assert node.run(healthy).state == RunState.SUCCEEDED
    assert node.run(later).state == RunState.RUNNING
    assert node.run(broken).lease_expires_at == node.clock.now + LEASE, "and it is still held"


def test_a_full_disk_while_following_a_run_is_a_warning_and_retried_on_the_next_tick(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.executor.poll_errors[trainer.pid] = OSError(errno.ENOSPC, "No space left on device")
    trainer.succeed()

    node.tick()
    assert node.run(rid).state == RunState.RUNNING
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("WARNING", None)], "no traceback"

    del node.executor.poll_errors[trainer.pid]
    node.tick()
    assert node.run(rid).state == RunState.SUCCEEDED
