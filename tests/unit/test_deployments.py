"""Deployment lifecycle and tenancy rules (core.deployments) against a real store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tunehouse.core import deployments as dep_svc
from tunehouse.core.clock import utcnow
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.core.deployments import ServingTarget
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.registry import register_builtin, register_output
from tunehouse.store.db import Database
from tunehouse.store.models import Job, Run

TARGET = ServingTarget("tunehouse-tiny", "tunehouse-tiny", "/models/tiny", None, "base")


def test_creation_path_is_pending_deploying_running() -> None:
    assert dep_svc.can_move(S.PENDING, S.DEPLOYING) and dep_svc.can_move(S.DEPLOYING, S.RUNNING)
    assert not dep_svc.can_move(S.PENDING, S.RUNNING)


@pytest.mark.parametrize("end", [S.FAILED, S.STOPPED, S.DELETING])
def test_a_running_deployment_may_fail_stop_or_be_deleted(end: S) -> None:
    assert dep_svc.can_move(S.RUNNING, end)


@pytest.mark.parametrize("again", [S.FAILED, S.STOPPED])
def test_a_failed_or_stopped_deployment_may_be_deployed_again(again: S) -> None:
    assert dep_svc.can_move(again, S.DEPLOYING) and not dep_svc.can_move(again, S.RUNNING)


def test_a_deleting_deployment_goes_nowhere_but_away() -> None:
    assert not any(dep_svc.can_move(S.DELETING, t) for t in S)
    with pytest.raises(Conflict):
        dep_svc.check_move(S.DELETING, S.DEPLOYING)


def test_a_new_deployment_is_pending_with_its_capacity_and_engine(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep = dep_svc.create_deployment(s, acct, TARGET, endpoint="tiny-a", capacity=2)
        assert (dep.status, dep.capacity, dep.engine, dep.requests) == (S.PENDING, 2, "transformers", 0)


@pytest.mark.parametrize("capacity", [0, -1, 65, 1.5, True, "2"])
def test_capacity_must_be_a_whole_number_in_range(
    database: Database, make_account: Callable[[], int], capacity: object
) -> None:
    acct = make_account()
    with database.session() as s, pytest.raises(InvalidParameter) as exc:
        dep_svc.create_deployment(s, acct, TARGET, endpoint="x", capacity=capacity)  # type: ignore[arg-type]
    assert exc.value.field == "capacity"


def test_a_second_deployment_under_one_endpoint_is_a_conflict(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep_svc.create_deployment(s, acct, TARGET, endpoint="same")
        with pytest.raises(Conflict, match="already exists, please specify a suffix"):
            dep_svc.create_deployment(s, acct, TARGET, endpoint="same")


def test_two_accounts_may_use_one_endpoint_name_and_see_only_their_own(
    database: Database, make_account: Callable[[], int]
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        mine = dep_svc.create_deployment(s, a, TARGET, endpoint="shared")
        theirs = dep_svc.create_deployment(s, b, TARGET, endpoint="shared")
        assert dep_svc.get_deployment(s, a, "shared").id == mine.id
        assert [d.id for d in dep_svc.list_deployments(s, b)] == [theirs.id]


def test_another_accounts_deployment_is_not_found(
    database: Database, make_account: Callable[[], int]
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        dep_svc.create_deployment(s, a, TARGET, endpoint="private")
        with pytest.raises(NotFound):
            dep_svc.get_deployment(s, b, "private")


def test_failing_records_the_reason_and_deploying_again_clears_it(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep = dep_svc.create_deployment(s, acct, TARGET, endpoint="flaky")
        dep_svc.move(s, dep, S.DEPLOYING)
        dep_svc.move(s, dep, S.FAILED, "the engine process exited with code 1: OOM")
        assert dep.error == "the engine process exited with code 1: OOM"
        dep_svc.move(s, dep, S.DEPLOYING)
        assert dep.error is None


def test_a_deleted_deployment_is_deleting_then_gone(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep = dep_svc.create_deployment(s, acct, TARGET, endpoint="bye")
        with pytest.raises(Conflict):
            dep_svc.forget(s, dep)  # only once it is DELETING
        dep_svc.request_delete(s, dep)
        dep_svc.request_delete(s, dep)  # idempotent
        assert dep.status == S.DELETING
        dep_svc.forget(s, dep)
        with pytest.raises(NotFound):
            dep_svc.get_deployment(s, acct, "bye")


def test_model_targets_are_base_models_and_the_accounts_own_outputs_only(
    database: Database, make_account: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        register_builtin(s, tmp_path_factory.mktemp("models"))
        job = Job(key=f"j{a}x", account_id=a, name="j", created_at=utcnow())
        s.add(job)
        s.flush()
        run = Run(
            key=f"r{a}x",
            account_id=a,
            job_id=job.id,
            version=1,
            base_model="tunehouse-tiny",
            train_mode="sft",
            parameter_scale="lora",
            state="succeeded",
            created_at=utcnow(),
        )
        s.add(run)
        s.flush()
        register_output(s, a, f"ft:tiny:{a}", "/runs/x/model", "lora_adapter", "tunehouse-tiny", run.id)
        own = dep_svc.resolve_model_target(s, a, f"ft:tiny:{a}")
        assert own is not None and own.weights_kind == "lora_adapter" and own.weights_path == "/runs/x/model"
        assert own.base_model == "tunehouse-tiny"
        base = dep_svc.resolve_model_target(s, b, "tunehouse-tiny")
        assert base is not None and base.weights_path is None and base.weights_kind == "base"
        assert dep_svc.resolve_model_target(s, b, f"ft:tiny:{a}") is None


def test_deploying_a_model_on_first_use_reuses_its_deployment(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        first = dep_svc.deployment_for_model(s, acct, TARGET)
        assert dep_svc.deployment_for_model(s, acct, TARGET).id == first.id
        assert first.endpoint == TARGET.model_name and first.status == S.PENDING
