"""The Ray Train driver's decisions that need no cluster: telling a placement that never happened from a
failed training, the reason it gives, and where it reports it.

The driver against a real cluster is tests/integration/test_ray_executor.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunehouse.contract.events import read_events
from tunehouse.contract.spec import RunSpec
from tunehouse.trainer.ray_train import (
    TrainerExit,
    lost_worker,
    never_placed,
    report_failure,
    unplaced_reason,
)


def test_a_worker_group_that_timed_out_waiting_for_placement_was_never_placed() -> None:
    pytest.importorskip("ray.train.v2")
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    assert never_placed(ControllerError(WorkerGroupStartupTimeoutError(num_workers=2)))


def test_a_training_failure_or_another_controller_error_is_not_a_placement_failure() -> None:
    pytest.importorskip("ray.train.v2")
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    assert not never_placed(WorkerGroupError("rank 1 died", {1: RuntimeError("boom")}))
    assert not never_placed(ControllerError(ValueError("a bug of the controller")))
    assert not never_placed(RuntimeError("tunehouse trainer exited with code 1"))


def test_the_reason_names_the_workers_their_resources_the_strategy_and_the_wait() -> None:
    reason = unplaced_reason(2, {"CPU": 1.0, "GPU": 1.0}, "STRICT_SPREAD", 15.0, 1)
    asked = "the Ray cluster did not place the run's 2 workers (1 CPU, 1 GPU each, STRICT_SPREAD)"
    assert reason.startswith(f"{asked} within 15 s, 2 times")
    assert "TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S" in reason
    assert "within 300 s, 1 time " in unplaced_reason(4, {"CPU": 2.0}, "PACK", 300.0, 0)


def test_the_reason_is_the_runs_error_event_after_its_earlier_attempts_events(tmp_path: Path) -> None:
    spec = RunSpec(
        run_id="k3y", model_path=tmp_path / "model", train_files=[tmp_path / "t.jsonl"], output_dir=tmp_path
    )
    earlier = '{"seq": 7, "time": "2026-01-01T00:00:00.000Z", "type": "log", "payload": {"message": "x"}}\n'
    spec.events_path.write_text(earlier, encoding="utf-8")
    report_failure(spec, "not placed")
    events = read_events(spec.events_path)
    assert [(e["seq"], e["type"]) for e in events] == [(7, "log"), (8, "error"), (9, "status")]
    assert events[1]["payload"]["reason"] == "not placed" and events[2]["payload"]["state"] == "failed"


def test_a_worker_whose_actor_died_is_the_runs_reason_not_the_survivors_broken_collective() -> None:
    pytest.importorskip("ray.train.v2")
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    # As Ray Train reports a worker whose node died: its health check failed with the actor's error.
    died = WorkerHealthCheckFailedError("Worker health check failed", failure=ActorDiedError())
    failures = {0: RuntimeError("tunehouse trainer exited with code 1"), 1: died}
    reason = lost_worker(WorkerGroupError("workers failed", failures), 2)  # type: ignore[arg-type]
    assert reason is not None and reason.startswith("worker rank 1 of 2 was lost (ActorDiedError: ")


def test_trainers_that_failed_on_their_own_leave_their_own_reason() -> None:
    pytest.importorskip("ray.train.v2")
    from ray.train.v2.api.exceptions import WorkerGroupError

    failures: dict[int, Exception] = {0: TrainerExit(4), 1: TrainerExit(1)}
    assert lost_worker(WorkerGroupError("workers failed", failures), 2) is None
    assert lost_worker(RuntimeError("no workers"), 2) is None
